"""Hostile and unlucky input, through the real worker under RunPod's local API and as deployed.

Each case asserts the coded outcome, a bound on time (a hang guard, not a speed target), that
a normal job answered meanwhile, and that nothing reached Ollama or the log that must not:
nothing is read from disk, nothing hangs, no job is lost or answered twice, nothing leaks.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollama_worker import vapi_tools
from ollama_worker.config import get_settings
from ollama_worker.errors import ErrorCode, WorkerError
from ollama_worker.schemas import InputLimits, parse_job
from standins.ollama import FakeOllama
from standins.runpod import FakeRunPod, RawJSON
from tests.harness import DeployedWorker, WorkerProcess
from tests.vapi_fixtures import TOOLS_MODULE, load, tool_calls, webhook

Worker = WorkerProcess | DeployedWorker
CODES = tuple(code.value for code in ErrorCode if code is not ErrorCode.INTERNAL)
# A hang guard: every case here is answered in well under a second when all is well.
BOUND_S = 10.0
NORMAL = {"prompt": "are you still there"}
NORMAL_REPLY = "You said: are you still there"


def answer(worker: Worker, job_input: Any, timeout: float = 60.0) -> list[Any]:
    """A job's items, a failure's error item last, under either way of running the worker.

    The local API gets the body as ASCII JSON text, so that inputs no UTF-8 encoder takes
    (lone surrogates) still reach it, as they reach RunPod's API escaped.
    """
    if isinstance(worker, DeployedWorker):
        return worker.output(job_input, timeout)
    response = worker.http.post(
        "/runsync",
        content=json.dumps({"input": job_input}),
        headers={"Content-Type": "application/json"},
        timeout=timeout,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "COMPLETED", body
    return body["output"]


def error_of(output: list[Any]) -> str:
    """The coded error a failed job ended with: one line, a known code, never INTERNAL."""
    assert output
    last = output[-1]
    assert isinstance(last, dict)
    assert set(last) == {"error"}, last
    message = last["error"]
    assert isinstance(message, str)
    assert message.startswith(CODES), message
    assert "\n" not in message
    assert "\r" not in message
    assert "Traceback" not in message
    return message


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def with_a_normal_job(worker: Worker, hostile: Callable[[], Any]) -> Any:
    """Run `hostile()` while a normal job goes through the same worker; both within bounds."""
    with ThreadPoolExecutor(2) as pool:
        bad = pool.submit(timed, hostile)
        time.sleep(0.05)  # the hostile job first
        [reply], normal_s = timed(lambda: answer(worker, NORMAL))
        assert reply["message"]["content"] == NORMAL_REPLY
        assert normal_s < BOUND_S
        result, hostile_s = bad.result(timeout=BOUND_S * 3)
    assert hostile_s < BOUND_S
    return result


def ollama_saw(fake: FakeOllama) -> str:
    """Every generation request body the stand-in received since the reset, as JSON text."""
    return json.dumps(fake.received())


class LogSince:
    """The worker's log from now on."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.start = len(worker.log())

    def text(self) -> str:
        return self.worker.log()[self.start :]


# --- workers of our own: tools on two threads, a short tool timeout, DNS in the path ---------


@pytest.fixture(scope="module", params=["local_api", "deployed"])
def tool_worker(
    request: pytest.FixtureRequest, fake_server: FakeOllama, fake_runpod_server: FakeRunPod
) -> Iterator[Worker]:
    """A worker whose tools get 2 threads and 0.5 s, reaching Ollama by name (`localhost`), so
    that its chat jobs resolve the name on the loop's default executor."""
    env = {
        "OLLAMA_HOST": f"localhost:{fake_server.bound_port}",
        "VAPI_TOOLS_MODULE": TOOLS_MODULE,
        "VAPI_TOOL_TIMEOUT_S": "0.5",
        "VAPI_TOOL_THREADS": "2",
        "OLLAMA_RETRY_DEADLINE_S": "5",
    }
    worker: Worker = (
        WorkerProcess(env)
        if request.param == "local_api"
        else DeployedWorker(fake_runpod_server, env)
    )
    with worker:
        yield worker


