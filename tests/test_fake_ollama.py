"""Prove tests/fake_ollama.py and tests/bin/ollama are faithful, using real clients.

The official ``ollama`` and ``openai`` packages must parse every reply; the
timing, concurrency and fault knobs must behave as documented; the process and
CLI modes must start, persist and stop like the real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.machinery
import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import ollama
import openai
import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fake_ollama import (
    BUSY_ERROR,
    FakeOllama,
    coerce_config,
    config_from_env,
    normalize_model,
    parse_go_duration,
    parse_keep_alive,
    parse_ollama_host,
    tokenize,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
OLLAMA_BIN = REPO_ROOT / "tests" / "bin" / "ollama"
MODEL = "llama3.1:8b"
USER = [{"role": "user", "content": "hello there"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    """A fresh in-process fake per test."""
    with FakeOllama() as server:
        yield server


@pytest.fixture
def client(fake: FakeOllama) -> Iterator[ollama.Client]:
    """The official sync client pointed at the fake."""
    with ollama.Client(host=fake.url) as official:
        yield official


@pytest_asyncio.fixture
async def aclient(fake: FakeOllama) -> AsyncIterator[ollama.AsyncClient]:
    """The official async client pointed at the fake."""
    async with ollama.AsyncClient(host=fake.url) as official:
        yield official


@pytest.fixture
def oai(fake: FakeOllama) -> Iterator[openai.OpenAI]:
    """The openai client on the fake's /v1, without retries (faults must surface)."""
    with openai.OpenAI(base_url=fake.url + "/v1", api_key="x", max_retries=0) as api:
        yield api


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    """Block until something accepts connections on the port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {port}")


def port_open(port: int) -> bool:
    """Whether a TCP connect to the port succeeds now."""
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
    except OSError:
        return False
    return True


def child_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: venv first on PATH, no stray switches."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKE_OLLAMA_", "OLLAMA_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


@contextlib.contextmanager
def process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run a child process, killing it if the test leaves it running."""
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=sink, stderr=sink)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def stop_gracefully(proc: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> float:
    """Signal the process, assert it exits 0, return how long it took."""
    started = time.monotonic()
    proc.send_signal(signum)
    assert proc.wait(timeout=5) == 0
    return time.monotonic() - started


def drain(parts: Iterable[ollama.ChatResponse], seen: list[str]) -> None:
    """Consume a chat stream, keeping each chunk's content (until it breaks)."""
    for part in parts:
        seen.append(part.message.content or "")


def wait_for_text(path: Path, text: str, timeout: float = 10.0) -> None:
    """Block until a child's log file contains the text."""
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{text!r} never appeared in {path}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def cli() -> ModuleType:
    """tests/bin/ollama loaded as a module, to unit-test its parsers."""
    loader = importlib.machinery.SourceFileLoader("fake_ollama_cli", str(OLLAMA_BIN))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def chat_body(**extra: Any) -> dict[str, Any]:
    """A small /api/chat body."""
    return {"model": MODEL, "messages": USER, **extra}


# ---------------------------------------------------------------------------
# pure helpers


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ("127.0.0.1", 11434)),
        ("127.0.0.1:11434", ("127.0.0.1", 11434)),
        ("0.0.0.0:11434", ("0.0.0.0", 11434)),
        ("http://example:8080", ("example", 8080)),
        ("http://example", ("example", 80)),
        (":11500", ("", 11500)),
        ("somehost", ("somehost", 11434)),
    ],
)
def test_parse_ollama_host(cli: ModuleType, value: str | None, expected: tuple[str, int]) -> None:
    """OLLAMA_HOST forms resolve like Ollama's envconfig.Host, in server and CLI."""
    assert parse_ollama_host(value) == expected
    assert cli.parse_host(value) == expected


def test_cli_modelfile_parsing(cli: ModuleType) -> None:
    """The CLI builds /api/create bodies from Modelfiles like the real client."""
    body = cli.create_request(
        "va",
        'FROM llama3.1:8b\n# note\nparameter num_ctx 8192\nPARAMETER stop "a b"\n'
        "PARAMETER stop c\nTEMPLATE {{ .Prompt }}\nMESSAGE user hi\n"
        'SYSTEM """one\ntwo"""\n',
    )
    assert body == {
        "model": "va",
        "from": "llama3.1:8b",
        "parameters": {"num_ctx": 8192, "stop": ["a b", "c"]},
        "template": "{{ .Prompt }}",
        "messages": [{"role": "user", "content": "hi"}],
        "system": "one\ntwo",
    }
    for bad, message in (
        ("SYSTEM hi\n", "no FROM line"),
        ("FROM x\nPARAMETER bogus 1\n", "unknown parameter"),
        ("FROM x\nRUN ls\n", "command must be one of"),
        ("FROM ./model.gguf\n", "local file"),
    ):
        with pytest.raises(cli.CliError, match=message):
            cli.create_request("m", bad)


