"""The handler in-process: what it promises RunPod, its import cost, and any input's fate."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rp_handler
from ollama_worker import jobs
from ollama_worker.config import get_settings
from ollama_worker.ollama_client import get_client
from standins.ollama import FakeOllama
from tests.harness import ROOT

CODED_ERROR = re.compile(r"^[A-Z_]+: \S")


@pytest.fixture
def runner(fake: FakeOllama, monkeypatch: pytest.MonkeyPatch) -> Iterator[asyncio.Runner]:
    """One event loop for the test, with the worker's settings pointing at the stand-in."""
    monkeypatch.setenv("OLLAMA_HOST", fake.host_port)
    monkeypatch.setenv("OLLAMA_RETRY_DEADLINE_S", "5")
    get_settings.cache_clear()
    with asyncio.Runner() as loop:
        yield loop
    get_settings.cache_clear()


def run(runner: asyncio.Runner, job_input: Any) -> list[Any]:
    async def collect() -> list[Any]:
        return [item async for item in rp_handler.handler({"id": "t", "input": job_input})]

    return runner.run(collect())


def test_import_is_cheap_and_offline() -> None:
    code = (
        "import sys, rp_handler; from ollama_worker import ollama_client as c; "
        "print('runpod' in sys.modules, len(c._clients))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"OLLAMA_HOST": "203.0.113.1:9", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout.split() == ["False", "0"]  # no RunPod SDK, no client, no connection


def test_main_hands_runpod_a_streaming_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    import runpod

    seen: dict[str, Any] = {}
    monkeypatch.setattr(runpod.serverless, "start", seen.update)
    monkeypatch.delenv("MAX_CONCURRENCY", raising=False)
    monkeypatch.delenv("WORKER_WAIT_FOR_OLLAMA_S", raising=False)
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "6")
    get_settings.cache_clear()
    try:
        rp_handler.main()
    finally:
        get_settings.cache_clear()
    assert inspect.isasyncgenfunction(seen["handler"])
    assert seen["return_aggregate_stream"] is True
    assert seen["concurrency_modifier"](1) == 6


def test_bad_configuration_stops_the_worker_with_a_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OLLAMA_REQUEST_TIMEOUT_S", "soon")
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit, match="OLLAMA_REQUEST_TIMEOUT_S='soon' is not a number"):
            rp_handler.main()
    finally:
        get_settings.cache_clear()


def test_a_crash_is_a_coded_error_and_the_traceback_stays_in_the_log(
    runner: asyncio.Runner, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*_args: Any) -> Any:
        raise KeyError("secret internals")
        yield  # pragma: no cover - makes this an async generator

    monkeypatch.setattr(jobs, "run_chat", broken)
    [item] = run(runner, {"prompt": "hi"})
    assert item == {"error": "INTERNAL: unexpected error in job t; the worker log has the details"}
    assert "secret internals" in caplog.text
    assert "Traceback" in caplog.text


def test_stream_pieces_are_yielded_as_they_arrive(runner: asyncio.Runner, fake: FakeOllama) -> None:
    fake.configure(first_token_delay_s=0.05, token_delay_s=0.1)

    async def arrivals() -> list[float]:
        started, times = time.monotonic(), []
        job = {"id": "t", "input": {"prompt": "a b c d", "stream": True}}
        async for item in rp_handler.handler(job):
            if "message" in item:  # the summary also carries the last piece when it came with it
                times.append(time.monotonic() - started)
        return times

    pieces = runner.run(arrivals())
    gaps = [later - earlier for earlier, later in itertools.pairwise(pieces)]
    assert len(gaps) == 5
    # Batching would put pieces together; each arrives about one token delay after the last.
    assert all(gap > 0.05 for gap in gaps), gaps


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(
    [
        "type",
        "prompt",
        "message",
        "messages",
        "system",
        "model",
        "options",
        "stream",
        "temperature",
        "max_tokens",
        "stop",
        "format",
        "think",
        "keep_alive",
        "payload",
        "openai_route",
        "openai_input",
    ]
)
VALUES = st.one_of(
    JSON,
    st.sampled_from(["chat", "health", "vapi_webhook", "/v1/models", "/v1/chat/completions"]),
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "x"]), "content": JSON})),
)
JOB_INPUTS = JSON | st.dictionaries(KEYS, VALUES, max_size=5)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(job_input=JOB_INPUTS)
def test_any_input_gives_a_reply_or_a_coded_error(runner: asyncio.Runner, job_input: Any) -> None:
    output = run(runner, job_input)
    assert output, "every job yields at least one item"
    for item in output[:-1]:
        assert not (isinstance(item, dict) and "error" in item)
    last = output[-1]
    if isinstance(last, dict) and "error" in last:
        assert isinstance(last["error"], str)
        assert CODED_ERROR.match(last["error"]), last["error"]
        assert not last["error"].startswith("INTERNAL"), last["error"]


@pytest.mark.parametrize(
    "job_input",
    [
        {"prompt": "a b c", "stream": True},
        {
            "openai_route": "/v1/chat/completions",
            "openai_input": {"messages": [{"role": "user", "content": "a b c"}], "stream": True},
        },
    ],
    ids=["chat", "openai"],
)
def test_a_finished_stream_hands_its_connection_back_at_once(
    runner: asyncio.Runner, fake: FakeOllama, job_input: dict[str, Any]
) -> None:
    async def busy_connections_after(job: dict[str, Any]) -> int:
        async for _item in rp_handler.handler({"id": "t", "input": job}):
            pass
        pool = get_client().http._transport._pool  # type: ignore[attr-defined]
        return sum(not connection.is_idle() for connection in pool.connections)

    assert runner.run(busy_connections_after(job_input)) == 0
    fake.configure(fail_next=[{"midstream_error": "boom", "after_tokens": 1}])
    assert runner.run(busy_connections_after(job_input)) == 0