@pytest.fixture
def tools(tool_worker: Worker, fake: FakeOllama, fake_runpod: FakeRunPod) -> Worker:
    """The tool worker, both stand-ins reset."""
    return tool_worker


def results(output: list[Any]) -> dict[str, dict[str, str]]:
    """A tool-calls answer's results by toolCallId."""
    [item] = output
    return {r["toolCallId"]: r for r in item["response"]["results"]}


# --- 1. images: base64 only, never a path ----------------------------------------------------


def test_an_image_path_is_refused_and_never_read(
    worker: Worker, fake: FakeOllama, tmp_path: Path
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # reading it would block the event loop for ever
    for path in ("/proc/self/environ", str(fifo), "/dev/zero"):
        job = {"messages": [{"role": "user", "content": "see", "images": [path]}]}
        output = with_a_normal_job(worker, lambda job=job: answer(worker, job))
        assert error_of(output) == (
            "INVALID_INPUT: messages.0.images.0: an image must be base64 data (not a path or URL)"
        )
    sent = fake.received()
    assert all(body["messages"][-1]["content"] == NORMAL["prompt"] for body in sent)


def test_a_path_that_is_also_base64_is_sent_as_data_not_read(
    worker: Worker, fake: FakeOllama
) -> None:
    # 16 characters of the base64 alphabet, naming a file that exists.
    path = Path(f"/tmp/{uuid.uuid4().hex[:11]}")
    secret = b"TOP-SECRET-FILE-CONTENT"
    path.write_bytes(secret)
    try:
        job = {"messages": [{"role": "user", "content": "see", "images": [str(path)]}]}
        [item] = answer(worker, job)
    finally:
        path.unlink()
    assert item["message"]["content"] == "You said: see"
    [body] = fake.received()
    assert body["messages"][-1]["images"] == [str(path)]  # its own bytes, encoded back
    assert base64.b64encode(secret).decode() not in ollama_saw(fake)


def test_images_count_against_their_cap(worker: Worker, fake: FakeOllama) -> None:
    image = base64.b64encode(b"\x89PNG" + b"\0" * 20_000_000).decode()
    job = {"messages": [{"role": "user", "content": "see", "images": [image]}]}
    message = error_of(answer(worker, job))
    assert message == (
        "INVALID_INPUT: images are 20,000,004 bytes; the limit is 20,000,000 (MAX_IMAGE_BYTES)"
    )
    assert fake.received() == []


# --- 2. stuck sync tools stall nothing else ----------------------------------------------------


def test_tools_stuck_in_their_threads_stall_nothing_else(tools: Worker) -> None:
    stuck = tool_calls(*((f"s{i}", "sleep_sync", {"seconds": 4}) for i in range(3)))
    first, took = timed(lambda: results(answer(tools, webhook(stuck))))
    # Each stuck call answers at its own timeout; the one with no free thread at once.
    assert took < 3
    errors = sorted(r["error"] for r in first.values())
    assert errors[:2] == ["tool 'sleep_sync' did not finish within 0.5 s"] * 2
    assert errors[2].startswith(
        "tool 'sleep_sync' was not run: all 2 tool threads are busy with earlier calls"
    )
    # Both tool threads are still held (for ~3 s more): every other kind of work goes on.
    others = {
        "async tool": webhook(tool_calls(("a", "add", {"a": 1, "b": 2}))),
        "transfer hook": webhook(load("transfer_destination_request")),
        "status": webhook(load("status_update")),
        "chat by host name": NORMAL,
        "sync tool": webhook(tool_calls(("e", "echo", {"text": "hi"}))),
    }
    with ThreadPoolExecutor(len(others)) as pool:
        running = {
            name: pool.submit(timed, lambda j=job: answer(tools, j)) for name, job in others.items()
        }
        done = {name: future.result(timeout=BOUND_S) for name, future in running.items()}
    for name, (_output, seconds) in done.items():
        assert seconds < 2, (name, seconds)
    assert results(done["async tool"][0])["a"]["result"] == '{"sum": 3}'
    assert done["chat by host name"][0][0]["message"]["content"] == NORMAL_REPLY
    # A sync tool that finds no free thread fails at once, for that call only.
    assert "threads are busy" in results(done["sync tool"][0])["e"]["error"]
    time.sleep(3.5)  # the stuck tools return: their threads are free again
    again = results(answer(tools, webhook(tool_calls(("e", "echo", {"text": "hi"})))))
    assert again["e"]["result"] == "hi"


def test_a_stuck_tool_does_not_hold_up_the_workers_stop(
    fake: FakeOllama, fake_runpod: FakeRunPod
) -> None:
    env = {
        "OLLAMA_HOST": fake.host_port,
        "VAPI_TOOLS_MODULE": TOOLS_MODULE,
        "VAPI_TOOL_TIMEOUT_S": "0.5",
        "WORKER_STOP_GRACE_S": "1",
    }
    with DeployedWorker(fake_runpod, env) as worker:
        stuck = webhook(tool_calls(("s", "sleep_sync", {"seconds": 60})))
        assert "did not finish" in results(worker.output(stuck))["s"]["error"]
        worker.signal(signal.SIGTERM)
        code, took = timed(lambda: worker.wait_exit(BOUND_S * 2))
    assert code == 0
    assert took < BOUND_S  # not the 60 s the tool still sleeps


# --- 3. what a caller may set -------------------------------------------------------------------


def loaded(fake: FakeOllama) -> dict[str, Any]:
    """What the stand-in has loaded: name -> (expiry, context length)."""
    models = httpx.get(f"{fake.url}/api/ps").json()["models"]
    return {m["name"]: (m["expires_at"], m.get("context_length")) for m in models}


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"options": {"num_ctx": 1_000_000}}, "options num_ctx: not for callers"),
        ({"options": {"num_gpu": 0, "num_thread": 1}}, "options num_gpu, num_thread: not for"),
        ({"options": {"use_mmap": False, "main_gpu": 1}}, "options main_gpu, use_mmap: not for"),
        ({"options": {"num_batch": 1, "use_mlock": True}}, "options num_batch, use_mlock: not"),
        ({"keep_alive": 0}, "keep_alive: the worker keeps its models loaded for every job"),
    ],
)
def test_a_caller_cannot_reload_or_unload_the_shared_model(
    worker: Worker, fake: FakeOllama, extra: dict[str, Any], says: str
) -> None:
    answer(worker, NORMAL)  # the model is loaded
    before = loaded(fake)
    message = error_of(answer(worker, {"prompt": "reload it", **extra}))
    assert message.startswith(f"INVALID_INPUT: {says}")
    assert "CALLER_OPTIONS" in message
    assert loaded(fake) == before
    assert "reload it" not in ollama_saw(fake)