def test_durations_and_keep_alive() -> None:
    """Go durations and keep_alive decode like api.Duration."""
    assert parse_go_duration("1h30m") == 5400
    assert parse_go_duration("300ms") == pytest.approx(0.3)
    assert parse_go_duration("0") == 0
    assert parse_keep_alive("5m") == 300
    assert parse_keep_alive(-1) == math.inf
    assert parse_keep_alive("-1m") == math.inf
    assert parse_keep_alive(0) == 0
    with pytest.raises(ValueError, match="missing unit"):
        parse_keep_alive("-1")
    with pytest.raises(TypeError, match="Unsupported type"):
        parse_keep_alive(True)


def test_model_names_and_config_coercion() -> None:
    """Tags default to latest; env strings and bad values are handled."""
    assert normalize_model("voice-assistant") == "voice-assistant:latest"
    assert normalize_model("llama3.1:8b") == "llama3.1:8b"
    env = {
        "FAKE_OLLAMA_START_DELAY": "1.5",
        "FAKE_OLLAMA_CRASH_AFTER_S": "2",
        "FAKE_OLLAMA_NEVER_HEALTHY": "1",
        "FAKE_OLLAMA_PULL_FAIL": "bad:model, other",
        "FAKE_OLLAMA_FAIL_NEXT": '[{"status": 503}]',
        "OLLAMA_NUM_PARALLEL": "2",
    }
    assert coerce_config(config_from_env(env)) == {
        "start_delay_s": 1.5,
        "crash_after_s": 2.0,
        "never_healthy": True,
        "pull_fail": ["bad:model", "other"],
        "fail_next": [{"status": 503}],
        "num_parallel": 2,
    }
    for bad in ({"nope": 1}, {"fail_next": [{"drop": "sideways"}]}, {"num_parallel": 0}):
        with pytest.raises(ValueError, match=r"unknown|drop must|num_parallel"):
            coerce_config(bad)


@settings(max_examples=100, deadline=None)
@given(st.text())
def test_tokens_concatenate_to_the_text(text: str) -> None:
    """Streaming tokens always add up to the exact reply."""
    assert "".join(tokenize(text)) == text


# ---------------------------------------------------------------------------
# native API with the official client


def test_health_version_and_unknown_route(fake: FakeOllama) -> None:
    """/ and HEAD / say Ollama is running; /api/version; gin-style 404."""
    assert httpx.get(fake.url).text == "Ollama is running"
    assert httpx.head(fake.url).status_code == 200
    assert httpx.get(fake.url + "/api/version").json() == {"version": "0.12.6"}
    missing = httpx.get(fake.url + "/api/nothing")
    assert (missing.status_code, missing.text) == (404, "404 page not found")


def test_chat_non_stream(client: ollama.Client) -> None:
    """A non-stream chat is one object with the echo reply and ns metrics."""
    reply = client.chat(model=MODEL, messages=USER, stream=False)
    assert reply.message.role == "assistant"
    assert reply.message.content == "You said: hello there"
    assert (reply.done, reply.done_reason) == (True, "stop")
    assert reply.eval_count == 4
    assert reply.prompt_eval_count == 12
    for metric in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert getattr(reply, metric) > 0
    assert reply.created_at is not None
    assert reply.created_at.endswith("Z")


