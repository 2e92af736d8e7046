"""Unit tests of the worker core: validation, option mapping, error codes and retry policy."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import ollama
import pytest

from ollama_worker.chat import chat_request
from ollama_worker.config import ConfigError, Settings, ollama_base_url
from ollama_worker.errors import ErrorCode, WorkerError
from ollama_worker.ollama_client import OllamaClient, is_retryable, to_worker_error
from ollama_worker.schemas import ChatJob, HealthJob, OpenAIJob, VapiWebhookJob, parse_job


def parse(raw: object, limit: int = 1_000_000) -> object:
    return parse_job(raw, max_input_chars=limit)


def invalid(raw: object, limit: int = 1_000_000) -> str:
    with pytest.raises(WorkerError) as caught:
        parse(raw, limit)
    assert caught.value.code is ErrorCode.INVALID_INPUT
    message = str(caught.value)
    assert message.startswith("INVALID_INPUT: ")
    assert "\n" not in message
    return message


# --- validation --------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["prompt", "message"])
def test_untyped_job_with_text_is_a_chat(key: str) -> None:
    job = parse({key: "hello"})
    assert isinstance(job, ChatJob)
    assert [m.model_dump(exclude_none=True) for m in job.conversation()] == [
        {"role": "user", "content": "hello"}
    ]


def test_messages_and_system_make_the_conversation() -> None:
    job = parse(
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f"}}]},
                {"role": "tool", "content": "42", "tool_name": "f"},
            ],
            "system": "be brief",
        }
    )
    assert isinstance(job, ChatJob)
    assert [m.role for m in job.conversation()] == ["system", "user", "assistant", "tool"]
    assert job.conversation()[2].content == ""


def test_job_types_are_discriminated() -> None:
    assert isinstance(parse({"type": "health"}), HealthJob)
    assert isinstance(parse({"type": "vapi_webhook", "payload": {"message": {}}}), VapiWebhookJob)
    assert isinstance(parse({"openai_route": "/v1/models", "openai_input": {}}), OpenAIJob)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (None, "must be a JSON object"),
        ([1, 2], "must be a JSON object, not list"),
        ({}, "known types: chat, health, vapi_webhook"),
        ({"type": "dance"}, "'dance'; known types: chat, health, vapi_webhook"),
        ({"type": "chat"}, "exactly one of `messages`, `prompt` or `message`"),
        ({"prompt": "a", "message": "b"}, "(got prompt, message)"),
        ({"messages": []}, "`messages` is empty"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role: Input should be"),
        ({"messages": [{"content": "x"}]}, "messages.0.role: Field required"),
        ({"prompt": "hi", "temprature": 1}, "temprature: Extra inputs are not permitted"),
        ({"prompt": "hi", "stream": "maybe"}, "stream: Input should be a valid boolean"),
        ({"prompt": "hi", "model": ""}, "model: String should have at least 1 character"),
        ({"prompt": "hi", "think": "very"}, "think"),
        ({"type": "vapi_webhook"}, "payload: Field required"),
        ({"openai_route": "/v1/audio"}, "unknown openai_route '/v1/audio'"),
    ],
)
def test_invalid_input_says_which_field_and_why(raw: object, says: str) -> None:
    assert says in invalid(raw)


def test_oversized_input_is_refused() -> None:
    assert "the limit is 10 (MAX_INPUT_CHARS)" in invalid({"prompt": "x" * 11}, limit=10)
    assert "the limit is 10" in invalid({"prompt": "x" * 6, "system": "y" * 5}, limit=10)
    assert isinstance(parse({"prompt": "x" * 10}, limit=10), ChatJob)


# --- option mapping ----------------------------------------------------------------------


def request_for(raw: dict[str, object]) -> dict[str, object]:
    job = parse(raw)
    assert isinstance(job, ChatJob)
    return chat_request(job, "voice-assistant")


def test_top_level_knobs_map_to_ollama_options_and_options_win() -> None:
    request = request_for(
        {
            "prompt": "hi",
            "temperature": 0.2,
            "top_p": 0.5,
            "max_tokens": 64,
            "stop": "END",
            "seed": 7,
            "options": {"temperature": 0.9, "num_ctx": 4096},
        }
    )
    assert request["options"] == {
        "temperature": 0.9,
        "top_p": 0.5,
        "num_predict": 64,
        "stop": ["END"],
        "seed": 7,
        "num_ctx": 4096,
    }


def test_pass_through_fields_and_default_model() -> None:
    request = request_for(
        {
            "prompt": "hi",
            "format": {"type": "object"},
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "think": True,
            "keep_alive": -1,
        }
    )
    assert request["model"] == "voice-assistant"
    assert request["format"] == {"type": "object"}
    assert request["think"] is True
    assert request["keep_alive"] == -1
    assert "options" not in request_for({"prompt": "hi"})
    assert request_for({"prompt": "hi", "model": "llama3.1:8b"})["model"] == "llama3.1:8b"


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1:11434", "http://127.0.0.1:11434"),
        ("0.0.0.0:11434", "http://127.0.0.1:11434"),
        (":9999", "http://127.0.0.1:9999"),
        ("localhost", "http://localhost:11434"),
        ("https://ollama.internal:443/", "https://ollama.internal:443"),
    ],
)
def test_ollama_host_forms(host: str, url: str) -> None:
    assert ollama_base_url(host) == url


def test_settings_defaults_and_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MAX_CONCURRENCY", "OLLAMA_NUM_PARALLEL", "OLLAMA_RETRY_DEADLINE_S"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env()
    assert (settings.max_concurrency, settings.retry_deadline_s) == (4, 60.0)
    assert settings.request_timeout_s == 300.0
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "8")
    assert Settings.from_env().max_concurrency == 8
    monkeypatch.setenv("MAX_CONCURRENCY", "3")
    assert Settings.from_env().max_concurrency == 3
    monkeypatch.setenv("MAX_CONCURRENCY", "lots")
    with pytest.raises(ConfigError, match="MAX_CONCURRENCY='lots' is not a number"):
        Settings.from_env()


# --- error translation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ollama.ResponseError("model 'x' not found", 404), ErrorCode.MODEL_NOT_FOUND),
        (ollama.ResponseError("invalid keep_alive", 400), ErrorCode.INVALID_INPUT),
        (ollama.ResponseError("server busy", 503), ErrorCode.OLLAMA_UNAVAILABLE),
        (ollama.ResponseError("runner died", 500), ErrorCode.OLLAMA_ERROR),
        (ollama.ResponseError("out of memory"), ErrorCode.OLLAMA_ERROR),
        (ConnectionError("refused"), ErrorCode.OLLAMA_UNAVAILABLE),
        (httpx.ConnectError("refused"), ErrorCode.OLLAMA_UNAVAILABLE),
        (httpx.ConnectTimeout("slow"), ErrorCode.OLLAMA_UNAVAILABLE),
        (httpx.ReadTimeout("slow"), ErrorCode.TIMEOUT),
        (httpx.RemoteProtocolError("dropped"), ErrorCode.OLLAMA_ERROR),
        (KeyError("x"), ErrorCode.INTERNAL),
    ],
)
def test_exceptions_become_coded_errors(exc: BaseException, code: ErrorCode) -> None:
    error = to_worker_error(exc, deadline_s=60)
    assert error.code is code
    assert str(error).startswith(f"{code}: ")


@pytest.mark.parametrize(
    ("exc", "retried"),
    [
        (ollama.ResponseError("busy", 503), True),
        (ollama.ResponseError("bad gateway", 502), True),
        (ollama.ResponseError("gateway timeout", 504), True),
        (ollama.ResponseError("broken", 500), False),
        (ollama.ResponseError("not found", 404), False),
        (ollama.ResponseError("bad", 400), False),
        (ollama.ResponseError("mid-stream"), False),
        (ConnectionError("refused"), True),
        (ConnectionResetError("reset"), True),
        (httpx.ConnectError("refused"), True),
        (httpx.ReadTimeout("slow"), True),
        (httpx.RemoteProtocolError("dropped"), True),
        (ValueError("bug"), False),
    ],
)
def test_which_faults_are_retried(exc: BaseException, retried: bool) -> None:
    assert is_retryable(exc) is retried


# --- retry policy against scripted transports ----------------------------------------------

Responder = Callable[[httpx.Request], httpx.Response]


def client_with(responder: Responder, *, deadline_s: float = 5.0) -> OllamaClient:
    settings = Settings.from_env()
    client = OllamaClient(
        Settings(**{**settings.__dict__, "retry_deadline_s": deadline_s, "max_concurrency": 2})
    )
    transport = httpx.MockTransport(responder)
    client.native._client._transport = transport  # the same objects the real pool sits behind
    client.http._transport = transport
    return client


def chat_reply() -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "model": "m",
            "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": "hi"},
            "done": True,
            "done_reason": "stop",
        },
    )


async def test_503_then_success_is_retried() -> None:
    calls: list[str] = []

    def responder(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) < 3:
            return httpx.Response(503, json={"error": "server busy"})
        return chat_reply()

    reply = await client_with(responder).chat({"model": "m", "messages": []})
    assert reply.message.content == "hi"
    assert calls == ["/api/chat"] * 3


async def test_4xx_is_not_retried() -> None:
    calls: list[str] = []

    def responder(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(404, json={"error": "model 'm' not found"})

    with pytest.raises(WorkerError) as caught:
        await client_with(responder).chat({"model": "m", "messages": []})
    assert caught.value.code is ErrorCode.MODEL_NOT_FOUND
    assert len(calls) == 1


async def test_the_deadline_holds_while_ollama_stays_down() -> None:
    calls: list[float] = []

    def responder(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        raise httpx.ConnectError("connection refused", request=request)

    started = time.monotonic()
    with pytest.raises(WorkerError) as caught:
        await client_with(responder, deadline_s=0.6).chat({"model": "m", "messages": []})
    elapsed = time.monotonic() - started
    assert caught.value.code is ErrorCode.OLLAMA_UNAVAILABLE
    assert "within 0.6 s" in str(caught.value)
    assert len(calls) >= 3  # it did retry ...
    # ... never starting an attempt past the deadline (measured, as tenacity does, from the
    # first attempt; 50 ms of slack for the event loop), nor sleeping beyond it.
    assert all(t - calls[0] < 0.6 + 0.05 for t in calls)
    assert elapsed < 0.6 + 0.3


async def test_nothing_is_retried_once_a_stream_has_begun() -> None:
    calls: list[str] = []

    def responder(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        lines = [
            {"model": "m", "created_at": "t", "message": {"role": "assistant", "content": "a"}},
            {"error": "llama runner crashed"},
        ]
        body = "".join(json.dumps(line) + "\n" for line in lines)
        return httpx.Response(200, text=body, headers={"content-type": "application/x-ndjson"})

    pieces: list[str] = []

    async def read_stream() -> None:
        async for chunk in client_with(responder).chat_stream({"model": "m", "messages": []}):
            pieces.append(chunk.message.content or "")

    with pytest.raises(WorkerError) as caught:
        await read_stream()
    assert pieces == ["a"]
    assert caught.value.code is ErrorCode.OLLAMA_ERROR
    assert "llama runner crashed" in str(caught.value)
    assert calls == ["/api/chat"]


async def test_a_stream_failing_before_its_first_chunk_is_retried() -> None:
    calls: list[str] = []

    def responder(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            return httpx.Response(503, json={"error": "server busy"})
        return chat_reply()

    chunks = [c async for c in client_with(responder).chat_stream({"model": "m", "messages": []})]
    assert [c.message.content for c in chunks] == ["hi"]
    assert len(calls) == 2


async def test_non_json_error_bodies_keep_their_text() -> None:
    def responder(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, text="502")

    with pytest.raises(WorkerError) as caught:
        await client_with(responder).raw_json("GET", "/v1/models")
    assert str(caught.value) == "OLLAMA_ERROR: Ollama failed (HTTP 500): 502"