def test_the_openai_route_and_vapi_custom_llm_cannot_either(
    worker: Worker, fake: FakeOllama
) -> None:
    # Ollama's /v1 reads no `options` and no `keep_alive` (0.12.10 openai.ChatCompletionRequest);
    # VAPI's custom-LLM body keeps only the chat-completions fields.
    answer(worker, NORMAL)
    before = {name: ctx for name, (_expiry, ctx) in loaded(fake).items()}
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "keep_alive": 0,
        "options": {"num_ctx": 1_000_000},
        "max_tokens": 5,
    }
    [reply] = answer(worker, {"openai_route": "/v1/chat/completions", "openai_input": body})
    assert reply["choices"][0]["message"]["content"] == "You said: hi"
    [item] = answer(worker, webhook(body))
    assert item["response"]["choices"][0]["message"]["content"] == "You said: hi"
    assert {name: ctx for name, (_expiry, ctx) in loaded(fake).items()} == before
    assert "keep_alive" not in fake.received()[-1]


# --- 4. the final chunk's text ------------------------------------------------------------------


@pytest.mark.parametrize("with_tools", [False, True])
def test_text_in_ollamas_final_chunk_is_streamed(
    worker: Worker, fake: FakeOllama, with_tools: bool
) -> None:
    job: dict[str, Any] = {"prompt": "one two three four", "stream": True}
    if with_tools:
        job["tools"] = [{"type": "function", "function": {"name": "get_time"}}]
    fake.configure(fail_next=[{"final_text": 3}])  # "two three four" held for the done chunk
    output = answer(worker, job)
    streamed = "".join(item.get("message", {}).get("content", "") for item in output)
    assert streamed == "You said: one two three four"
    assert output[-1]["done"] is True