@pytest.mark.asyncio
async def test_chat_stream_async_client(aclient: ollama.AsyncClient) -> None:
    """Stream chunks parse with AsyncClient; only the last is done with metrics."""
    chunks = [
        part
        async for part in await aclient.chat(model="voice-assistant", messages=USER, stream=True)
    ]
    assert "".join(c.message.content or "" for c in chunks) == "You said: hello there"
    assert [c.done for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert all(c.done_reason is None for c in chunks[:-1])
    assert chunks[-1].done_reason == "stop"
    assert chunks[-1].eval_count == len(chunks) - 1


def test_stream_wire_format(fake: FakeOllama) -> None:
    """NDJSON: content type, newline-terminated objects, no blank lines."""
    reply = httpx.post(fake.url + "/api/chat", json=chat_body())
    assert reply.headers["content-type"].startswith("application/x-ndjson")
    assert reply.text.endswith("\n")
    lines = reply.text.split("\n")[:-1]
    assert all(line.strip() for line in lines)
    objects = [json.loads(line) for line in lines]
    assert set(objects[0]) == {"model", "created_at", "message", "done"}
    assert {"done_reason", "total_duration", "eval_count"} <= set(objects[-1])


def test_think_tools_and_format(client: ollama.Client) -> None:
    """think adds thinking; "call <tool>" yields tool_calls; format gives JSON."""
    thought = client.chat(model=MODEL, messages=USER, think=True)
    assert thought.message.thinking == "Thinking about: hello there"
    streamed = list(client.chat(model=MODEL, messages=USER, think="high", stream=True))
    thinking = [c.message.thinking for c in streamed if c.message.thinking]
    first_content = next(i for i, c in enumerate(streamed) if c.message.content)
    assert "".join(thinking) == "Thinking about: hello there"
    assert all(not c.message.content for c in streamed[: len(thinking)])
    assert first_content == len(thinking)

    ask = [{"role": "user", "content": 'please call get_weather {"city": "Paris"}'}]
    called = client.chat(model=MODEL, messages=ask, tools=[WEATHER_TOOL])
    assert called.message.content == ""
    assert called.message.tool_calls is not None
    call = called.message.tool_calls[0].function
    assert (call.name, dict(call.arguments)) == ("get_weather", {"city": "Paris"})
    bare = [{"role": "user", "content": "call get_weather now"}]
    assert client.chat(model=MODEL, messages=bare, tools=[WEATHER_TOOL]).message.tool_calls

    as_json = client.chat(model=MODEL, messages=USER, format="json")
    assert json.loads(as_json.message.content or "") == {"reply": "You said: hello there"}
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}, "n": {"type": "integer"}},
    }
    shaped = json.loads(
        client.chat(model=MODEL, messages=USER, format=schema).message.content or ""
    )
    assert shaped == {"answer": "You said: hello there", "n": 1}


def test_num_predict_stop_and_fixed_reply(fake: FakeOllama, client: ollama.Client) -> None:
    """num_predict caps tokens (length); stop cuts (stop); reply fixes the text."""
    capped = client.chat(model=MODEL, messages=USER, options={"num_predict": 2})
    assert (capped.message.content, capped.done_reason, capped.eval_count) == (
        "You said: ",
        "length",
        2,
    )
    cut = client.chat(model=MODEL, messages=USER, options={"stop": ["there"]})
    assert (cut.message.content, cut.done_reason) == ("You said: hello ", "stop")
    fake.configure(reply="Fixed answer here.")
    assert client.chat(model=MODEL, messages=USER).message.content == "Fixed answer here."
    assert client.chat(model=MODEL, messages=[]).done_reason == "load"


def test_generate_route(client: ollama.Client) -> None:
    """/api/generate streams ``response`` fields; empty prompt preloads."""
    whole = client.generate(model=MODEL, prompt="hi there")
    assert (whole.response, whole.done_reason) == ("You said: hi there", "stop")
    parts = list(client.generate(model=MODEL, prompt="hi there", stream=True, think=True))
    assert "".join(p.response for p in parts) == "You said: hi there"
    assert "".join(p.thinking or "" for p in parts) == "Thinking about: hi there"
    assert parts[-1].context
    assert client.generate(model=MODEL, prompt="").done_reason == "load"
    assert client.generate(model=MODEL, keep_alive=0).done_reason == "unload"


def test_list_show_delete(fake: FakeOllama, client: ollama.Client) -> None:
    """list/show/delete parse; unknown models are 404 everywhere."""
    names = [m.model for m in client.list().models]
    assert sorted(names) == ["llama3.1:8b", "voice-assistant:latest"]
    details = client.list().models[0].details
    assert details is not None
    assert details.format == "gguf"
    shown = client.show("voice-assistant")
    assert shown.capabilities == ["completion", "tools"]
    assert shown.modelfile
    assert shown.modelinfo is not None
    assert client.delete("voice-assistant").status == "success"
    assert fake.installed() == ["llama3.1:8b"]
    for call in (lambda: client.show("voice-assistant"), lambda: client.delete("ghost")):
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 404


