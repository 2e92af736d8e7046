"""The `vapi_webhook` job end to end: the real worker under RunPod's local API and as deployed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from standins.ollama import FakeOllama
from standins.runpod import FakeRunPod
from tests.harness import DeployedWorker, WorkerProcess, free_port
from tests.vapi_fixtures import (
    INFORMATIONAL,
    MESSAGE_TYPES,
    SECRET,
    TOOLS_MODULE,
    TRANSFER,
    check_response,
    load,
    signed,
    sse_chunks,
    webhook,
)

AUTH = {"X-Vapi-Secret": SECRET}
RUNPOD_URL = "https://api.runpod.ai/v2/ep-it/openai/v1"
HANDOFF = {"type": "assistant", "assistantName": "Billing"}


@pytest.fixture(scope="module", params=["local_api", "deployed"])
def workers(
    request: pytest.FixtureRequest, fake_server: FakeOllama, fake_runpod_server: FakeRunPod
) -> Iterator[dict[str, WorkerProcess | DeployedWorker]]:
    """Two workers started side by side: one with Ollama ("up"), one whose Ollama is down.

    Once under RunPod's local API, once as deployed (the SDK's production loop).
    """
    common = {
        "VAPI_WEBHOOK_SECRET": SECRET,
        "VAPI_TOOLS_MODULE": TOOLS_MODULE,
        "RUNPOD_ENDPOINT_ID": "ep-it",
        "VAPI_TRANSFER_DESTINATION": json.dumps(TRANSFER),
        "VAPI_HANDOFF_DESTINATION": json.dumps(HANDOFF),
        "VAPI_ENDPOINTING_TIMEOUT_S": "0.7",
        "OLLAMA_RETRY_DEADLINE_S": "5",
        "LOG_LEVEL": "DEBUG",
    }
    hosts = {"up": fake_server.host_port, "down": f"127.0.0.1:{free_port()}"}
    started: dict[str, WorkerProcess | DeployedWorker] = {
        name: (
            WorkerProcess({**common, "OLLAMA_HOST": host})
            if request.param == "local_api"
            else DeployedWorker(fake_runpod_server, {**common, "OLLAMA_HOST": host})
        )
        for name, host in hosts.items()
    }
    try:
        with ThreadPoolExecutor() as pool:
            list(pool.map(lambda worker: worker.start(), started.values()))
        yield started
    finally:
        for worker in started.values():
            worker.stop()


def only_item(worker: WorkerProcess, job_input: dict[str, Any]) -> dict[str, Any]:
    """The one item a job yields, as the local API returns it."""
    output = worker.output(job_input)
    assert len(output) == 1, output
    return output[0]


@pytest.mark.parametrize("name", list(MESSAGE_TYPES))
def test_every_message_type_is_answered_as_vapi_expects(
    workers: dict[str, WorkerProcess], name: str
) -> None:
    payload = load(name)
    item = only_item(workers["up"], webhook(payload, headers=AUTH))
    assert item["message_type"] == payload["message"]["type"]
    assert item["call_id"] == (payload["message"].get("call") or {}).get("id")
    check_response(item["message_type"], item["response"])
    expected = {
        "assistant_request": {"assistant": item["response"].get("assistant")},
        "tool_calls": {
            "results": [
                {"name": "echo", "toolCallId": "tc-1", "result": "hi hi"},
                {"name": "add", "toolCallId": "tc-2", "result": '{"sum": 3.5}'},
            ]
        },
        "tool_calls_nested_only": {
            "results": [{"name": "echo", "toolCallId": "tc-9", "result": "nested"}]
        },
        "function_call": {"result": "legacy"},
        "transfer_destination_request": {"destination": TRANSFER},
        "knowledge_base_request": {
            "documents": [
                {"content": "Returns are free within 30 days.", "similarity": 0.9, "uuid": "r1"}
            ]
        },
        "handoff_destination_request": {"destination": HANDOFF},
        "call_endpointing_request": {"timeoutSeconds": 0.7},
        # The tests' campaign_predial hook says nothing unless told: the contact is skipped.
        "campaign_predial": {"eligible": False},
        "voice_request": {"error": item["response"].get("error")},
    }.get(name, {})
    assert item["response"] == expected
    if name == "assistant_request":
        assert item["response"]["assistant"]["model"]["url"] == RUNPOD_URL
    if name == "voice_request":
        assert "does not synthesise speech" in item["response"]["error"]


def test_custom_llm_whole_and_streamed(workers: dict[str, WorkerProcess], fake: FakeOllama) -> None:
    payload = load("custom_llm")
    item = only_item(workers["up"], webhook(payload, headers=AUTH))
    assert item["message_type"] == "custom-llm"
    assert item["call_id"] == "call-7f3c"
    check_response("custom-llm", item["response"])
    whole = item["response"]["choices"][0]["message"]["content"]
    assert whole == "You said: What is your return policy?"
    streamed = workers["up"].output(webhook({**payload, "stream": True}, headers=AUTH))
    _chunks, text = sse_chunks(streamed)
    assert text == whole


def test_informational_messages_need_no_ollama(workers: dict[str, WorkerProcess]) -> None:
    for name in INFORMATIONAL:
        started = time.monotonic()
        item = only_item(workers["down"], webhook(load(name), headers=AUTH))
        assert time.monotonic() - started < 1.0, name
        assert item["response"] == {}, name
    log = workers["down"].log()
    assert "vapi event type=end-of-call-report call_id=call-legacy-1 " in log
    assert "OLLAMA_UNAVAILABLE" not in log


def test_authentication_through_the_local_api(workers: dict[str, WorkerProcess]) -> None:
    worker = workers["up"]
    now = str(int(time.time()))
    assert only_item(worker, signed(load("hang"), now))["response"] == {}
    bearer = {"authorization": f"Bearer {SECRET}"}
    assert only_item(worker, webhook(load("hang"), headers=bearer))["response"] == {}
    refused = [
        webhook(load("tool_calls")),
        webhook(load("hang"), headers={"X-Vapi-Secret": "guess"}),
        signed(load("hang"), str(int(time.time()) - 3600)),
        signed(load("hang"), now, secret="forged"),
    ]
    outputs = [worker.output(job) for job in refused]
    for output in outputs:
        assert len(output) == 1
        assert output[0]["error"].startswith("UNAUTHORIZED: ")
    assert SECRET not in json.dumps(outputs)
    assert SECRET not in worker.log()