# --- 5. jobs taken and never answered ---------------------------------------------------------


def test_a_lone_surrogate_in_the_input_still_ends_the_job(worker: Worker, fake: FakeOllama) -> None:
    status = {
        "message": {"type": "status-update", "status": "ended", "call": {"id": "call-\ud800"}}
    }
    [item] = answer(worker, webhook(status))
    assert item == {"response": {}, "message_type": "status-update", "call_id": "call-\ufffd"}
    [reply] = answer(worker, {"prompt": "odd \udfff text"})
    assert reply["message"]["content"] == "You said: odd \ufffd text"
    assert "\\udfff" not in ollama_saw(fake)


def test_input_nested_past_the_limit_is_refused(worker: Worker) -> None:
    deep: Any = "bottom"
    for _ in range(150):  # readable by Python's json, too deep to be a conversation
        deep = [deep]
    message = error_of(
        with_a_normal_job(worker, lambda: answer(worker, {"prompt": "x", "a": deep}))
    )
    assert message == "INVALID_INPUT: `input` nests more than 100 levels deep"


def test_a_batch_with_an_unreadable_job_answers_every_job_once(deployed: DeployedWorker) -> None:
    runpod = deployed.fake_runpod
    too_deep = RawJSON('{"prompt": ' + "[" * 20_000 + "]" * 20_000 + "}")
    ids = runpod.submit_many(
        [{"prompt": "first"}, too_deep, {"prompt": "third"}], worker_id=deployed.worker_id
    )
    records = [deployed.wait_done(job_id, BOUND_S) for job_id in ids]
    assert len({record.taken_at for record in records}) == 1  # one job-take answer
    assert [record.done_posts for record in records] == [1, 1, 1]
    first, bad, third = records
    assert first.output[0]["message"]["content"] == "You said: first"
    assert third.output[0]["message"]["content"] == "You said: third"
    assert bad.status == "FAILED"
    assert bad.error.startswith("INVALID_INPUT: the job's input nests too deep to read")
    assert deployed.alive()
    [reply] = deployed.output(NORMAL)
    assert reply["message"]["content"] == NORMAL_REPLY


# --- 6. one job-done per job, whatever the stop ------------------------------------------------


def test_a_job_done_in_flight_when_the_grace_ends_is_sent_once(
    fake: FakeOllama, fake_runpod: FakeRunPod
) -> None:
    env = {"OLLAMA_HOST": fake.host_port, "WORKER_STOP_GRACE_S": "0.5"}
    with DeployedWorker(fake_runpod, env) as worker:
        fake_runpod.configure(rtt_s=2.0)  # each stream and done POST is answered 2 s late
        job_id = worker.submit({"prompt": "last one"})
        fake_runpod.wait_done(job_id, BOUND_S)
        worker.signal(signal.SIGTERM)  # the grace ends while the job-done POST waits
        assert worker.wait_exit(BOUND_S * 2) == 0
        record = fake_runpod.record(job_id)
        log = worker.log()
    assert record.done_posts == 1, log
    assert record.status == "COMPLETED"
    assert "WORKER_STOPPED" not in log


