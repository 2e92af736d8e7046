"""HTTP mode (WORKER_MODE=http): the worker as a RunPod load-balancing endpoint, over real HTTP.

Every worker here is started as the image starts it, through ollama_boot.sh with the stand-in
`ollama` executable, and called with real clients: the `openai` package, httpx, VAPI messages
signed as VAPI signs them and answers checked against VAPI's SDK types.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types import Completion, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from ollama_worker import http_mode
from ollama_worker.config import get_settings
from ollama_worker.http_mode import Door, Worker, build_app
from ollama_worker.ollama_client import get_client
from standins.ollama import FakeConfig, FakeOllama
from tests.harness import free_port
from tests.hf_cache import NEW_REVISION, make_cache
from tests.http_worker import HttpWorker
from tests.real_ollama import (
    RealOllamaServer,
    real_boot_env,
    real_ollama_with_model,
    require_real_ollama,
)
from tests.test_model_cache import Q4, REPO
from tests.vapi_fixtures import (
    INFORMATIONAL,
    MESSAGE_TYPES,
    SECRET,
    TOOLS_MODULE,
    TRANSFER,
    check_response,
    load,
    sse_chunks,
    vapi_sign,
)

ENDPOINT = "ep-lb"
HANDOFF = {"type": "assistant", "assistantName": "Billing"}
LONG = " ".join(f"w{n}" for n in range(15))  # 17 tokens of reply: "You said: " and these
BODY_LIMIT = 20_000
# The stand-in's switches at the values each test starts from.
OLLAMA_DEFAULTS = {
    key: value
    for key, value in dataclasses.asdict(FakeConfig(num_parallel=8)).items()
    if key not in {"models", "state_file"}
}
COMMON = {
    "VAPI_WEBHOOK_SECRET": SECRET,
    "VAPI_TOOLS_MODULE": TOOLS_MODULE,
    "RUNPOD_ENDPOINT_ID": ENDPOINT,
    "OLLAMA_RETRY_DEADLINE_S": "5",
}


@pytest.fixture(scope="module")
def lb_process() -> Iterator[HttpWorker]:
    """One worker in HTTP mode for the module: 2 generation slots, a small body limit."""
    env = {
        **COMMON,
        "VAPI_TRANSFER_DESTINATION": json.dumps(TRANSFER),
        "VAPI_HANDOFF_DESTINATION": json.dumps(HANDOFF),
        "VAPI_ENDPOINTING_TIMEOUT_S": "0.7",
        "MAX_CONCURRENCY": "2",
        "HTTP_QUEUE_TIMEOUT_S": "0.5",
        "HTTP_MAX_BODY_BYTES": str(BODY_LIMIT),
    }
    with HttpWorker(env) as worker:
        yield worker


@pytest.fixture
def lb(lb_process: HttpWorker) -> HttpWorker:
    """The module's worker, its stand-in Ollama back at its defaults with zeroed counters."""
    assert lb_process.process is not None
    assert lb_process.process.poll() is None, lb_process.log()
    lb_process.configure_ollama(**OLLAMA_DEFAULTS)
    lb_process.ollama("POST", "/_fake/reset")
    return lb_process


def client(worker: HttpWorker, **options: Any) -> openai.OpenAI:
    """The OpenAI client as a user points it at https://<ENDPOINT_ID>.api.runpod.ai/v1."""
    return openai.OpenAI(base_url=f"{worker.url}/v1", api_key="runpod-api-key", **options)


