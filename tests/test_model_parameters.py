"""The model's own sampling (its Modelfile PARAMETERs, read from Ollama) on every path."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from ollama_worker import ollama_client
from ollama_worker.config import get_settings
from ollama_worker.ollama_client import OllamaClient, parse_parameters
from rp_handler import handler
from standins.ollama import FakeOllama
from tests.harness import free_port
from tests.vapi_fixtures import check_response, load, webhook

MODEL = "tuned-voice:latest"
# As a Modelfile gives them to `ollama create` (api.CreateRequest.parameters).
PARAMETERS = {
    "num_ctx": 8192,
    "temperature": 0.6,
    "top_p": 0.9,
    "num_predict": 200,
    "seed": 1234567,
    "stop": ["<|start_header_id|>", "<|eot_id|>"],
}
# What Ollama 0.12.10's /api/show prints for them: fmt.Sprintf("%-*s %#v", 30, key, value) with
# every number a float64, so the seed comes out as 1.234567e+06; a stop line per item.
SHOW_TEXT = "\n".join(
    [
        f"{'num_ctx':<30} 8192",
        f"{'temperature':<30} 0.6",
        f"{'top_p':<30} 0.9",
        f"{'num_predict':<30} 200",
        f"{'seed':<30} 1.234567e+06",
        f"{'stop':<30} " + '"<|start_header_id|>"',
        f"{'stop':<30} " + '"<|eot_id|>"',
    ]
)


def test_parse_parameters_reads_ollamas_show_text() -> None:
    assert parse_parameters(SHOW_TEXT) == PARAMETERS
    odd = "\n".join(
        [
            f"{'stop':<30} " + r'"say \"bye\"\u00e9\x41\n"',
            f"{'penalize_newline':<30} true",
            f"{'temperature':<30} 1",
            f"{'min_p':<30} 1.5e-05",
            "",
        ]
    )
    assert parse_parameters(odd) == {
        "stop": ['say "bye"éA\n'],  # one stop line is still a list, as Ollama's option is
        "penalize_newline": True,
        "temperature": 1,
        "min_p": 1.5e-05,
    }
    assert parse_parameters("") == {}


@pytest.fixture
def tuned(fake: FakeOllama) -> Iterator[str]:
    """A model built in the stand-in with PARAMETERS, as `ollama create` builds one."""
    with httpx.Client(base_url=fake.url, timeout=10) as http:
        http.post(
            "/api/create",
            json={"model": MODEL, "from": "llama3.1:8b", "parameters": PARAMETERS, "stream": False},
        ).raise_for_status()
        ollama_client._parameters.clear()
        try:
            yield MODEL
        finally:
            http.request("DELETE", "/api/delete", json={"model": MODEL})
            ollama_client._parameters.clear()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, fake: FakeOllama, tuned: str) -> Iterator[None]:
    """The worker's settings: the stand-in's Ollama, the tuned model as the default."""
    for key in (
        "VAPI_WEBHOOK_SECRET",
        "VAPI_AUTH_PLAN",
        "VAPI_ASSISTANT_ID",
        "VAPI_ASSISTANT_JSON",
    ):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("OLLAMA_HOST", fake.host_port)
    monkeypatch.setenv("DEFAULT_MODEL", tuned)
    monkeypatch.setenv("RUNPOD_ENDPOINT_ID", "ep-params")
    monkeypatch.setenv("OLLAMA_RETRY_DEADLINE_S", "3")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


async def test_the_stand_in_shows_parameters_as_ollama_does(fake: FakeOllama, tuned: str) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as http:
        shown = (await http.post("/api/show", json={"model": tuned})).json()["parameters"]
    assert sorted(shown.splitlines()) == sorted(SHOW_TEXT.splitlines())


async def test_model_parameters_are_read_once_per_model(env: None, fake: FakeOllama) -> None:
    client = OllamaClient(get_settings())
    try:
        assert await client.model_parameters(MODEL) == PARAMETERS
        # Models are baked into the image: once read, Ollama is not asked again.
        async with httpx.AsyncClient(base_url=fake.url) as http:
            await http.request("DELETE", "/api/delete", json={"model": MODEL})
        assert await client.model_parameters(MODEL) == PARAMETERS
    finally:
        await client.aclose()


async def run(job_input: dict[str, Any]) -> list[Any]:
    """Every item the handler yields for one job."""
    return [item async for item in handler({"id": "t", "input": job_input})]


async def test_the_built_in_assistant_carries_the_models_sampling(env: None) -> None:
    [item] = await run(webhook(load("assistant_request")))
    check_response("assistant-request", item["response"])
    model = item["response"]["assistant"]["model"]
    assert model["model"] == MODEL
    assert model["temperature"] == 0.6
    assert model["maxTokens"] == 200


@pytest.fixture
async def silent_ollama() -> AsyncIterator[str]:
    """An Ollama that accepts connections and never answers."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(60)
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()


@pytest.mark.parametrize("ollama", ["silent", "down"])
async def test_assistant_request_stays_fast_when_ollama_does_not_answer(
    env: None, monkeypatch: pytest.MonkeyPatch, silent_ollama: str, ollama: str
) -> None:
    host = silent_ollama if ollama == "silent" else f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("OLLAMA_HOST", host)
    get_settings.cache_clear()
    started = time.monotonic()
    [item] = await run(webhook(load("assistant_request")))
    # VAPI allows 7.5 s in all; /api/show gets one short try.
    assert time.monotonic() - started < 2.0
    check_response("assistant-request", item["response"])
    model = item["response"]["assistant"]["model"]
    assert "temperature" not in model
    assert "maxTokens" not in model


def _sent(fake: FakeOllama) -> dict[str, Any]:
    """The body of the one generation request the stand-in received."""
    (body,) = fake.received()
    return body


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, {"temperature": 0.6, "top_p": 0.9}),
        ({"temperature": None}, {"temperature": 0.6, "top_p": 0.9}),
        ({"temperature": 0.2}, {"temperature": 0.2, "top_p": 0.9}),
        ({"temperature": 0, "top_p": 0.5}, {"temperature": 0, "top_p": 0.5}),
    ],
)
async def test_openai_requests_get_the_models_sampling_unless_they_name_theirs(
    env: None, fake: FakeOllama, given: dict[str, Any], expected: dict[str, Any]
) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], **given}
    items = await run({"openai_route": "/v1/chat/completions", "openai_input": body})
    assert "choices" in items[0], items
    sent = _sent(fake)
    assert {key: sent.get(key) for key in expected} == expected
    fake.reset_stats()
    prompt = {"model": MODEL, "prompt": "Hi", "stream": True, **given}
    items = await run({"openai_route": "/v1/completions", "openai_input": prompt})
    assert items[-1] == "data: [DONE]\n\n" or items[-1].endswith("data: [DONE]\n\n"), items
    assert {key: _sent(fake).get(key) for key in expected} == expected


async def test_custom_llm_requests_get_the_models_top_p_and_keep_their_temperature(
    env: None, fake: FakeOllama
) -> None:
    payload = {**load("custom_llm"), "model": MODEL}
    [item] = await run(webhook(payload))
    check_response("custom-llm", item["response"])
    sent = _sent(fake)
    assert (sent["temperature"], sent["top_p"]) == (payload["temperature"], 0.9)


async def test_a_model_without_parameters_leaves_the_request_alone(
    env: None, fake: FakeOllama
) -> None:
    body = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "Hi"}]}
    await run({"openai_route": "/v1/chat/completions", "openai_input": body})
    assert "temperature" not in _sent(fake)
    assert json.loads(json.dumps(_sent(fake)))["model"] == "llama3.1:8b"