# --- 7. faults that used to be INTERNAL ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "stream", "says"),
    [
        (
            {"empty_stream": True},
            True,
            "OLLAMA_ERROR: Ollama answered with a stream that ended before its first line",
        ),
        ({"empty_stream": True}, False, "OLLAMA_ERROR: Ollama's reply ended before it was done"),
        (
            {"bad_line": "<!-- a proxy was here -->", "after_tokens": 2},
            True,
            "OLLAMA_ERROR: Ollama's reply could not be read: not JSON ('<!-- a proxy was",
        ),
        (
            {"html_error": 500},
            False,
            "OLLAMA_ERROR: Ollama failed (HTTP 500): <html> <head><title>500 Internal Server Error",
        ),
    ],
    ids=["empty-stream", "empty-reply", "non-json-line", "html-page"],
)
def test_ollama_faults_are_coded_one_line_errors(
    worker: Worker, fake: FakeOllama, fault: dict[str, Any], stream: bool, says: str
) -> None:
    log = LogSince(worker)
    fake.configure(fail_next=[fault])
    output, took = timed(lambda: answer(worker, {"prompt": "a b c", "stream": stream}))
    assert error_of(output).startswith(says)
    assert took < BOUND_S
    assert len(fake.received()) == 1  # a 200 may have started a generation
    assert "Traceback" not in log.text()
    assert "INTERNAL" not in log.text()


