"""LOG_LEVEL rules the worker's, the SDK's and httpx's logs alike."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from ollama_worker.config import ConfigError
from ollama_worker.log_setup import configure_logging


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Leave the root and httpx loggers as they were; start with no SDK level set."""
    monkeypatch.delenv("RUNPOD_LOG_LEVEL", raising=False)
    root, httpx_logger = logging.getLogger(), logging.getLogger("httpx")
    saved = (root.level, list(root.handlers), httpx_logger.level)
    root.handlers = []  # so that basicConfig acts
    yield
    root.setLevel(saved[0])
    root.handlers = saved[1]
    httpx_logger.setLevel(saved[2])


@pytest.mark.parametrize(
    ("given", "ours", "sdk"),
    [
        ("", "INFO", "INFO"),
        ("debug", "DEBUG", "DEBUG"),
        ("Warning", "WARNING", "WARN"),
        ("warn", "WARNING", "WARN"),
        ("CRITICAL", "ERROR", "ERROR"),
    ],
)
def test_the_sdk_follows_log_level(
    monkeypatch: pytest.MonkeyPatch, given: str, ours: str, sdk: str
) -> None:
    monkeypatch.setenv("LOG_LEVEL", given)
    assert configure_logging() == ours
    assert logging.getLogger().level == logging.getLevelName(ours)

    assert os.environ["RUNPOD_LOG_LEVEL"] == sdk


def test_an_explicit_sdk_level_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setenv("LOG_LEVEL", "INFO")
    monkeypatch.setenv("RUNPOD_LOG_LEVEL", "ERROR")
    configure_logging()
    assert os.environ["RUNPOD_LOG_LEVEL"] == "ERROR"


def test_httpx_request_lines_only_at_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "INFO")
    configure_logging()
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.NOTSET)
    logging.getLogger().handlers = []
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    configure_logging()
    assert logging.getLogger("httpx").isEnabledFor(logging.INFO)


def test_an_unknown_level_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "VERBOSE")
    with pytest.raises(ConfigError, match="LOG_LEVEL='VERBOSE' is not one of"):
        configure_logging()