def test_pull_and_create(fake: FakeOllama, client: ollama.Client) -> None:
    """pull streams progress and installs; create derives with system/params."""
    fake.configure(pull_fail=["bad:model"])
    statuses = [p.status for p in client.pull("qwen3:0.6b", stream=True)]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert any(s and s.startswith("pulling ") and s != "pulling manifest" for s in statuses)
    assert "qwen3:0.6b" in fake.installed()
    assert client.pull("qwen3:0.6b").status == "success"

    with pytest.raises(ollama.ResponseError) as midstream:
        list(client.pull("bad:model", stream=True))
    assert midstream.value.status_code == -1
    assert midstream.value.error == "pull model manifest: file does not exist"
    with pytest.raises(ollama.ResponseError) as whole:
        client.pull("bad:model")
    assert whole.value.status_code == 500

    progress = list(
        client.create(
            model="helper",
            from_="qwen3:0.6b",
            system="Be brief.",
            parameters={"num_predict": 3, "stop": ["<end>"]},
            stream=True,
        )
    )
    assert progress[0].status is not None
    assert progress[0].status.startswith("using existing layer sha256:")
    assert progress[-1].status == "success"
    shown = client.show("helper")
    assert shown.parameters is not None
    assert "num_predict" in shown.parameters
    assert "Be brief." in (shown.modelfile or "")
    assert client.chat(model="helper", messages=USER).message.content == "You said: hello "
    with pytest.raises(ollama.ResponseError) as missing:
        client.create(model="x", from_="ghost:1b")
    assert missing.value.status_code == 404


def test_embed(client: ollama.Client, oai: openai.OpenAI) -> None:
    """Embeddings are deterministic unit vectors on both APIs."""
    first = client.embed(model=MODEL, input=["a b", "c"])
    again = client.embed(model=MODEL, input="a b")
    assert len(first.embeddings) == 2
    assert len(first.embeddings[0]) == 8
    assert first.embeddings[0] == again.embeddings[0]
    assert math.isclose(sum(v * v for v in first.embeddings[0]), 1.0, abs_tol=1e-4)
    listed = oai.embeddings.create(model=MODEL, input="a b")
    assert list(listed.data[0].embedding) == list(first.embeddings[0])


def test_validation_errors(fake: FakeOllama, client: ollama.Client) -> None:
    """Bad bodies answer 400/404 with {"error": ...} like Ollama."""
    raw = httpx.post(fake.url + "/api/chat", content=b"{not json")
    assert raw.status_code == 400
    assert "error" in raw.json()
    no_model = httpx.post(fake.url + "/api/chat", json={"messages": USER})
    assert (no_model.status_code, no_model.json()) == (400, {"error": "model is required"})
    unknown = httpx.post(fake.url + "/api/chat", json=chat_body(model="ghost"))
    assert (unknown.status_code, unknown.json()) == (404, {"error": "model 'ghost' not found"})
    with pytest.raises(ollama.ResponseError) as bad_keep_alive:
        client.chat(model=MODEL, messages=USER, keep_alive="-1")
    assert bad_keep_alive.value.status_code == 400
    assert client.chat(model=MODEL, messages=USER, keep_alive="-1m").done


# ---------------------------------------------------------------------------
# loading, concurrency and timing


def test_preload_then_ps_and_unload(client: ollama.Client) -> None:
    """messages [] loads (done_reason load) and /api/ps lists it until unloaded."""
    assert client.ps().models == []
    loaded = client.chat(model="voice-assistant", messages=[])
    assert (loaded.done_reason, loaded.message.content) == ("load", "")
    [model] = client.ps().models
    assert model.name == "voice-assistant:latest"
    assert model.expires_at is not None
    remaining = (model.expires_at - datetime.now(UTC)).total_seconds()
    assert 250 < remaining <= 300
    client.chat(model="voice-assistant", messages=[], keep_alive=-1)
    forever = client.ps().models[0].expires_at
    assert forever is not None
    assert forever.year > 2200
    assert client.chat(model="voice-assistant", messages=[], keep_alive=0).done_reason == "unload"
    assert client.ps().models == []


@pytest.mark.asyncio
async def test_load_delay_paid_once(fake: FakeOllama, aclient: ollama.AsyncClient) -> None:
    """Concurrent first requests share one load; later ones do not wait."""
    fake.configure(load_delay_s=0.4)
    started = time.monotonic()
    replies = await asyncio.gather(*(aclient.chat(model=MODEL, messages=USER) for _ in range(3)))
    elapsed = time.monotonic() - started
    assert 0.35 < elapsed < 2.0
    assert all(r.load_duration and r.load_duration > 0.3e9 for r in replies)
    assert fake.stats()["loads"] == 1
    warm = await aclient.chat(model=MODEL, messages=USER)
    assert fake.stats()["loads"] == 1
    assert warm.load_duration is not None
    assert warm.load_duration < 0.2e9