def wait_until(condition: Any, timeout: float = 5.0) -> None:
    """Poll `condition()` until true; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def vapi_post(worker: HttpWorker, body: bytes, headers: dict[str, str]) -> httpx.Response:
    """POST raw bytes to /vapi, as VAPI does."""
    return worker.http.post(
        "/vapi", content=body, headers={"content-type": "application/json", **headers}
    )


# --- boot, health check, ports --------------------------------------------------------------


def test_ping_is_204_while_the_model_loads_then_200_and_the_health_port_serves_only_it() -> None:
    env = {**COMMON, "FAKE_OLLAMA_LOAD_DELAY_S": "1.0"}
    worker = HttpWorker(env, health_port=True).launch()
    try:
        seen = worker.wait_ready()
        log = worker.log()
        assert seen[-2:] == [204, 200], (seen, log)
        assert set(seen) <= {None, 204, 200}, seen
        # 200 only once the boot script's preload was done.
        assert "ollama_boot: ready: voice-assistant is loaded" in log
        assert log.index("ollama_boot: ready:") < log.index("the health check answers 200"), log
        assert worker.http.post("/chat", json={"prompt": "hi"}).status_code == 200
        assert httpx.get(f"{worker.url}/ping").status_code == 200
        off_port = httpx.post(f"{worker.health_url}/chat", json={"prompt": "hi"})
        assert off_port.status_code == 404
    finally:
        worker.stop()


def test_an_unknown_worker_mode_stops_the_boot_with_a_clear_message() -> None:
    worker = HttpWorker({"WORKER_MODE": "lb"}).launch()
    try:
        assert worker.wait_exit(20) == 2
        log = worker.log()
        assert "WORKER_MODE=lb is not a mode: use queue" in log, log
        assert "started ollama serve" not in log
        assert worker.leftovers() == []
    finally:
        worker.stop()


# --- the OpenAI API --------------------------------------------------------------------------


def test_the_openai_client_chats_whole_and_streamed(lb: HttpWorker) -> None:
    openai_client = client(lb)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi there"}]
    whole = openai_client.chat.completions.create(model="", messages=messages, max_tokens=32)
    assert isinstance(whole, ChatCompletion)
    assert whole.choices[0].message.content == "You said: hi there"
    chunks = list(openai_client.chat.completions.create(model="", messages=messages, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "You said: hi there"
    )
    assert chunks[-1].choices[0].finish_reason == "stop"
    sent = lb.stand_in.received()
    # The model default fills an empty model; the request's max_tokens goes through.
    assert [body["model"] for body in sent] == ["voice-assistant", "voice-assistant"]
    assert sent[0]["max_tokens"] == 32


def test_vapi_custom_llm_extras_are_dropped_and_the_url_works_as_is(lb: HttpWorker) -> None:
    payload = load("custom_llm")
    # VAPI appends /chat/completions to the custom-LLM URL https://<ENDPOINT_ID>.api.runpod.ai/v1.
    answer = lb.http.post("/v1/chat/completions", json=payload)
    assert answer.status_code == 200, answer.text
    check_response("custom-llm", answer.json())
    assert answer.json()["choices"][0]["message"]["content"] == (
        "You said: What is your return policy?"
    )
    streamed = lb.http.post("/v1/chat/completions", json={**payload, "stream": True})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    _chunks, text = sse_chunks([streamed.text])
    assert text == "You said: What is your return policy?"
    for body in lb.stand_in.received():
        assert not {"call", "metadata", "customer", "phoneNumber"} & set(body), body
        assert body["temperature"] == 0.7


def test_completions_embeddings_and_models(lb: HttpWorker) -> None:
    openai_client = client(lb)
    completion = openai_client.completions.create(model="", prompt="hello", max_tokens=8)
    assert isinstance(completion, Completion)
    assert completion.choices[0].text
    embedding = openai_client.embeddings.create(model="voice-assistant", input="hello")
    assert isinstance(embedding, CreateEmbeddingResponse)
    assert embedding.data[0].embedding
    models = list(openai_client.models.list())
    assert all(isinstance(model, Model) for model in models)
    assert "voice-assistant:latest" in [model.id for model in models]


def test_a_stream_is_written_event_by_event(lb: HttpWorker) -> None:
    lb.configure_ollama(token_delay_s=0.1)
    arrivals = []
    body = {"messages": [{"role": "user", "content": LONG}], "stream": True}
    with lb.http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.monotonic())
    # 17 tokens 0.1 s apart: each event arrives as it is made, not in one batch at the end.
    assert len(arrivals) >= 17
    assert arrivals[-1] - arrivals[0] > 1.2


def test_errors_come_in_the_openai_form_with_their_status(lb: HttpWorker) -> None:
    openai_client = client(lb, max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        openai_client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert missing.value.code == "MODEL_NOT_FOUND"
    assert "installed models: " in missing.value.message
    bad = lb.http.post("/v1/chat/completions", content=b"{not json")
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "INVALID_INPUT"


# --- VAPI ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MESSAGE_TYPES))
def test_every_vapi_message_is_answered_as_the_job_answers_it(lb: HttpWorker, name: str) -> None:
    payload = load(name)
    answer = vapi_post(lb, json.dumps(payload).encode(), {"X-Vapi-Secret": SECRET})
    assert answer.status_code == 200, answer.text
    kind = str(payload.get("message", {}).get("type") or payload.get("type"))
    check_response(kind, answer.json())
    if name in INFORMATIONAL:
        assert answer.json() == {}
    if name == "assistant_request":
        # On a load-balancing endpoint the assistant's custom LLM is this endpoint's own /v1.
        model = answer.json()["assistant"]["model"]
        assert model["url"] == f"https://{ENDPOINT}.api.runpod.ai/v1"
    if name == "transfer_destination_request":
        assert answer.json() == {"destination": TRANSFER}


def test_vapi_custom_llm_request_streams_from_the_vapi_route(lb: HttpWorker) -> None:
    payload = {**load("custom_llm"), "stream": True}
    answer = vapi_post(lb, json.dumps(payload).encode(), {"X-Vapi-Secret": SECRET})
    assert answer.headers["content-type"].startswith("text/event-stream")
    _chunks, text = sse_chunks([answer.text])
    assert text == "You said: What is your return policy?"


def test_vapi_credentials_checked_over_the_exact_bytes_and_headers(lb: HttpWorker) -> None:
    # Spacing and key order as VAPI may send them: the signature covers these very bytes.
    raw = b'{ "message":{"type":"hang",  "call":{"id":"c-9"}} }'
    stamp = str(int(time.time()))
    digest = hmac.new(SECRET.encode(), f"{stamp}.".encode() + raw, hashlib.sha256).hexdigest()
    signed = {"x-signature": digest, "x-timestamp": stamp}
    # The RunPod key rides in Authorization for the gateway: the worker's own check passes
    # with X-Vapi-Secret or a signature beside it.
    runpod = {"Authorization": "Bearer runpod-api-key"}
    assert vapi_post(lb, raw, {**runpod, "X-Vapi-Secret": SECRET}).json() == {}
    assert vapi_post(lb, raw, {**runpod, **signed}).json() == {}
    assert vapi_post(lb, raw, {"Authorization": f"Bearer {SECRET}"}).json() == {}
    refused = [
        vapi_post(lb, raw, {}),
        vapi_post(lb, raw, {**runpod, "X-Vapi-Secret": "guess"}),
        # The same message re-serialised is not the signed body.
        vapi_post(lb, json.dumps(json.loads(raw)).encode(), signed),
    ]
    for answer in refused:
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"].startswith("UNAUTHORIZED: ")
    assert SECRET not in lb.log()
    for body in (b"not json", b"\xff\xfe", b"[1, 2]"):
        answer = vapi_post(lb, body, {"X-Vapi-Secret": SECRET})
        assert answer.status_code == 400
        assert list(answer.json()) == ["error"]
        assert isinstance(answer.json()["error"], str)


PLANS: dict[str, dict[str, Any]] = {
    # The RunPod key holds Authorization, so the worker's own secret needs a header of its own.
    "bearer": {"type": "bearer", "headerName": "X-Worker-Secret", "bearerPrefixEnabled": False},
    "hmac": {"type": "hmac", "algorithm": "sha512", "signatureEncoding": "base64"},
    # Signs the URL VAPI called: the endpoint's public one, not the worker's own.
    "hmac url": {
        "type": "hmac",
        "algorithm": "sha256",
        "payloadFormat": "{method} {url}\n{timestamp}.{body}",
    },
}


@pytest.mark.parametrize("name", list(PLANS))
def test_each_vapi_auth_plan(name: str) -> None:
    plan = PLANS[name]
    with HttpWorker({**COMMON, "VAPI_AUTH_PLAN": json.dumps(plan)}) as worker:
        raw = json.dumps(load("tool_calls")).encode()
        stamp = str(int(time.time()))
        url = f"https://{ENDPOINT}.api.runpod.ai/vapi?assistant=a1"
        if plan["type"] == "bearer":
            good, bad = {"X-Worker-Secret": SECRET}, {"Authorization": f"Bearer {SECRET}"}
        else:
            good = vapi_sign(plan, SECRET, raw.decode(), timestamp=stamp, url=url)
            bad = vapi_sign(plan, "forged", raw.decode(), timestamp=stamp, url=url)
        headers = {"Authorization": "Bearer runpod-api-key", "content-type": "application/json"}
        accepted = worker.http.post("/vapi?assistant=a1", content=raw, headers={**headers, **good})
        assert accepted.status_code == 200, (accepted.text, worker.log())
        check_response("tool-calls", accepted.json())
        refused = worker.http.post("/vapi?assistant=a1", content=raw, headers={**headers, **bad})
        assert refused.status_code == 401
        assert refused.json()["error"].startswith("UNAUTHORIZED: ")


# --- the chat and health jobs ---------------------------------------------------------------


def test_chat_and_health_jobs_over_http(lb: HttpWorker) -> None:
    whole = lb.http.post("/chat", json={"prompt": "hello you", "max_tokens": 16})
    assert whole.status_code == 200
    assert whole.json()["message"] == {"role": "assistant", "content": "You said: hello you"}
    assert set(whole.json()) == {"model", "message", "done_reason", "usage", "timings"}
    streamed = lb.http.post("/chat", json={"prompt": "hello you", "stream": True})
    assert streamed.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in streamed.text.splitlines()]
    assert "".join(line.get("message", {}).get("content", "") for line in lines) == (
        "You said: hello you"
    )
    assert lines[-1]["done"] is True
    assert "usage" in lines[-1]
    bad = lb.http.post("/chat", json={"prompt": "hi", "messages": []})
    assert bad.status_code == 400
    assert bad.json()["error"].startswith("INVALID_INPUT: ")
    missing = lb.http.post("/chat", json={"prompt": "hi", "model": "nope"})
    assert missing.status_code == 404
    assert missing.json()["error"].startswith("MODEL_NOT_FOUND: ")
    health = lb.http.get("/health").json()
    assert health["default_model"] == "voice-assistant"
    assert health["loaded"] == ["voice-assistant:latest"]


def test_one_log_line_per_request_without_text(lb: HttpWorker) -> None:
    marker = "zebra-quartz-7"
    lb.http.post("/chat", json={"prompt": marker}, headers={"x-request-id": "req-abc-1"})
    answer = lb.http.post("/chat", json={"prompt": marker, "model": "nope"})
    wait_until(lambda: answer.headers["x-request-id"] in lb.log())
    log = lb.log()
    lines = [line for line in log.splitlines() if "req-abc-1" in line]
    assert len(lines) == 1, lines
    assert " INFO " in lines[0]
    assert "request req-abc-1 POST /chat 200 " in lines[0]
    assert f"request {answer.headers['x-request-id']} POST /chat 404 " in log
    assert marker not in log


# --- load: the slot limit, the body limit, a client that leaves -----------------------------


def test_beyond_max_concurrency_a_request_waits_a_bounded_time_then_gets_429(
    lb: HttpWorker,
) -> None:
    lb.configure_ollama(token_delay_s=0.2)
    body = {"prompt": LONG, "stream": True}
    holding = []
    try:
        for _ in range(2):  # MAX_CONCURRENCY=2
            stream = lb.http.stream("POST", "/chat", json=body)
            # Kept, the line iterator too: dropping it would close the connection.
            lines = stream.__enter__().iter_lines()
            next(lines)
            holding.append((stream, lines))
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as busy:
            client(lb, max_retries=0).chat.completions.create(
                model="", messages=[{"role": "user", "content": "hi"}]
            )
        waited = time.monotonic() - started
        assert 0.5 <= waited < 3, waited  # HTTP_QUEUE_TIMEOUT_S=0.5, then a fast answer
        assert busy.value.response.headers["retry-after"] == "1"
        assert busy.value.code == "WORKER_BUSY"
        assert lb.stand_in.peak_in_flight() == 2
    finally:
        for stream, _lines in holding:
            stream.__exit__(None, None, None)


def test_a_request_that_finds_a_slot_within_the_wait_is_served(lb: HttpWorker) -> None:
    lb.configure_ollama(first_token_delay_s=0.2)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: lb.http.post("/chat", json={"prompt": "hi"}), range(4)))
    assert [answer.status_code for answer in answers] == [200] * 4
    assert lb.stand_in.peak_in_flight() == 2


def test_request_bodies_are_size_limited(lb: HttpWorker) -> None:
    big = {"prompt": "x" * (BODY_LIMIT + 1)}
    answer = lb.http.post("/chat", json=big)
    assert answer.status_code == 413
    assert answer.json()["error"].startswith("INVALID_INPUT: the request body is over")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"prompt": "'
        for _ in range(BODY_LIMIT // 1000 + 1):
            yield b"y" * 1000
        yield b'"}'

    chunked = lb.http.post("/v1/completions", content=chunks())
    assert chunked.status_code == 413
    assert chunked.json()["error"]["code"] == "INVALID_INPUT"


def test_hostile_bodies_meet_the_queue_jobs_rules(lb: HttpWorker) -> None:
    """HTTP bodies go through the jobs' own parse: nesting past its limit (or past what Python's
    JSON parser takes) is a 400, and a lone surrogate echoed back still encodes."""
    for depth in (150, 5000):  # 5000: past what Python parses, inside the test body limit
        deep = ("[" * depth + "]" * depth).encode()
        for path, body in (
            ("/v1/chat/completions", b'{"messages": [], "x": ' + deep + b"}"),
            ("/chat", b'{"prompt": "hi", "options": {"x": ' + deep + b"}}"),
        ):
            answer = lb.http.post(path, content=body, headers={"content-type": "application/json"})
            assert answer.status_code == 400, (path, depth, answer.text[:200])
            assert "INVALID_INPUT" in answer.text, answer.text[:200]
        vapi = vapi_post(lb, b'{"message": ' + deep + b"}", {"X-Vapi-Secret": SECRET})
        assert vapi.status_code == 400, vapi.text[:200]
        assert vapi.json()["error"].startswith("INVALID_INPUT: "), vapi.text[:200]
    lone = (
        '{"message": {"type": "tool-calls", "call": {"id": "call-\\ud800"}, "toolCallList":'
        ' [{"id": "tc-\\ud800", "type": "function", "function": {"name": "nope",'
        ' "arguments": "{}"}}]}}'
    )
    answered = vapi_post(lb, lone.encode(), {"X-Vapi-Secret": SECRET})
    assert answered.status_code == 200, answered.text[:200]
    assert answered.json()["results"][0]["toolCallId"] == "tc-\ufffd"


def test_a_body_that_does_not_arrive_in_time_gets_408(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_mode, "BODY_TIMEOUT_S", 0.2)
    worker = Worker(get_settings())
    door = Door(worker, build_app(worker))
    sent: list[Any] = []

    async def trickle() -> dict[str, Any]:  # the first bytes, then nothing more
        if not sent:
            sent.append(None)
            return {"type": "http.request", "body": b'{"prompt": ', "more_body": True}
        await asyncio.sleep(60)
        raise AssertionError("unreachable")

    async def send(message: Any) -> None:
        sent.append(message)

    scope: dict[str, Any] = {"type": "http", "method": "POST", "path": "/chat", "headers": []}
    asyncio.run(asyncio.wait_for(door(scope, trickle, send), 5))
    assert sent[1]["status"] == 408
    assert json.loads(sent[2]["body"])["error"].startswith("INVALID_INPUT: the request body")
    assert worker.in_flight == 0


def test_a_client_that_leaves_mid_stream_frees_ollama_at_once(lb: HttpWorker) -> None:
    lb.configure_ollama(token_delay_s=0.3)  # 17 tokens: over 5 s to finish
    body = {"messages": [{"role": "user", "content": LONG}], "stream": True}
    with lb.http.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        next(lines)
        time.sleep(0.5)
        assert lb.stand_in.in_flight() == 1  # still generating while we listen
        left = time.monotonic()
    wait_until(lambda: lb.stand_in.in_flight() == 0, timeout=3)
    assert time.monotonic() - left < 1.5
    assert lb.stand_in.cancelled() == 1
    wait_until(lambda: "client left; generation cancelled" in lb.log())


# --- SIGTERM ---------------------------------------------------------------------------------


def _stream_text(worker: HttpWorker) -> str:
    """One streamed chat through the OpenAI client: its text."""
    stream = client(worker, max_retries=0).chat.completions.create(
        model="", messages=[{"role": "user", "content": LONG}], stream=True
    )
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_sigterm_lets_streams_in_flight_finish_and_refuses_the_rest() -> None:
    env = {**COMMON, "FAKE_OLLAMA_TOKEN_DELAY_S": "0.1"}
    with HttpWorker(env) as worker, ThreadPoolExecutor(2) as pool:
        streams: list[Future[str]] = [pool.submit(_stream_text, worker) for _ in range(2)]
        wait_until(lambda: worker.stand_in.in_flight() == 2)
        stopped = time.monotonic()
        worker.signal(signal.SIGTERM)
        wait_until(lambda: "got SIGTERM: the health check answers 503" in worker.log())
        assert worker.ping() == 503
        refused = worker.http.post("/chat", json={"prompt": "late"})
        assert refused.status_code == 503
        assert refused.json()["error"].startswith("WORKER_STOPPED: ")
        assert [stream.result(15) for stream in streams] == [f"You said: {LONG}"] * 2
        assert worker.wait_exit(15) == 143
        took = time.monotonic() - stopped
        log = worker.log()
        assert took < 10, log
        assert worker.leftovers() == [], log
        # The server went before Ollama: every stream ended while Ollama still answered.
        assert log.index("every request in flight finished") < log.index(
            "the handler has stopped; stopping Ollama"
        ), log


def test_a_stream_that_outlives_the_grace_ends_cleanly_with_a_code() -> None:
    env = {**COMMON, "FAKE_OLLAMA_TOKEN_DELAY_S": "0.5", "WORKER_STOP_GRACE_S": "0.5"}
    with HttpWorker(env) as worker:
        body = {"messages": [{"role": "user", "content": LONG}], "stream": True}
        events: list[str] = []
        with worker.http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            events.append(next(lines))
            worker.signal(signal.SIGTERM)
            # The stream ends properly (no broken chunked encoding), its last event the error.
            events.extend(line for line in lines if line)
        stopped = json.loads(events[-1].removeprefix("data: "))
        assert stopped["error"]["code"] == "WORKER_STOPPED", events
        assert "data: [DONE]" not in events
        assert worker.wait_exit(15) == 143
        assert worker.leftovers() == []
        assert "cut off by the stop" in worker.log()


def test_the_health_check_turns_503_once_ollama_stops_answering(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{port}")
    get_settings.cache_clear()

    async def statuses() -> list[int]:
        worker = Worker(get_settings())
        codes = [await worker.health_status()]  # nothing answers yet: booting
        with FakeOllama(port=port):
            codes.append(await worker.health_status())  # up, the model not loaded
            preload = {"model": "voice-assistant", "messages": [], "keep_alive": -1}
            await get_client().raw_json("POST", "/api/chat", preload)
            codes.append(await worker.health_status())
        codes.append(await worker.health_status())  # gone
        await get_client().aclose()
        return codes

    try:
        assert asyncio.run(statuses()) == [204, 204, 200, 503]
    finally:
        get_settings.cache_clear()


# --- the same, against the real `ollama serve` and the real model ---------------------------

GREEDY = {"temperature": 0, "seed": 42}


@pytest.fixture(scope="module")
def real_lb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpWorker]:
    """ollama_boot.sh in HTTP mode with the real `ollama` first on PATH, on a store holding
    voice-assistant built from our Modelfile; one generation at a time."""
    models = tmp_path_factory.mktemp("real-lb-models")
    # Built by a server of its own, then stopped: the boot script starts its own on the store.
    with real_ollama_with_model(models, preload=False) as server:
        env = real_boot_env(server)
    env |= {
        **COMMON,
        "OLLAMA_BOOT_TIMEOUT_S": "60",
        "OLLAMA_NUM_PARALLEL": "1",
        "MAX_CONCURRENCY": "1",
        "HTTP_QUEUE_TIMEOUT_S": "30",
    }
    worker = HttpWorker(env).launch()
    try:
        worker.seen = worker.wait_ready(timeout=120)  # type: ignore[attr-defined]
        yield worker
    finally:
        worker.stop()


@pytest.mark.real
def test_real_boot_turns_healthy_after_the_preload_and_the_openai_client_streams(
    real_lb: HttpWorker,
) -> None:
    seen, log = real_lb.seen, real_lb.log()  # type: ignore[attr-defined]
    # The 270M model loads faster than the server starts: 204 shows only with a slower load.
    assert seen[-1] == 200, log
    assert set(seen) <= {None, 204, 200}, seen
    assert re.search(r"boot: Ollama 0\.12\.10 answered", log)
    assert log.index("ollama_boot: ready:") < log.index("the health check answers 200"), log
    openai_client = client(real_lb, max_retries=0)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello."}]
    whole = openai_client.chat.completions.create(
        model="", messages=messages, max_tokens=8, temperature=0, seed=42
    )
    assert isinstance(whole, ChatCompletion)
    text = whole.choices[0].message.content
    assert text
    chunks = list(
        openai_client.chat.completions.create(
            model="", messages=messages, max_tokens=8, stream=True, temperature=0, seed=42
        )
    )
    # Not compared with `text`: Ollama 0.12.10 itself may start a stream that follows a whole
    # reply with a stray token (seen straight at its /v1 too), greedy decoding or not.
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


@pytest.mark.real
def test_real_vapi_custom_llm_stream_and_server_message(real_lb: HttpWorker) -> None:
    payload = {**load("custom_llm"), "stream": True, "max_tokens": 8, **GREEDY}
    streamed = real_lb.http.post("/v1/chat/completions", json=payload)
    assert streamed.status_code == 200, streamed.text
    _chunks, text = sse_chunks([streamed.text])
    assert text
    raw = json.dumps(load("assistant_request")).encode()
    answer = vapi_post(real_lb, raw, {"X-Vapi-Secret": SECRET})
    check_response("assistant-request", answer.json())


@pytest.mark.real
def test_real_http_mode_serves_its_health_check_through_a_model_cache_import(
    tmp_path: Path,
) -> None:
    # Until HF_MODEL's GGUF is imported the model does not exist; the server answers 204
    # meanwhile (the queue worker starts only after the import), and 200 once it is loaded.
    real = require_real_ollama()
    cache = make_cache(tmp_path / "hub", REPO)
    cache.add(NEW_REVISION, Q4, real.gguf)
    env = {
        **real_boot_env(RealOllamaServer(real, tmp_path / "models")),
        **COMMON,
        "HF_MODEL": REPO.lower(),
        "HF_HUB_CACHE": str(cache.root),
        "OLLAMA_BOOT_TIMEOUT_S": "60",
        "OLLAMA_NUM_PARALLEL": "1",
        "MAX_CONCURRENCY": "1",
    }
    worker = HttpWorker(env).launch()
    try:
        seen = worker.wait_ready(timeout=120)
        log = worker.log()
        assert seen[-1] == 200, (seen, log)
        assert log.index("started the handler") < log.index("model cache: imported"), log
        assert log.index("model cache: imported") < log.index("the health check answers 200")
        answer = worker.http.post("/chat", json={"prompt": "Hi.", "max_tokens": 4})
        assert answer.status_code == 200, answer.text
        assert log.count("started the handler") == 1
    finally:
        worker.stop()


GIN_CHAT = 'POST     "/v1/chat/completions"'  # Ollama's log line once a request has ended


@pytest.mark.real
def test_real_ollama_is_freed_when_a_client_leaves_mid_stream(real_lb: HttpWorker) -> None:
    ended_before = real_lb.log().count(GIN_CHAT)
    body = {"messages": [{"role": "user", "content": "Count to a thousand."}], "stream": True}
    with real_lb.http.stream(
        "POST", "/v1/chat/completions", json={**body, "max_tokens": 400}
    ) as response:
        lines = response.iter_lines()
        next(lines)
    # Ollama ends the request (and logs it) when its client, the worker, hangs up: seconds
    # before 400 tokens could be made, even at this machine's best 60 tokens a second.
    wait_until(lambda: real_lb.log().count(GIN_CHAT) > ended_before, timeout=4)
    wait_until(lambda: "client left; generation cancelled" in real_lb.log())


@pytest.mark.real
def test_real_sigterm_with_a_stream_in_flight(real_lb: HttpWorker) -> None:
    # Last in the module: it stops the module's worker.
    body = {
        "messages": [{"role": "user", "content": "Tell me about the sea."}],
        "max_tokens": 4,
        "stream": True,
        **GREEDY,
    }
    with real_lb.http.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        events = [next(lines)]
        stopped = time.monotonic()
        real_lb.signal(signal.SIGTERM)
        events.extend(line for line in lines if line)
    # Finished within the grace, or (on a machine too busy for 4 tokens in 5 s) cut off with
    # its code: either way a whole stream, never a dropped connection.
    last = events[-1]
    assert last == "data: [DONE]" or '"code": "WORKER_STOPPED"' in last, events
    assert real_lb.wait_exit(15) == 143
    assert time.monotonic() - stopped < 10
    assert real_lb.leftovers() == [], real_lb.log()
