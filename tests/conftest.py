"""Shared fixtures: one stand-in Ollama for the session, reset before each test."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from tests.fake_ollama import FakeConfig, FakeOllama
from tests.harness import WorkerProcess

# Every switch of the stand-in but its installed models, at the values tests start from.
FAKE_DEFAULTS = {
    key: value
    for key, value in dataclasses.asdict(FakeConfig(num_parallel=8)).items()
    if key not in {"models", "state_file"}
}


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeOllama]:
    """The session's stand-in Ollama."""
    with FakeOllama(**FAKE_DEFAULTS) as server:
        yield server


@pytest.fixture
def fake(fake_server: FakeOllama) -> FakeOllama:
    """The stand-in with default switches and zeroed counters."""
    fake_server.configure(**FAKE_DEFAULTS)
    fake_server.reset_stats()
    return fake_server


@pytest.fixture(scope="session")
def worker_process(fake_server: FakeOllama) -> Iterator[WorkerProcess]:
    """The real worker under RunPod's local API, talking to the stand-in."""
    env = {
        "OLLAMA_HOST": fake_server.host_port,
        "OLLAMA_RETRY_DEADLINE_S": "30",
        "MAX_CONCURRENCY": "16",
    }
    with WorkerProcess(env) as worker:
        yield worker


@pytest.fixture
def worker(worker_process: WorkerProcess, fake: FakeOllama) -> WorkerProcess:
    """The running worker, its stand-in reset for this test."""
    return worker_process