def test_openai_style_tool_calls_in_the_conversation_are_read(worker: Worker) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    job = {
        "messages": [
            {"role": "user", "content": "use f"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": "42", "tool_name": "f"},
            {"role": "user", "content": "thanks"},
        ]
    }
    [item] = answer(worker, job)
    assert item["message"]["content"] == "You said: thanks"
    bad = {**call, "function": {"name": "f", "arguments": "not json"}}
    job["messages"][1]["tool_calls"] = [bad]
    assert error_of(answer(worker, job)) == (
        "INVALID_INPUT: messages.1.tool_calls.0: function.arguments is a string but not JSON"
    )


def test_every_internal_error_logs_its_traceback_with_the_job_id(
    fake: FakeOllama, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from ollama_worker import ollama_client
    from rp_handler import handler

    async def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise KeyError("a bug of ours")

    monkeypatch.setenv("OLLAMA_HOST", fake.host_port)
    get_settings.cache_clear()
    monkeypatch.setattr(ollama_client.NativeClient, "chat", broken)

    async def run() -> list[Any]:
        return [item async for item in handler({"id": "job-42", "input": NORMAL})]

    try:
        with caplog.at_level(logging.ERROR):
            [item] = asyncio.run(run())
    finally:
        get_settings.cache_clear()
    assert (
        item["error"]
        == "INTERNAL: unexpected KeyError in job job-42; the worker log has the details"
    )
    [record] = [r for r in caplog.records if "job-42" in r.getMessage()]
    assert record.exc_info is not None
    assert "a bug of ours" in caplog.text  # the cause, in the log only
    assert "Traceback" in caplog.text


# --- 8. a slow generation is sent once -----------------------------------------------------------


@pytest.mark.parametrize("mode", ["local_api", "deployed"])
def test_a_slow_generation_is_not_sent_again(
    fake: FakeOllama, fake_runpod: FakeRunPod, mode: str
) -> None:
    env = {
        "OLLAMA_HOST": fake.host_port,
        "OLLAMA_REQUEST_TIMEOUT_S": "0.5",
        "OLLAMA_RETRY_DEADLINE_S": "20",
    }
    worker: Worker = WorkerProcess(env) if mode == "local_api" else DeployedWorker(fake_runpod, env)
    with worker:
        fake.configure(header_delay_s=1.5)
        output, took = timed(lambda: answer(worker, {"prompt": "think hard"}))
    assert error_of(output).startswith("TIMEOUT: Ollama did not answer in time")
    assert took < 5  # one read timeout, not the retry deadline
    assert len(fake.received()) == 1


# --- 9. the log cannot be forged, and keeps a tool's secrets ----------------------------------


def test_a_callers_type_cannot_forge_a_log_line(tools: Worker) -> None:
    log = LogSince(tools)
    error_of(
        answer(tools, {"type": "chat\nERROR forged: the worker is compromised", "prompt": "x"})
    )
    error_of(answer(tools, {"openai_route": "/v1/x\r\nINFO forged too", "openai_input": {}}))
    answer(tools, NORMAL)  # the log has moved on past both
    lines = log.text().splitlines()
    assert not [line for line in lines if line.startswith(("ERROR forged", "INFO forged"))]
    assert any('"chat\\nERROR forged: the worker is compromised"' in line for line in lines)


def test_a_tools_failure_is_logged_without_its_message_or_traceback(tools: Worker) -> None:
    log = LogSince(tools)
    card = "4111111111111111"
    payload = tool_calls(("l", "leak_arguments", {"card_number": card}))
    [item] = answer(tools, webhook(payload))
    # The model hears why (VAPI is the caller's own platform); the log does not.
    assert item["response"]["results"][0]["error"] == (
        f"tool 'leak_arguments' failed: ValueError: card {card} declined"
    )
    answer(tools, NORMAL)
    text = log.text()
    assert "VAPI tool leak_arguments failed with ValueError" in text
    assert card not in text
    assert "Traceback" not in text


# --- 10. smaller ones ----------------------------------------------------------------------------


def test_a_tool_raising_cancelled_error_fails_only_its_call(tools: Worker) -> None:
    payload = tool_calls(("c", "cancel_itself", {}), ("e", "echo", {"text": "still"}))
    found = results(answer(tools, webhook(payload)))
    assert (
        found["c"]["error"]
        == "tool 'cancel_itself' failed: ToolCancelled: the tool raised CancelledError"
    )
    assert found["e"]["result"] == "still"


def test_a_class_in_the_tools_module_is_no_tool(tools: Worker) -> None:
    found = results(answer(tools, webhook(tool_calls(("k", "NotATool", {})))))
    assert found["k"]["error"].startswith("unknown tool 'NotATool'")


async def test_a_tools_module_that_failed_to_import_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"tools_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("raise RuntimeError('not ready yet')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(vapi_tools, "IMPORT_RETRY_S", 0.0)
    vapi_tools.reset_tools()
    try:
        broken = await vapi_tools.get_tools(name)
        assert broken.import_failed
        assert "failed to import: RuntimeError" in broken.problem
        (tmp_path / f"{name}.py").write_text("def ready() -> str:\n    return 'yes'\n")
        sys.modules.pop(name, None)
        fixed = await vapi_tools.get_tools(name)
        assert list(fixed.functions) == ["ready"]
    finally:
        vapi_tools.reset_tools()


# --- any JSON at all ------------------------------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["\ud800", "call-\udfff", "/proc/self/environ", "aGk=", "-1", "0"])
)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
KEYS = st.sampled_from(
    [
        "type", "prompt", "messages", "system", "model", "options", "stream", "tools", "format",
        "keep_alive", "max_tokens", "think", "payload", "openai_route", "openai_input",
    ]
)  # fmt: skip
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "tool"]), "content": JSON},
    optional={"images": JSON, "tool_calls": JSON, "tool_name": JSON},
)
VALUES = (
    JSON
    | st.sampled_from(["chat", "health", "vapi_webhook", "/v1/models", "/v1/chat/completions"])
    | st.lists(MESSAGE, max_size=3)
    | st.dictionaries(st.sampled_from(["num_ctx", "temperature", "use_mlock", "stop"]), JSON)
)
INPUTS = JSON | st.dictionaries(KEYS, VALUES, max_size=5)


@settings(max_examples=400, deadline=None)
@given(raw=INPUTS)
def test_parse_job_takes_any_json(raw: Any) -> None:
    try:
        parse_job(raw, InputLimits())
    except WorkerError as exc:
        error = exc
    else:
        return
    assert error.code is ErrorCode.INVALID_INPUT
    assert "\n" not in str(error)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=INPUTS)
def test_a_running_worker_answers_any_json(worker: Worker, raw: Any) -> None:
    if isinstance(worker, WorkerProcess) and not isinstance(raw, dict):
        # RunPod's local API refuses a non-object `input` itself (422), before any handler.
        response = worker.http.post("/runsync", content=json.dumps({"input": raw}))
        assert response.status_code == 422
        return
    output, took = timed(lambda: answer(worker, raw, timeout=BOUND_S * 3))
    assert took < BOUND_S * 3
    assert output, "every job yields at least one item"
    last = output[-1]
    if isinstance(last, dict) and "error" in last:
        error_of(output)
