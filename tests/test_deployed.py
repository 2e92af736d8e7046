"""The real worker under the SDK's production job loop, fed by the stand-in RunPod job API.

The local API (`--rp_serve_api`) runs none of this loop: these tests drive what RunPod
really runs (job-take long-polls, one POST per yielded item, the job-done POST, job-stop),
so a job's record holds exactly what a RunPod client would see on /stream and /status.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from standins.ollama import FakeOllama
from standins.runpod import FakeRunPod, JobRecord
from tests.harness import ROOT, DeployedWorker

CODED_ERROR = re.compile(
    r"^(INVALID_INPUT|MODEL_NOT_FOUND|OLLAMA_UNAVAILABLE|OLLAMA_ERROR|TIMEOUT|UNAUTHORIZED): "
)
# Generous: the SDK's stock loop sleeps a whole second whenever its slots are full.
JOB_TIMEOUT_S = 60.0
# VAPI inputs are built here rather than with tests/vapi_fixtures.py, whose checks import the
# VAPI SDK (seconds): the worker is what these tests exercise, not the payloads.
VAPI_FIXTURES = ROOT / "tests" / "fixtures" / "vapi"
SECRET = "deployed-Vapi-secret-5c1e"
TOOLS_MODULE = "tests.vapi_tools_for_tests"


def load(name: str) -> dict[str, Any]:
    """A recorded VAPI server message, from tests/fixtures/vapi/."""
    return json.loads((VAPI_FIXTURES / f"{name}.json").read_text())


def webhook(payload: dict[str, Any], **job: Any) -> dict[str, Any]:
    """A `vapi_webhook` job input for `payload`."""
    return {"type": "vapi_webhook", "payload": payload, **job}


def tool_calls(*calls: tuple[str, str, str]) -> dict[str, Any]:
    """A VAPI tool-calls message for `(id, name, JSON arguments)` calls."""
    call_list = [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        for call_id, name, arguments in calls
    ]
    return {"message": {"type": "tool-calls", "toolCallList": call_list}}


def completed(record: JobRecord) -> list[Any]:
    """The output of a COMPLETED job, checked to be the list of the items it streamed."""
    assert record.status == "COMPLETED", record
    assert record.error is None, record
    assert isinstance(record.output, list), record
    assert record.output == record.stream_items, record
    assert record.done_posts == 1, record
    return record.output


def failed(record: JobRecord) -> str:
    """The coded error of a FAILED job: one `CODE: ...` line, never a traceback."""
    assert record.status == "FAILED", record
    error = record.error
    assert isinstance(error, str), record
    assert CODED_ERROR.match(error), error
    assert "Traceback" not in error, error
    assert "\n" not in error.strip(), error
    assert record.done_posts == 1, record
    return error


def text_of(items: list[Any]) -> str:
    """The reply a streamed chat's items add up to, however they were merged."""
    return "".join(item.get("message", {}).get("content", "") for item in items)


def sse_events(items: list[Any]) -> list[str]:
    """The `data: ...` payloads of SSE text items (one item may hold several events)."""
    assert all(isinstance(item, str) for item in items), items
    text = "".join(items)
    assert text.endswith("\n\n"), text[-200:]
    events = [event for event in text.split("\n\n") if event]
    assert all(event.startswith("data: ") for event in events), events
    return [event.removeprefix("data: ") for event in events]


def still_serves(worker: DeployedWorker, prompt: str = "still there?") -> None:
    """The worker answers a plain chat."""
    [item] = completed(worker.run({"prompt": prompt}, timeout=JOB_TIMEOUT_S))
    assert item["message"]["content"] == f"You said: {prompt}"