@pytest.mark.asyncio
async def test_num_parallel_bounds_concurrency(
    fake: FakeOllama, aclient: ollama.AsyncClient
) -> None:
    """Only num_parallel requests generate at once; the rest queue."""
    fake.configure(num_parallel=2, token_delay_s=0.05)
    started = time.monotonic()
    await asyncio.gather(*(aclient.chat(model=MODEL, messages=USER) for _ in range(6)))
    assert fake.stats()["max_in_flight"] == 2
    assert time.monotonic() - started > 0.4  # three waves of ~0.15 s


@pytest.mark.asyncio
async def test_max_queue_answers_503(fake: FakeOllama) -> None:
    """Beyond num_parallel + max_queue outstanding, Ollama answers 503 busy."""
    fake.configure(num_parallel=1, max_queue=1, first_token_delay_s=0.3)
    async with httpx.AsyncClient(base_url=fake.url, timeout=10) as http:
        replies = await asyncio.gather(
            *(http.post("/api/chat", json=chat_body(stream=False)) for _ in range(3))
        )
    codes = sorted(r.status_code for r in replies)
    assert codes == [200, 200, 503]
    busy = next(r for r in replies if r.status_code == 503)
    assert busy.json() == {"error": BUSY_ERROR}


def test_stream_chunks_arrive_spread_over_time(fake: FakeOllama) -> None:
    """Chunks are flushed as produced: first after first_token_delay, then paced."""
    fake.configure(first_token_delay_s=0.15, token_delay_s=0.08)
    arrivals: list[float] = []
    started = time.monotonic()
    with httpx.stream("POST", fake.url + "/api/chat", json=chat_body(), timeout=10) as reply:
        for line in reply.iter_lines():
            if not json.loads(line)["done"]:
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 4
    # No chunk can come before its scheduled time, and the first must not wait
    # for the last (that would be a buffered reply).
    assert all(t > 0.14 + 0.08 * i for i, t in enumerate(arrivals)), arrivals
    assert arrivals[-1] - arrivals[0] > 0.12, arrivals
    started = time.monotonic()
    httpx.post(fake.url + "/api/chat", json=chat_body(stream=False), timeout=10)
    assert time.monotonic() - started > 0.38  # 0.15 + 3 * 0.08


def test_header_delay_and_client_disconnect(fake: FakeOllama) -> None:
    """header_delay_s holds the headers back; a client that leaves frees its slot."""
    fake.configure(header_delay_s=0.5)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(fake.url + "/api/chat", json=chat_body(), timeout=httpx.Timeout(5, read=0.1))
    deadline = time.monotonic() + 3
    while fake.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.stats()["in_flight"] == 0


# ---------------------------------------------------------------------------
# fault injection


@pytest.mark.parametrize("status", [400, 500, 502, 503, 504])
def test_status_faults(fake: FakeOllama, client: ollama.Client, status: int) -> None:
    """A queued status fault answers that status with a JSON error, once."""
    fake.configure(fail_next=[{"status": status}])
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model=MODEL, messages=USER)
    assert err.value.status_code == status
    assert err.value.error
    if status == 503:
        assert err.value.error == BUSY_ERROR
    assert client.chat(model=MODEL, messages=USER).done
    assert fake.stats()["faults_served"] == 1


def test_midstream_error_fault(fake: FakeOllama, client: ollama.Client) -> None:
    """Mid-stream error: N tokens then an error line (status -1); non-stream 500."""
    fake.configure(
        fail_next=[
            {"midstream_error": "runner crashed", "after_tokens": 2},
            {"midstream_error": "runner crashed", "after_tokens": 2},
        ]
    )
    seen: list[str] = []
    with pytest.raises(ollama.ResponseError) as err:
        drain(client.chat(model=MODEL, messages=USER, stream=True), seen)
    assert (err.value.status_code, err.value.error) == (-1, "runner crashed")
    assert seen == ["You ", "said: "]
    with pytest.raises(ollama.ResponseError) as whole:
        client.chat(model=MODEL, messages=USER)
    assert (whole.value.status_code, whole.value.error) == (500, "runner crashed")


def test_drop_faults(fake: FakeOllama, client: ollama.Client) -> None:
    """Dropped connections surface as protocol errors; mid-stream keeps N chunks."""
    fake.configure(
        fail_next=[{"drop": "before_headers"}, {"drop": "mid_stream", "after_tokens": 1}]
    )
    with pytest.raises(httpx.RemoteProtocolError):
        client.chat(model=MODEL, messages=USER)
    seen: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        drain(client.chat(model=MODEL, messages=USER, stream=True), seen)
    assert seen == ["You "]
    assert fake.stats()["faults_served"] == 2


