"""Unit tests of the worker core: validation, option mapping, error codes and retry policy."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable

import httpx
import ollama
import pytest
from ollama._client import _parse_host

from ollama_worker import ollama_client
from ollama_worker.chat import chat_request
from ollama_worker.config import DEFAULTS, ConfigError, Settings, ollama_base_url
from ollama_worker.errors import ErrorCode, WorkerError
from ollama_worker.ollama_client import OllamaClient, is_retryable, to_worker_error
from ollama_worker.openai_route import run_openai
from ollama_worker.schemas import (
    ChatJob,
    HealthJob,
    InputLimits,
    OpenAIJob,
    VapiWebhookJob,
    parse_job,
)


def parse(raw: object, limit: int = 1_000_000) -> object:
    return parse_job(raw, InputLimits(max_input_chars=limit))


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


def test_the_openai_envelope_tolerates_keys_runpod_may_add() -> None:
    # RunPod owns this envelope; a key it adds one day must not fail every OpenAI request.
    job = parse({"openai_route": "/v1/models", "openai_input": {}, "openai_trace": "x"})
    assert isinstance(job, OpenAIJob)
    assert job.openai_route == "/v1/models"


def test_ollamas_own_num_predict_values_stay_reachable() -> None:
    job = parse({"prompt": "hi", "max_tokens": 1, "options": {"num_predict": -2}})
    assert isinstance(job, ChatJob)
    assert chat_request(job, "m")["options"]["num_predict"] == -2


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
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens: must be at least 1, not 0"),
        ({"prompt": "hi", "max_tokens": -1}, "options.num_predict"),
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


def request_for(raw: dict[str, object], limits: InputLimits | None = None) -> dict[str, object]:
    job = parse_job(raw, limits or InputLimits())
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
            "options": {"temperature": 0.9, "top_k": 20},
        }
    )
    assert request["options"] == {
        "temperature": 0.9,
        "top_p": 0.5,
        "num_predict": 64,
        "stop": ["END"],
        "seed": 7,
        "top_k": 20,
    }


def test_pass_through_fields_and_default_model() -> None:
    request = request_for(
        {
            "prompt": "hi",
            "format": {"type": "object"},
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "think": True,
            "keep_alive": -1,
        },
        InputLimits(caller_options=frozenset({"keep_alive"})),
    )
    assert request["model"] == "voice-assistant"
    assert request["format"] == {"type": "object"}
    assert request["think"] is True
    assert request["keep_alive"] == -1
    assert "options" not in request_for({"prompt": "hi"})
    assert request_for({"prompt": "hi", "model": "llama3.1:8b"})["model"] == "llama3.1:8b"


# --- what a caller may set -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({"prompt": "hi", "options": {"num_ctx": 1_000_000}}, "options num_ctx: not for callers"),
        ({"prompt": "hi", "options": {"num_gpu": 0, "use_mmap": False}}, "num_gpu, use_mmap:"),
        ({"prompt": "hi", "options": {"num_thread": 1}}, "options num_thread:"),
        ({"prompt": "hi", "options": {"use_mlock": True}}, "options use_mlock:"),  # pre-0.12
        ({"prompt": "hi", "keep_alive": 0}, "keep_alive: the worker keeps its models loaded"),
        ({"prompt": "hi", "keep_alive": "-1"}, "keep_alive:"),
    ],
)
def test_callers_may_not_reload_or_unload_the_shared_model(raw: object, says: str) -> None:
    message = invalid(raw)
    assert says in message
    assert "CALLER_OPTIONS" in message


def test_every_sampling_option_is_a_callers_and_no_load_time_one_is() -> None:
    # Ollama 0.12.10 api.Options: every field outside the embedded api.Runner is sampling.
    sampling = {"num_keep", "seed", "num_predict", "top_k", "top_p", "min_p", "typical_p"}
    sampling |= {"repeat_last_n", "temperature", "repeat_penalty", "presence_penalty"}
    sampling |= {"frequency_penalty", "stop"}
    options = dict.fromkeys(sampling, 1)
    assert request_for({"prompt": "hi", "options": options})["options"] == options
    for name in ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread"):
        assert f"options {name}:" in invalid({"prompt": "hi", "options": {name: 1}})


def test_the_operator_widens_what_callers_may_set_and_num_ctx_stays_capped() -> None:
    limits = InputLimits(caller_options=frozenset({"num_ctx", "keep_alive"}), max_num_ctx=8192)
    request = request_for({"prompt": "hi", "options": {"num_ctx": 8192}, "keep_alive": 0}, limits)
    assert request["options"] == {"num_ctx": 8192}
    assert request["keep_alive"] == 0
    with pytest.raises(WorkerError, match=r"num_ctx is 8193; the limit is 8,192 \(MAX_NUM_CTX\)"):
        parse_job({"prompt": "hi", "options": {"num_ctx": 8193}}, limits)


def test_the_numeric_keep_alive_string_means_seconds_when_allowed() -> None:
    # "-1" is a common way to say "forever"; Ollama itself would refuse the string.
    limits = InputLimits(caller_options=frozenset({"keep_alive"}))
    assert request_for({"prompt": "stay", "keep_alive": "-1"}, limits)["keep_alive"] == -1


# --- images, tool calls and tools as the client takes them ---------------------------------


@pytest.mark.parametrize(
    "image",
    ["/proc/self/environ", "/etc/passwd", "tests/fixtures", "https://x.test/a.png", "aGk", "", 5],
)
def test_an_image_is_base64_only_never_a_path(image: object) -> None:
    message = invalid({"messages": [{"role": "user", "content": "x", "images": [image]}]})
    assert message.startswith("INVALID_INPUT: messages.0.images.0: an image must")


def test_an_image_is_decoded_and_counted_against_its_cap() -> None:
    job = parse_job(
        {"messages": [{"role": "user", "content": "x", "images": ["aGVsbG8=", "aGk="]}]},
        InputLimits(max_image_bytes=7),
    )
    assert isinstance(job, ChatJob)
    assert chat_request(job, "m")["messages"][0]["images"] == [b"hello", b"hi"]
    with pytest.raises(WorkerError, match=r"images are 7 bytes; the limit is 6 \(MAX_IMAGE_BYTES"):
        parse_job(
            {"messages": [{"role": "user", "content": "x", "images": ["aGVsbG8=", "aGk="]}]},
            InputLimits(max_image_bytes=6),
        )


def test_openai_style_tool_calls_with_string_arguments_are_decoded() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    request = request_for({"messages": [{"role": "assistant", "tool_calls": [call]}]})
    assert request["messages"][0]["tool_calls"][0]["function"]["arguments"] == {"a": 1}


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}],
                    }
                ]
            },
            "messages.0.tool_calls.0: function.arguments must be a JSON object",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"function": {"name": "f", "arguments": "{"}}],
                    }
                ]
            },
            "function.arguments is a string but not JSON",
        ),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"function": 5}]}]},
            "tool_calls.0: function",
        ),
        ({"prompt": "x", "tools": [{"function": 5}]}, "tools.0: function"),
    ],
)
def test_tool_calls_and_tools_the_client_would_refuse_are_refused_first(
    raw: object, says: str
) -> None:
    assert says in invalid(raw)


def test_input_nested_past_the_depth_limit_is_refused_without_recursion() -> None:
    deep: object = "x"
    for _ in range(100_000):  # far past Python's recursion limit
        deep = [deep]
    assert "nests more than 100 levels deep" in invalid({"prompt": "hi", "extra": deep})


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1:11434", "http://127.0.0.1:11434"),
        ("0.0.0.0:11434", "http://127.0.0.1:11434"),
        (":9999", "http://127.0.0.1:9999"),
        ("localhost", "http://localhost:11434"),
        ("https://ollama.internal:443/", "https://ollama.internal:443"),
        ("http://ollama.internal", "http://ollama.internal:80"),
        ("https://ollama.internal", "https://ollama.internal:443"),
        ("http://proxy:8080/ollama/", "http://proxy:8080/ollama"),
        ("proxy/ollama", "http://proxy:11434/ollama"),
        ("[::1]:9999", "http://[::1]:9999"),
        ("::1", "http://[::1]:11434"),
        ("[::]:11434", "http://127.0.0.1:11434"),
        ("ollama:port", "http://ollama:11434"),  # Ollama falls back to the default port
        ("", "http://127.0.0.1:11434"),
    ],
)
def test_ollama_host_forms(host: str, url: str) -> None:
    assert ollama_base_url(host) == url


@pytest.mark.parametrize(
    "host",
    [
        "1.2.3.4",
        ":56789",
        "http://1.2.3.4",
        "https://example.com",
        "https://example.com:56789/path/",
        "example.com/path",
        "[0001:002:003:0004::1]:56789/path",
        "http://[0001:002:003:0004::1]",
    ],
)
def test_ollama_host_is_read_as_the_ollama_client_reads_it(host: str) -> None:
    # The native client parses our URL again: both must name the same server.
    assert ollama_base_url(host) == _parse_host(host) == _parse_host(ollama_base_url(host))


def test_settings_defaults_and_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MAX_CONCURRENCY", "OLLAMA_NUM_PARALLEL", "OLLAMA_RETRY_DEADLINE_S"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env()
    # Unset, each is its declared default (the registry's, so a default changes in one place).
    for name in ("max_concurrency", "retry_deadline_s", "request_timeout_s"):
        assert getattr(settings, name) == getattr(DEFAULTS, name), name
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "8")
    assert Settings.from_env().max_concurrency == 8
    monkeypatch.setenv("MAX_CONCURRENCY", "3")
    assert Settings.from_env().max_concurrency == 3
    monkeypatch.setenv("MAX_CONCURRENCY", "lots")
    with pytest.raises(ConfigError, match="MAX_CONCURRENCY='lots' is not a number"):
        Settings.from_env()


def test_min_gpu_fraction_is_a_share(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLLAMA_MIN_GPU_FRACTION", raising=False)
    assert Settings.from_env().min_gpu_fraction == 0.0  # unset: warn only
    monkeypatch.setenv("OLLAMA_MIN_GPU_FRACTION", "0.8")
    assert Settings.from_env().min_gpu_fraction == 0.8
    for bad, says in (("1.2", "give 0 to 1"), ("-0.5", "at least 0"), ("all", "not a number")):
        monkeypatch.setenv("OLLAMA_MIN_GPU_FRACTION", bad)
        with pytest.raises(ConfigError, match=f"OLLAMA_MIN_GPU_FRACTION.*{says}"):
            Settings.from_env()


# --- error translation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ollama.ResponseError("model 'x' not found", 404), ErrorCode.MODEL_NOT_FOUND),
        (ollama.ResponseError("invalid keep_alive", 400), ErrorCode.INVALID_INPUT),
        (ollama.ResponseError("server busy", 503), ErrorCode.OLLAMA_UNAVAILABLE),
        (ollama.ResponseError("runner died", 500), ErrorCode.OLLAMA_ERROR),
        # Ollama 0.12.10's 500s for a request that can never succeed (tests/test_conformance.py).
        (
            ollama.ResponseError('option "temperature" must be of type float32', 500),
            ErrorCode.INVALID_INPUT,
        ),
        (
            ollama.ResponseError("this model does not support embeddings", 500),
            ErrorCode.INVALID_INPUT,
        ),
        (
            ollama.ResponseError(
                "Failed to create new sequence: failed to process inputs: "
                "this model is missing data required for image input",
                500,
            ),
            ErrorCode.INVALID_INPUT,
        ),
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
        (ConnectionError("refused"), True),  # how the ollama client reports a connect error
        (httpx.ConnectError("refused"), True),
        (httpx.ConnectTimeout("no answer to the SYN"), True),
        (httpx.PoolTimeout("no free connection"), True),
        # Each of these may have started a generation: a retry would run it again.
        (ConnectionResetError("reset"), False),
        (httpx.ReadTimeout("slow"), False),
        (httpx.WriteTimeout("slow"), False),
        (httpx.RemoteProtocolError("dropped"), False),
        (httpx.ReadError("reset"), False),
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


async def test_a_read_timeout_is_not_retried() -> None:
    # It may have started a generation: sending it again would run it again from scratch.
    calls: list[str] = []

    def responder(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        raise httpx.ReadTimeout("slow generation", request=request)

    with pytest.raises(WorkerError) as caught:
        await client_with(responder).chat({"model": "m", "messages": [{"role": "user"}]})
    assert caught.value.code is ErrorCode.TIMEOUT
    assert calls == ["/api/chat"]


def ndjson(*lines: str) -> httpx.Response:
    body = "".join(line + "\n" for line in lines)
    return httpx.Response(200, text=body, headers={"content-type": "application/x-ndjson"})


DONE_LINE = json.dumps(
    {"model": "m", "created_at": "t", "message": {"role": "assistant", "content": ""}, "done": True}
)


@pytest.mark.parametrize(
    ("lines", "says"),
    [
        ((), "OLLAMA_ERROR: Ollama answered with a stream that ended before its first line"),
        (("<html>oops</html>",), "OLLAMA_ERROR: Ollama's reply could not be read: not JSON"),
        (("[1, 2]",), "OLLAMA_ERROR: Ollama's reply could not be read: a JSON list, not an object"),
        (('"text"',), "OLLAMA_ERROR: Ollama's reply could not be read: a JSON str"),
        (('{"done": "maybe"}',), "OLLAMA_ERROR: Ollama's reply could not be read: not the object"),
    ],
)
async def test_a_stream_ollama_cannot_have_meant_is_a_coded_error(
    lines: tuple[str, ...], says: str
) -> None:
    calls: list[str] = []

    def responder(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return ndjson(*lines)

    with pytest.raises(WorkerError) as caught:
        [c async for c in client_with(responder).chat_stream({"model": "m", "messages": []})]
    assert str(caught.value).startswith(says), caught.value
    assert calls == ["/api/chat"]  # the 200 may have started a generation: not sent again


async def test_blank_lines_in_a_stream_are_skipped() -> None:
    def responder(request: httpx.Request) -> httpx.Response:
        return ndjson("", DONE_LINE, "")

    chunks = [c async for c in client_with(responder).chat_stream({"model": "m", "messages": []})]
    assert [c.done for c in chunks] == [True]


async def test_an_html_error_page_is_one_short_line() -> None:
    page = "<html>\r\n<head><title>500 Internal Server Error</title></head>\r\n" + "x" * 2000

    def responder(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, text=page, headers={"content-type": "text/html"})

    for call in (
        lambda c: c.chat({"model": "m", "messages": []}),
        lambda c: c.raw_json("GET", "/v1/models"),
    ):
        with pytest.raises(WorkerError) as caught:
            await call(client_with(responder))
        message = str(caught.value)
        assert message.startswith("OLLAMA_ERROR: Ollama failed (HTTP 500): <html> <head><title>500")
        assert "\n" not in message
        assert "\r" not in message
        assert len(message) < 400


# --- the OpenAI route's streams and fields, against scripted Ollama answers -----------------

SAMPLING = {"temperature": 0.5, "top_p": 0.9}  # given, so no /api/show lookup is needed


def sse(*events: str) -> httpx.Response:
    body = "".join(f"data: {event}\n\n" for event in events)
    return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})


def chunk(content: str, model: str = "m", finish: str | None = None) -> str:
    delta = {"role": "assistant", "content": content}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [choice],
        },
        separators=(",", ":"),
    )


async def openai_items(responder: Responder, body: dict[str, object]) -> tuple[list[str], str]:
    """What run_openai yields for a streamed chat, and the coded error it ended with, if any."""
    items: list[str] = []
    settings = client_with(responder).settings
    try:
        async for item in run_openai(
            "/v1/chat/completions", {**SAMPLING, **body}, client_with(responder), settings
        ):
            items.append(item)
    except WorkerError as exc:
        return items, str(exc)
    return items, ""


STREAM = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


async def test_an_openai_body_over_the_input_limit_is_refused_before_ollama() -> None:
    sent: list[httpx.Request] = []
    client = client_with(lambda request: sent.append(request) or chat_reply())
    settings = dataclasses.replace(client.settings, max_input_chars=10)
    body = {"messages": [{"role": "user", "content": "x" * 6}], "prompt": "y" * 5}
    with pytest.raises(WorkerError) as caught:
        async for _ in run_openai("/v1/chat/completions", body, client, settings):
            pass
    assert str(caught.value) == (
        "INVALID_INPUT: message text is 11 characters; the limit is 10 (MAX_INPUT_CHARS)"
    )
    assert sent == []


async def test_a_whole_openai_stream_passes_through() -> None:
    events = (chunk("Hel"), chunk("lo"), chunk("", finish="stop"), "[DONE]")
    items, error = await openai_items(lambda request: sse(*events), STREAM)
    assert error == ""
    assert items == [f"data: {event}\n\n" for event in events]


async def test_an_openai_stream_with_ollamas_empty_failure_chunk_fails() -> None:
    # What Ollama 0.12.10 sends when the runner fails after the stream began.
    events = (chunk("Hel"), chunk("", model=""))
    items, error = await openai_items(lambda request: sse(*events), STREAM)
    assert items == [f"data: {chunk('Hel')}\n\n"]  # the empty chunk is not passed on
    assert error.startswith("OLLAMA_ERROR: Ollama's reply broke off mid-stream (an empty chunk")


async def test_an_openai_stream_without_done_fails() -> None:
    events = (chunk("Hel"), chunk("lo"))
    items, error = await openai_items(lambda request: sse(*events), STREAM)
    assert len(items) == 2
    assert error == (
        "OLLAMA_ERROR: Ollama's reply broke off mid-stream (no data: [DONE]); retry the job"
    )


async def test_max_completion_tokens_becomes_the_max_tokens_ollama_reads() -> None:
    sent: list[dict[str, object]] = []

    def responder(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json={"object": "chat.completion", "choices": []})

    await openai_items(responder, {"messages": [], "max_completion_tokens": 7})
    await openai_items(responder, {"messages": [], "max_completion_tokens": 7, "max_tokens": 3})
    assert sent[0]["max_tokens"] == 7
    assert "max_completion_tokens" not in sent[0]
    assert sent[1]["max_tokens"] == 3  # an explicit max_tokens wins


async def test_gpu_shares_come_from_api_ps() -> None:
    def responder(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/ps"
        models = [
            {"model": "a:latest", "name": "a:latest", "size": 1000, "size_vram": 1000},
            {"model": "b:latest", "name": "b:latest", "size": 1000, "size_vram": 333},
            {"model": "c:latest", "name": "c:latest", "size": 1000, "size_vram": 0},
        ]
        return httpx.Response(200, json={"models": models})

    shares = await client_with(responder).gpu_shares()
    assert shares == {"a:latest": 1.0, "b:latest": 0.333, "c:latest": 0.0}


def test_the_client_override_matches_the_ollama_python_it_was_written_against() -> None:
    """NativeClient replaces ollama-python's private `_request`; on another release of it the
    override may drift from what it replaces, so this fails until it is read again."""
    assert ollama_client.client_request_fingerprint() == ollama_client.CLIENT_REQUEST_FINGERPRINT
