"""The example relay in front of the real worker: VAPI's POST in, VAPI's bare answer out."""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from examples import vapi_relay
from standins.ollama import FakeOllama
from tests.harness import ROOT, WorkerProcess, free_port
from tests.vapi_fixtures import vapi_sign

SECRET = "relay-test-secret"
# An HMAC credential that signs the method and the URL too, which only the relay knows.
PLAN = {
    "type": "hmac",
    "algorithm": "sha512",
    "signatureHeader": "X-Relay-Signature",
    "payloadFormat": "{method} {url} {timestamp}.{body}",
    "signatureEncoding": "base64",
}


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


@pytest.mark.parametrize("body", [b"not json", b"\xff\xfe", b"[1, 2]"])
def test_relay_answers_a_body_that_is_not_a_json_object_with_a_4xx(
    relay: TestClient, body: bytes
) -> None:
    answer = relay.post("/vapi", content=body, headers={"X-Vapi-Secret": SECRET})
    assert answer.status_code == 400
    assert list(answer.json()) == ["error"]


@pytest.fixture(scope="module")
def planned_worker(fake_server: FakeOllama) -> Iterator[WorkerProcess]:
    env = {
        "OLLAMA_HOST": fake_server.host_port,
        "VAPI_WEBHOOK_SECRET": SECRET,
        "VAPI_AUTH_PLAN": json.dumps(PLAN),
    }
    with WorkerProcess(env) as worker:
        yield worker


def test_relay_forwards_what_an_hmac_plan_signs(
    planned_worker: WorkerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNPOD_RUNSYNC_URL", f"{planned_worker.url}/runsync")
    relay = TestClient(vapi_relay.app)
    body = json.dumps({"message": {"type": "hang", "call": {"id": "c4"}}})
    url = "http://testserver/vapi?assistant=a1"
    stamp = str(int(time.time()))
    headers = vapi_sign(PLAN, SECRET, body, timestamp=stamp, method="POST", url=url)
    answer = relay.post(url, content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {}
    # The same signature for another URL is refused.
    other = relay.post("http://testserver/vapi?assistant=a2", content=body, headers=headers)
    assert other.status_code == 401
    assert other.json()["error"].startswith("UNAUTHORIZED: X-Relay-Signature does not match")


def test_smoke_sends_the_vapi_secret(
    secured_worker: WorkerProcess,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = importlib.util.spec_from_file_location("smoke", ROOT / "scripts" / "smoke.py")
    assert spec is not None
    assert spec.loader is not None
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    monkeypatch.delenv("VAPI_WEBHOOK_SECRET", raising=False)
    assert smoke.main([secured_worker.url]) == 1
    assert "FAIL vapi_status_update" in capsys.readouterr().out
    assert smoke.main([secured_worker.url, "--vapi-secret", SECRET]) == 0
    monkeypatch.setenv("VAPI_WEBHOOK_SECRET", SECRET)
    assert smoke.main([secured_worker.url]) == 0
    with pytest.raises(SystemExit):
        smoke.main(["--help"])
    assert "VAPI_WEBHOOK_SECRET" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("where", "says"),
    [
        # Nothing listens there: RunPod unreachable.
        (lambda fake: f"http://127.0.0.1:{free_port()}/runsync", "could not be reached"),
        # A plain-text 404 (any proxy or gateway page): not JSON.
        (lambda fake: f"{fake.url}/no/such/runsync", "HTTP 404 with a body that is not JSON"),
    ],
)
def test_relay_answers_vapis_error_with_502_when_runpod_fails_it(
    fake: FakeOllama,
    monkeypatch: pytest.MonkeyPatch,
    where: Callable[[FakeOllama], str],
    says: str,
) -> None:
    monkeypatch.setenv("RUNPOD_RUNSYNC_URL", where(fake))
    message = {"message": {"type": "status-update", "status": "ended", "call": {"id": "c1"}}}
    answer = TestClient(vapi_relay.app).post("/vapi", json=message)
    assert answer.status_code == 502
    body = answer.json()
    assert set(body) == {"error"}
    assert says in body["error"]