def test_delay_fault_and_fail_rate(fake: FakeOllama) -> None:
    """delay_s slows one request; fail_rate faults are reproducible per seed."""
    fake.configure(fail_next=[{"delay_s": 0.3}])
    slow = httpx.post(fake.url + "/api/chat", json=chat_body(stream=False)).json()
    assert slow["total_duration"] >= 0.3e9
    quick = httpx.post(fake.url + "/api/chat", json=chat_body(stream=False)).json()
    assert quick["total_duration"] < 0.2e9

    def codes() -> list[int]:
        with httpx.Client(base_url=fake.url) as http:
            return [http.post("/api/chat", json=chat_body()).status_code for _ in range(16)]

    fake.configure(fail_rate=0.5, fail_status=502, seed=7)
    first = codes()
    fake.reset_stats()
    assert codes() == first
    assert set(first) == {200, 502}


def test_faults_on_openai_routes(fake: FakeOllama, oai: openai.OpenAI) -> None:
    """The same faults reach /v1, in OpenAI error form (SSE for mid-stream)."""
    fake.configure(fail_next=[{"status": 503}, {"midstream_error": "oops", "after_tokens": 1}])
    with pytest.raises(openai.InternalServerError) as busy:
        oai.chat.completions.create(model=MODEL, messages=USER)
    assert busy.value.status_code == 503
    stream = oai.chat.completions.create(
        model=MODEL,
        messages=USER,
        stream=True,
    )
    with pytest.raises(openai.APIError, match="oops"):
        list(stream)


# ---------------------------------------------------------------------------
# OpenAI compatibility with the openai package