def wait_until(condition: Any, timeout: float, what: str) -> float:
    """Poll `condition()` until true; the time it became true, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout} s")
        time.sleep(0.02)
    return time.monotonic()


# --- chat --------------------------------------------------------------------------------


def test_whole_chat(deployed: DeployedWorker, fake: FakeOllama) -> None:
    [item] = completed(deployed.run({"prompt": "hello there", "max_tokens": 50}))
    assert item["message"] == {"role": "assistant", "content": "You said: hello there"}
    assert item["done_reason"] == "stop"
    assert item["usage"]["completion_tokens"] == 4
    assert fake.received()[-1]["stream"] is False


def test_streamed_chat_items_add_up_to_the_reply(deployed: DeployedWorker) -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "tell me a story"},
    ]
    items = completed(
        deployed.run({"type": "chat", "messages": messages, "stream": True}, JOB_TIMEOUT_S)
    )
    assert text_of(items) == "You said: tell me a story"
    final = items[-1]
    assert final["done"] is True
    assert final["done_reason"] == "stop"
    assert final["usage"]["completion_tokens"] == 6
    assert all(item["done"] is False for item in items[:-1])


def test_slow_stream_reaches_runpod_while_it_is_generated(
    deployed: DeployedWorker, fake: FakeOllama, fake_runpod: FakeRunPod
) -> None:
    """Items are POSTed as tokens come, not all at the end (no timing bound, only order)."""
    fake.configure(token_delay_s=0.1)
    record = deployed.run({"prompt": "one two three four five six", "stream": True}, 60)
    assert text_of(completed(record)) == "You said: one two three four five six"
    assert len(record.stream) >= 2
    assert record.done_at is not None
    assert record.stream[0][0] < record.done_at - 0.3  # the first piece came well before the end


# --- failures are coded FAILED jobs, and the worker goes on -------------------------------


@pytest.mark.parametrize(
    ("job_input", "fault", "says"),
    [
        ({"type": "sing"}, None, "INVALID_INPUT: job `type` is 'sing'"),
        ({"messages": "hi"}, None, "INVALID_INPUT: messages: Input should be a valid list"),
        ("not a dict", None, "INVALID_INPUT: "),
        ({"prompt": "hi", "model": "nope:1b"}, None, "MODEL_NOT_FOUND: model 'nope:1b'"),
        ({"prompt": "hi"}, {"status": 500}, "OLLAMA_ERROR: Ollama failed (HTTP 500)"),
        (
            {"prompt": "one two three", "stream": True},
            {"midstream_error": "CUDA error: out of memory", "after_tokens": 2},
            "OLLAMA_ERROR: Ollama failed (mid-stream): CUDA error: out of memory",
        ),
        (
            {"prompt": "one two three", "stream": True},
            {"drop": "mid_stream", "after_tokens": 1},
            "OLLAMA_ERROR: the connection to Ollama broke mid-stream",
        ),
    ],
    ids=["bad-type", "bad-messages", "not-a-dict", "model", "http-500", "midstream", "drop"],
)
def test_failures_are_coded_failed_jobs(
    deployed: DeployedWorker,
    fake: FakeOllama,
    job_input: Any,
    fault: dict[str, Any] | None,
    says: str,
) -> None:
    if fault is not None:
        fake.configure(fail_next=[fault])
    record = deployed.run(job_input, JOB_TIMEOUT_S)
    assert failed(record).startswith(says)
    assert all("error" not in item for item in record.stream_items if isinstance(item, dict))
    still_serves(deployed)


def test_a_midstream_failure_keeps_what_was_streamed(
    deployed: DeployedWorker, fake: FakeOllama
) -> None:
    fake.configure(fail_next=[{"midstream_error": "boom", "after_tokens": 2}])
    record = deployed.run({"prompt": "one two three", "stream": True}, JOB_TIMEOUT_S)
    failed(record)
    assert text_of(record.stream_items) == "You said: "


# --- RunPod's OpenAI route --------------------------------------------------------------


def test_openai_stream_is_sse_ending_in_done(deployed: DeployedWorker) -> None:
    body = {
        "messages": [{"role": "user", "content": "stream this"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    record = deployed.run({"openai_route": "/v1/chat/completions", "openai_input": body})
    events = sse_events(completed(record))
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(event) for event in events[:-1]]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "You said: stream this"
    )
    assert chunks[-1].usage is not None


def test_openai_chat_completion(deployed: DeployedWorker) -> None:
    body = {"messages": [{"role": "user", "content": "hi there"}], "max_tokens": 20}
    record = deployed.run({"openai_route": "/v1/chat/completions", "openai_input": body})
    [answer] = completed(record)
    completion = ChatCompletion.model_validate(answer)
    assert completion.choices[0].message.content == "You said: hi there"


def test_openai_route_errors_are_coded(deployed: DeployedWorker) -> None:
    body = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}
    record = deployed.run({"openai_route": "/v1/chat/completions", "openai_input": body})
    assert failed(record).startswith("MODEL_NOT_FOUND: model 'gpt-5'")
    record = deployed.run({"openai_route": "/v1/images", "openai_input": {}})
    assert failed(record).startswith("INVALID_INPUT: unknown openai_route '/v1/images'")
    still_serves(deployed)


# --- VAPI -------------------------------------------------------------------------------


def test_vapi_status_update_is_answered_empty(deployed: DeployedWorker) -> None:
    payload = load("status_update")
    [item] = completed(deployed.run(webhook(payload, headers={"X-Vapi-Secret": SECRET})))
    assert item["response"] == {}
    assert item["message_type"] == "status-update"
    assert item["call_id"] == payload["message"]["call"]["id"]


def test_vapi_tool_calls(deployed: DeployedWorker) -> None:
    payload = tool_calls(
        ("tc-1", "echo", json.dumps({"text": "hi", "times": 2})),
        ("tc-2", "add", json.dumps({"a": 1, "b": 2.5})),
        ("tc-3", "explode", "{}"),
    )
    [item] = completed(deployed.run(webhook(payload, headers={"X-Vapi-Secret": SECRET})))
    results = item["response"]["results"]
    assert results[:2] == [
        {"name": "echo", "toolCallId": "tc-1", "result": "hi hi"},
        {"name": "add", "toolCallId": "tc-2", "result": '{"sum": 3.5}'},
    ]
    assert results[2]["toolCallId"] == "tc-3"
    assert "error" in results[2]


# --- job-stop ---------------------------------------------------------------------------


def test_a_stopped_job_stops_its_generation_and_posts_no_result(
    deployed: DeployedWorker, fake: FakeOllama, fake_runpod: FakeRunPod
) -> None:
    fake.configure(token_delay_s=0.2)
    words = " ".join(f"w{i}" for i in range(60))  # about 12 s of tokens
    job_id = deployed.submit({"prompt": words, "stream": True})
    fake_runpod.wait_stream(job_id, 1, timeout=JOB_TIMEOUT_S)
    assert fake.in_flight() == 1
    fake_runpod.stop_job(job_id)
    delivered = wait_until(
        lambda: fake_runpod.record(job_id).stop_delivered_at is not None,
        10,
        "the stop signal reaching the worker",
    )
    # Ollama's generation ends because the worker closed its connection, long before the
    # 12 s the reply would take.
    stopped = wait_until(lambda: fake.in_flight() == 0, 5, "Ollama's generation ending")
    assert stopped - delivered < 1.5
    fake.configure(token_delay_s=0.0)
    still_serves(deployed)
    time.sleep(0.5)  # anything late would have arrived by now
    record = fake_runpod.record(job_id)
    assert record.done_posts == 0, record
    assert record.status is None
    assert len(record.stream) < 60


# --- concurrency ------------------------------------------------------------------------


def test_thirty_jobs_at_once_never_exceed_max_concurrency(
    deployed: DeployedWorker, fake: FakeOllama, fake_runpod: FakeRunPod
) -> None:
    fake.configure(first_token_delay_s=0.3)
    inputs = [{"prompt": f"job {i}", "stream": i % 2 == 0} for i in range(30)]
    ids = fake_runpod.submit_many(inputs, worker_id=deployed.worker_id)
    for i, job_id in enumerate(ids):
        items = completed(deployed.wait_done(job_id, timeout=120))
        assert text_of(items) == f"You said: job {i}"
    stats = fake_runpod.stats()
    assert stats["max_unfinished"] <= 8, stats
    assert stats["max_unfinished"] == 8, stats  # and it does use all 8 slots
    assert fake.peak_in_flight() <= 8


# --- logs ------------------------------------------------------------------------------

PHRASE = "zebra-quartz-4417 whispers plum"


@pytest.fixture
def quiet_worker(fake: FakeOllama, fake_runpod: FakeRunPod) -> Iterator[DeployedWorker]:
    """A worker with the default LOG_LEVEL, a VAPI secret and the test tools."""
    env = {
        "OLLAMA_HOST": fake.host_port,
        "OLLAMA_RETRY_DEADLINE_S": "30",
        "MAX_CONCURRENCY": "8",
        "VAPI_WEBHOOK_SECRET": SECRET,
        "VAPI_TOOLS_MODULE": TOOLS_MODULE,
    }
    worker = DeployedWorker(fake_runpod, env, unset=("LOG_LEVEL",))
    with worker:
        yield worker


def test_default_log_has_one_line_per_job_and_no_conversation_or_secret(
    quiet_worker: DeployedWorker,
) -> None:
    auth = {"X-Vapi-Secret": SECRET}
    messages = [{"role": "user", "content": f"please repeat {PHRASE}"}]
    jobs = {
        "chat": {"messages": messages},
        "stream": {"messages": messages, "stream": True},
        "tool": webhook(tool_calls(("tc-1", "echo", json.dumps({"text": PHRASE}))), headers=auth),
        "status": webhook(load("status_update"), headers=auth),
        "openai": {
            "openai_route": "/v1/chat/completions",
            "openai_input": {"messages": messages, "stream": True},
        },
    }
    records = {name: quiet_worker.run(job, JOB_TIMEOUT_S) for name, job in jobs.items()}
    for record in records.values():
        completed(record)
    assert PHRASE in json.dumps(records["tool"].output)  # the phrase really went through
    log = quiet_worker.log()
    assert PHRASE not in log
    assert "You said" not in log
    assert SECRET not in log
    for name, record in records.items():
        lines = [line for line in log.splitlines() if record.id in line]
        ours = [line for line in lines if re.search(rf"job {record.id} \(.+\) done: ", line)]
        assert len(ours) == 1, (name, lines)


# --- graceful stop and the boot script --------------------------------------------------


def test_sigterm_lets_the_running_job_finish(fake: FakeOllama, fake_runpod: FakeRunPod) -> None:
    env = {"OLLAMA_HOST": fake.host_port, "MAX_CONCURRENCY": "8"}
    with DeployedWorker(fake_runpod, env) as worker:
        fake.configure(token_delay_s=0.1)
        running = worker.submit({"prompt": "one two three four five six seven", "stream": True})
        fake_runpod.wait_stream(running, 1, timeout=JOB_TIMEOUT_S)
        worker.signal(signal.SIGTERM)
        late = worker.submit({"prompt": "too late?"})
        worker.wait_exit(60)
        assert text_of(completed(fake_runpod.record(running))) == (
            "You said: one two three four five six seven"
        )
        record = fake_runpod.record(late)
        if record.taken_at is not None:  # taken by a dying worker: it must still be answered
            completed(record)
        assert worker.leftovers() == []


def test_through_the_boot_script(fake_runpod: FakeRunPod) -> None:
    """ollama_boot.sh starts the stand-in `ollama serve`; jobs are taken once it answers."""
    with DeployedWorker(fake_runpod, {"MAX_CONCURRENCY": "8"}, boot=True) as worker:
        version = httpx.get(f"{worker.ollama_url}/api/version", timeout=5).json()
        assert version["version"]
        still_serves(worker, "booted?")
        worker.signal(signal.SIGTERM)
        worker.wait_exit(30)
        wait_until(lambda: worker.leftovers() == [], 5, "every process of the boot to end")
