"""The example relay in front of the real worker: VAPI's POST in, VAPI's bare answer out."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from examples import vapi_relay
from tests.fake_ollama import FakeOllama
from tests.harness import WorkerProcess

SECRET = "relay-test-secret"


@pytest.fixture(scope="module")
def secured_worker(fake_server: FakeOllama) -> Iterator[WorkerProcess]:
    env = {
        "OLLAMA_HOST": fake_server.host_port,
        "VAPI_WEBHOOK_SECRET": SECRET,
        "VAPI_TOOLS_MODULE": "tests.vapi_tools_for_tests",
    }
    with WorkerProcess(env) as worker:
        yield worker


@pytest.fixture
def relay(secured_worker: WorkerProcess, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv("RUNPOD_RUNSYNC_URL", f"{secured_worker.url}/runsync")
    return TestClient(vapi_relay.app)


def test_relay_returns_the_bare_vapi_answer(relay: TestClient) -> None:
    message = {"message": {"type": "status-update", "status": "ended", "call": {"id": "c1"}}}
    answer = relay.post("/vapi", json=message, headers={"X-Vapi-Secret": SECRET})
    assert answer.status_code == 200
    assert answer.json() == {}


def test_relay_answers_tool_calls(relay: TestClient) -> None:
    message = {
        "message": {
            "type": "tool-calls",
            "call": {"id": "c2"},
            "toolCallList": [
                {"id": "t1", "type": "function", "function": {"name": "nope", "arguments": {}}}
            ],
        }
    }
    answer = relay.post("/vapi", json=message, headers={"Authorization": f"Bearer {SECRET}"})
    assert answer.status_code == 200
    [result] = answer.json()["results"]
    assert result["toolCallId"] == "t1"
    assert "error" in result


def test_relay_refuses_a_wrong_secret(relay: TestClient) -> None:
    message = {"message": {"type": "hang", "call": {"id": "c3"}}}
    answer = relay.post("/vapi", json=message, headers={"X-Vapi-Secret": "guess"})
    assert answer.status_code == 401
    assert answer.json()["error"].startswith("UNAUTHORIZED: ")
    assert SECRET not in answer.text
