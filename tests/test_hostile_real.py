"""Hostile input against the real `ollama serve` 0.12.10 and the real Gemma 3 270M: what the
stand-in tier says about the shared model holds for the real scheduler."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.harness import DeployedWorker, WorkerProcess
from tests.real_ollama import MODEL, RealOllamaServer
from tests.test_hostile import answer, error_of

pytestmark = pytest.mark.real

Worker = WorkerProcess | DeployedWorker
LOADED = f"{MODEL}:latest"
SHORT = {"max_tokens": 4, "temperature": 0, "seed": 1}


def runner_state(server: RealOllamaServer) -> tuple[list[int], Any]:
    """The model's runner processes and its /api/ps entry, less the keep-alive clock."""
    entry = dict(server.loaded()[LOADED])
    entry.pop("expires_at", None)
    return sorted(server.runner_pids()), entry


@pytest.mark.parametrize(
    "extra",
    [
        {"options": {"num_ctx": 1_000_000}},
        {"options": {"num_ctx": 2048}},  # smaller, and still a reload
        {"options": {"num_gpu": 0, "num_thread": 1}},
        {"options": {"use_mmap": False, "num_batch": 8}},
        {"keep_alive": 0},
    ],
)
def test_no_caller_reloads_or_unloads_the_real_model(
    real_ollama: RealOllamaServer, real_worker: Worker, extra: dict[str, Any]
) -> None:
    answer(real_worker, {"prompt": "Say hi.", **SHORT})
    before = runner_state(real_ollama)
    assert before[0], "the model runs in an `ollama runner` child"
    message = error_of(answer(real_worker, {"prompt": "Say hi.", **SHORT, **extra}))
    assert message.startswith("INVALID_INPUT: ")
    [after] = answer(real_worker, {"prompt": "Say hi.", **SHORT})
    assert runner_state(real_ollama) == before  # the same runner: not reloaded, not unloaded
    assert after["timings"]["load_ms"] < 1000  # and the next job found it loaded


def test_the_openai_route_cannot_either_on_the_real_server(
    real_ollama: RealOllamaServer, real_worker: Worker
) -> None:
    answer(real_worker, {"prompt": "Say hi.", **SHORT})
    before = runner_state(real_ollama)
    body = {
        "messages": [{"role": "user", "content": "Say hi."}],
        "keep_alive": 0,
        "options": {"num_ctx": 2048},
        "max_tokens": 4,
    }
    [reply] = answer(real_worker, {"openai_route": "/v1/chat/completions", "openai_input": body})
    assert reply["object"] == "chat.completion"
    time.sleep(0.5)  # an unload would have begun by now
    assert runner_state(real_ollama) == before


def test_what_the_worker_refuses_would_unload_the_real_model(
    real_ollama: RealOllamaServer, real_worker: Worker
) -> None:
    """The control: the same keep_alive 0, sent to Ollama directly, unloads the model."""
    answer(real_worker, {"prompt": "Say hi.", **SHORT})
    assert LOADED in real_ollama.loaded()
    try:
        real_ollama.api("POST", "/api/chat", {"model": MODEL, "messages": [], "keep_alive": 0})
        deadline = time.monotonic() + 30
        while LOADED in real_ollama.loaded() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert LOADED not in real_ollama.loaded()
    finally:
        real_ollama.preload()


def test_tools_on_the_real_model_are_refused_by_its_template(real_worker: Worker) -> None:
    """Text in the final chunk comes from ChatHandler's tool parser, which runs only when the
    model takes `tools`: Gemma 3 270M's template does not (Ollama answers 400), so the final
    chunk's text is shown on the stand-in tier only (tests/test_hostile.py)."""
    job = {
        "prompt": "What time is it?",
        "stream": True,
        "tools": [{"type": "function", "function": {"name": "get_time"}}],
        **SHORT,
    }
    message = error_of(answer(real_worker, job))
    assert message.startswith("INVALID_INPUT: Ollama rejected the request")
    assert "does not support tools" in message