def test_openai_chat(oai: openai.OpenAI) -> None:
    """chat.completions parses, stream and not, with usage and max_tokens."""
    whole = oai.chat.completions.create(model=MODEL, messages=USER)
    assert whole.object == "chat.completion"
    assert whole.id.startswith("chatcmpl-")
    assert whole.choices[0].message.content == "You said: hello there"
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 4

    chunks = list(
        oai.chat.completions.create(
            model=MODEL,
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=3,
            temperature=0.1,
            seed=1,
            extra_body={"unknown_extra": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: hello "
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length"
    assert all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3


def test_openai_tool_calls(fake: FakeOllama, oai: openai.OpenAI) -> None:
    """Tool calls come back as tool_calls with JSON-string arguments."""
    ask = [{"role": "user", "content": 'call get_weather {"city": "Oslo"}'}]
    whole = oai.chat.completions.create(model=MODEL, messages=ask, tools=[WEATHER_TOOL])
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    chunks = list(
        oai.chat.completions.create(
            model=MODEL,
            messages=ask,
            tools=[WEATHER_TOOL],
            stream=True,
        )
    )
    deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices[0].delta.tool_calls]
    assert deltas[0][0].function is not None
    assert deltas[0][0].function.name == "get_weather"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert fake.stats()["chat_requests"][-1]["tools"][0]["function"]["name"] == "get_weather"


def test_openai_completions_models_and_not_found(oai: openai.OpenAI) -> None:
    """completions (+SSE), models and NotFoundError for an unknown model."""
    done = oai.completions.create(model=MODEL, prompt="hey you")
    assert (done.object, done.choices[0].text) == ("text_completion", "You said: hey you")
    streamed = list(oai.completions.create(model=MODEL, prompt="hey you", stream=True))
    assert "".join(c.choices[0].text for c in streamed) == "You said: hey you"
    assert streamed[-1].choices[0].finish_reason == "stop"
    ids = sorted(m.id for m in oai.models.list())
    assert ids == ["llama3.1:8b", "voice-assistant:latest"]
    assert oai.models.retrieve(MODEL).owned_by == "library"
    with pytest.raises(openai.NotFoundError) as err:
        oai.chat.completions.create(model="ghost", messages=USER)
    assert "ghost" in str(err.value)


def test_openai_error_shape(fake: FakeOllama) -> None:
    """/v1 errors use {"error": {"message", "type", "param", "code"}}."""
    empty = httpx.post(fake.url + "/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert empty.status_code == 400
    assert empty.json()["error"] == {
        "message": "[] is too short - 'messages'",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    unknown = httpx.post(
        fake.url + "/v1/chat/completions", json={"model": "ghost", "messages": USER}
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == 'model "ghost" not found, try pulling it first'


# ---------------------------------------------------------------------------
# control endpoints and start-up


def test_control_endpoints_over_http(fake: FakeOllama) -> None:
    """/_fake/config changes the live config; stats record bodies; reset clears."""
    changed = httpx.post(
        fake.url + "/_fake/config", json={"reply": "From HTTP.", "fail_next": [{"status": 500}]}
    ).json()
    assert changed["reply"] == "From HTTP."
    assert changed["num_parallel"] == 4
    assert httpx.post(fake.url + "/_fake/config", json={"bogus": 1}).status_code == 400
    assert httpx.post(fake.url + "/api/chat", json=chat_body()).status_code == 500
    body = chat_body(stream=False, options={"temperature": 0.3})
    assert httpx.post(fake.url + "/api/chat", json=body).json()["message"]["content"] == (
        "From HTTP."
    )
    stats = httpx.get(fake.url + "/_fake/stats").json()
    assert stats["requests"]["POST /api/chat"] == 2
    assert stats["chat_requests"][-1]["options"] == {"temperature": 0.3}
    assert stats["faults_served"] == 1
    fake.configure(fail_next=[{"status": 503}])
    reset = httpx.post(fake.url + "/_fake/reset").json()
    assert (reset["requests"], reset["chat_requests"], reset["faults_served"]) == ({}, [], 0)
    assert fake.config().fail_next == []
    assert fake.installed() == ["llama3.1:8b", "voice-assistant:latest"]


def test_start_delay_refuses_then_accepts() -> None:
    """While start_delay_s runs, connections are refused; then it serves."""
    port = free_port()
    server = FakeOllama(port=port, start_delay_s=0.5).start(wait=False)
    try:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/")
        server.wait_ready()
        assert httpx.get(server.url).text == "Ollama is running"
    finally:
        server.stop()
    assert not port_open(port)


def test_process_mode_and_sigterm(tmp_path: Path) -> None:
    """python -m tests.fake_ollama serves, takes HTTP control, exits 0 on SIGTERM."""
    port = free_port()
    cmd = [sys.executable, "-m", "tests.fake_ollama", "--port", str(port), "--reply", "Hi."]
    env = child_env(OLLAMA_HOST="127.0.0.1:1", FAKE_OLLAMA_NUM_PARALLEL="3")
    with process(cmd, env, tmp_path / "log") as proc:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/_fake/config").json()["num_parallel"] == 3
        with ollama.Client(host=url) as api:
            assert api.chat(model=MODEL, messages=USER).message.content == "Hi."
        httpx.post(url + "/_fake/config", json={"fail_next": [{"status": 502}]})
        assert httpx.post(url + "/api/chat", json=chat_body()).status_code == 502
        httpx.post(url + "/_fake/config", json={"token_delay_s": 0.2})
        with httpx.stream("POST", url + "/api/chat", json=chat_body()) as open_stream:
            next(open_stream.iter_lines())  # a reply is mid-stream during SIGTERM
            assert stop_gracefully(proc) < 1.0
    assert "Listening on 127.0.0.1:" in (tmp_path / "log").read_text()


def test_process_failure_switches(tmp_path: Path) -> None:
    """never_healthy, crash_on_start, start delay and crash_after_s via env vars."""
    module = [sys.executable, "-m", "tests.fake_ollama"]
    sick_port, dying_port = free_port(), free_port()
    sick_env = child_env(OLLAMA_HOST=f"127.0.0.1:{sick_port}", FAKE_OLLAMA_NEVER_HEALTHY="1")
    dying_env = child_env(
        OLLAMA_HOST=f":{dying_port}",
        # Counted from exec: longer than the stand-in's own imports (up to ~0.7 s).
        FAKE_OLLAMA_START_DELAY="1.5",
        FAKE_OLLAMA_CRASH_AFTER_S="0.3",
    )
    crash_env = child_env(FAKE_OLLAMA_CRASH_ON_START="1")
    # The three children start in parallel to keep the test short.
    with (
        process(module, sick_env, tmp_path / "sick") as sick,
        process(module, dying_env, tmp_path / "dies") as dying,
        process(module, crash_env, tmp_path / "crash") as crashed,
    ):
        wait_for_text(tmp_path / "dies", "starting fake ollama")
        assert not port_open(dying_port)
        wait_for_port(dying_port)
        assert dying.wait(timeout=5) == 1
        assert crashed.wait(timeout=5) == 1

        wait_for_port(sick_port)
        url = f"http://127.0.0.1:{sick_port}"
        assert httpx.get(url).status_code == 500
        assert httpx.get(url + "/api/version").status_code == 500
        assert httpx.get(url + "/api/tags").status_code == 200
        stop_gracefully(sick, signal.SIGINT)
    assert "crashing" in (tmp_path / "dies").read_text()


# ---------------------------------------------------------------------------
# the CLI stand-in


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run tests/bin/ollama as an executable found on PATH-style invocation."""
    return subprocess.run(
        [str(OLLAMA_BIN), *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=20, check=False,
    )  # fmt: skip


def test_cli_end_to_end(tmp_path: Path) -> None:
    """serve/pull/create/list work, failures exit 1, models survive a restart."""
    port = free_port()
    calls = tmp_path / "calls.log"
    env = child_env(
        OLLAMA_HOST=f"127.0.0.1:{port}",
        OLLAMA_MODELS=str(tmp_path / "models"),
        FAKE_OLLAMA_CALL_LOG=str(calls),
        FAKE_OLLAMA_PULL_FAIL="bad:model",
    )
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(
        "# voice assistant\nFROM llama3.1:8b\nPARAMETER temperature 0.4\n"
        'PARAMETER stop "<|eot_id|>"\nPARAMETER stop User:\n'
        'SYSTEM """You are a voice assistant.\nKeep it short."""\n'
    )
    (tmp_path / "Broken").write_text("FROM ghost:1b\n")

    assert "could not connect" in run_cli(env, "pull", MODEL).stderr
    with process([str(OLLAMA_BIN), "serve"], env, tmp_path / "serve1") as server:
        wait_for_port(port)
        assert run_cli(env, "list").stdout.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
        pulled = run_cli(env, "pull", MODEL)
        assert pulled.returncode == 0, pulled.stderr
        assert "success" in pulled.stderr
        failed = run_cli(env, "pull", "bad:model")
        assert failed.returncode == 1
        assert "Error: pull model manifest: file does not exist" in failed.stderr
        created = run_cli(env, "create", "voice-assistant", "-f", str(modelfile))
        assert created.returncode == 0, created.stderr
        assert run_cli(env, "create", "x", "--file", str(tmp_path / "Broken")).returncode == 1
        shown = httpx.post(
            f"http://127.0.0.1:{port}/api/show", json={"model": "voice-assistant"}
        ).json()
        assert shown["system"] == "You are a voice assistant.\nKeep it short."
        assert '"<|eot_id|>"' in shown["parameters"]
        assert "User:" in shown["parameters"]
        assert stop_gracefully(server) < 1.0
    assert 'msg="Listening on 127.0.0.1:' in (tmp_path / "serve1").read_text()

    with process([str(OLLAMA_BIN), "serve"], env, tmp_path / "serve2") as server:
        wait_for_port(port)
        table = run_cli(env, "list").stdout.splitlines()
        assert table[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
        assert sorted(row.split()[0] for row in table[1:]) == [MODEL, "voice-assistant:latest"]
        version = run_cli(env, "--version")
        assert version.stdout.strip() == "ollama version is 0.12.6"
        stop_gracefully(server)

    logged = calls.read_text().splitlines()
    assert "ollama pull llama3.1:8b" in logged
    assert f"ollama create voice-assistant -f {modelfile}" in logged
    assert logged.count("ollama serve") == 2


def test_cli_runs_as_python_script_from_elsewhere(tmp_path: Path) -> None:
    """``python tests/bin/ollama`` finds the repo from any working directory."""
    result = subprocess.run(
        [sys.executable, str(OLLAMA_BIN), "-v"],
        env=child_env(OLLAMA_HOST=f"127.0.0.1:{free_port()}"),
        cwd=tmp_path, capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert result.returncode == 0
    assert "Warning: client version is 0.12.6" in result.stdout


def test_stop_leaves_no_thread_behind() -> None:
    before = set(threading.enumerate())
    with FakeOllama() as fake:
        assert httpx.get(fake.url).status_code == 200
        started = set(threading.enumerate()) - before
    assert started, "the stand-in serves from a thread of its own"
    assert not [thread for thread in started if thread.is_alive()]


def test_process_age_counts_from_exec() -> None:
    # Process mode subtracts this from start_delay_s, so a stand-in listens start_delay_s
    # after exec however long its own imports took, as a real `ollama serve` would.
    code = (
        "import time; time.sleep(0.5); "
        "from tests.fake_ollama import seconds_since_process_start as age; print(age())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert 0.5 <= float(done.stdout) < 10
