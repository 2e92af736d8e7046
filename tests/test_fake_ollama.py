"""Prove standins/ollama and tests/bin/ollama are faithful, using real clients.

The official ``ollama`` and ``openai`` packages must parse every reply; the
timing, concurrency and fault knobs must behave as documented; the process and
CLI modes must start, persist and stop like the real server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
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

from scripts.real_ollama import pinned_version
from standins.ollama import RemoteOllama
from standins.ollama.faults import coerce_config, config_from_env
from standins.ollama.host import parse_ollama_host
from standins.ollama.models import normalize_model
from standins.ollama.replies import tokenize
from standins.ollama.server import FakeOllama
from standins.ollama.wire import BUSY_ERROR, VERSION, parse_go_duration, parse_keep_alive

REPO_ROOT = Path(__file__).resolve().parents[1]
OLLAMA_BIN = REPO_ROOT / "tests" / "bin" / "ollama"
MODEL = "llama3.1:8b"
THINKER = "qwen3:0.6b"  # has the thinking capability, but takes no think level
HARMONY = "gpt-oss:20b"  # thinks, and takes a level ("low", "medium", "high")
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
    """The body of tests/bin/ollama, to unit-test its parsers."""
    return importlib.import_module("standins.ollama.cli")


def chat_body(**extra: Any) -> dict[str, Any]:
    """A small /api/chat body."""
    return {"model": MODEL, "messages": USER, **extra}


def pinned_ollama_version() -> str:
    """The Ollama release the Dockerfile ships (its ARG OLLAMA_VERSION default)."""
    return pinned_version()


def install_thinkers(fake: FakeOllama) -> None:
    """Add the two thinking-capable models to the default ones."""
    fake.configure(models=[*fake.installed(), THINKER, HARMONY])


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
def test_parse_ollama_host(value: str | None, expected: tuple[str, int]) -> None:
    """OLLAMA_HOST forms resolve like Ollama's envconfig.Host (server and CLI share the rule)."""
    assert parse_ollama_host(value) == expected


def test_cli_client_commands_import_no_server() -> None:
    """The stand-in CLI's client commands (pull, list, ...) start without aiohttp."""
    code = "import sys, standins.ollama.cli; sys.exit('aiohttp' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, timeout=30, check=False)
    assert done.returncode == 0


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
    """/ and HEAD / say Ollama is running; /api/version reports the release the image pins;
    an unknown route is gin's plain-text 404 (0.12.10 server/routes.go GenerateRoutes)."""
    assert httpx.get(fake.url).text == "Ollama is running"
    assert httpx.head(fake.url).status_code == 200
    assert VERSION == pinned_ollama_version() == "0.12.10"
    assert httpx.get(fake.url + "/api/version").json() == {"version": "0.12.10"}
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


def test_think_tools_and_format(fake: FakeOllama, client: ollama.Client) -> None:
    """think adds thinking; "call <tool>" yields tool_calls; format gives JSON."""
    install_thinkers(fake)
    thought = client.chat(model=THINKER, messages=USER, think=True)
    assert thought.message.thinking == "Thinking about: hello there"
    streamed = list(client.chat(model=HARMONY, messages=USER, think="high", stream=True))
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


def test_generate_route(fake: FakeOllama, client: ollama.Client) -> None:
    """/api/generate streams ``response`` fields; empty prompt preloads."""
    install_thinkers(fake)
    whole = client.generate(model=MODEL, prompt="hi there")
    assert (whole.response, whole.done_reason) == ("You said: hi there", "stop")
    parts = list(client.generate(model=THINKER, prompt="hi there", stream=True, think=True))
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
    assert fake.loads() == 1
    warm = await aclient.chat(model=MODEL, messages=USER)
    assert fake.loads() == 1
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
    assert fake.peak_in_flight() == 2
    assert time.monotonic() - started > 0.4  # three waves of ~0.15 s


@pytest.mark.asyncio
async def test_max_queue_answers_503_only_while_the_model_loads(fake: FakeOllama) -> None:
    """While a model loads, its requests wait in the scheduler's pending queue, max_queue
    long, and the next one is 503 ``server busy`` (0.12.10 server/sched.go GetRunner,
    ErrMaxQueue; server/routes.go handleScheduleError)."""
    fake.configure(num_parallel=1, max_queue=1, load_delay_s=0.3)
    async with httpx.AsyncClient(base_url=fake.url, timeout=10) as http:
        replies = await asyncio.gather(
            *(http.post("/api/chat", json=chat_body(stream=False)) for _ in range(3))
        )
        codes = sorted(r.status_code for r in replies)
        assert codes == [200, 200, 503]
        busy = next(r for r in replies if r.status_code == 503)
        assert busy.json() == {"error": BUSY_ERROR}
        # The same queue on /v1, in its error form (writeError: api_error whatever the status).
        await http.post("/api/chat", json={"model": MODEL, "keep_alive": 0})
        body = {"model": MODEL, "messages": USER}
        replies = await asyncio.gather(
            *(http.post("/v1/chat/completions", json=body) for _ in range(3))
        )
    codes = sorted(r.status_code for r in replies)
    assert codes == [200, 200, 503]
    busy = next(r for r in replies if r.status_code == 503)
    assert busy.json()["error"] == {
        "message": BUSY_ERROR,
        "type": "api_error",
        "param": None,
        "code": None,
    }


@pytest.mark.asyncio
async def test_a_loaded_models_requests_queue_without_limit(fake: FakeOllama) -> None:
    """Once loaded, a model's requests take its runner at once and wait for one of its
    num_parallel slots however many there are: never a 503 (0.12.10 server/sched.go
    GetRunner -> useLoadedRunner; the runner's semaphore has no queue limit)."""
    fake.configure(num_parallel=1, max_queue=1, token_delay_s=0.02)
    async with httpx.AsyncClient(base_url=fake.url, timeout=10) as http:
        assert (await http.post("/api/chat", json={"model": MODEL})).status_code == 200
        replies = await asyncio.gather(
            *(http.post("/api/chat", json=chat_body(stream=False)) for _ in range(6))
        )
    assert [r.status_code for r in replies] == [200] * 6
    stats = fake.stats()
    assert stats["max_in_flight"] == 1  # they really queued, five of them past max_queue
    assert stats["loads"] == 1


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


def test_non_stream_generation_stops_when_the_client_leaves(fake: FakeOllama) -> None:
    """A non-stream reply is generated under the request's context, which Go's server
    cancels when the client disconnects: generation stops at once and frees its slot
    (0.12.10 server/routes.go ChatHandler, r.Completion(ctx) with c.Request.Context())."""
    fake.configure(token_delay_s=0.2)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            fake.url + "/api/chat",
            json=chat_body(stream=False),
            timeout=httpx.Timeout(5, read=0.3),
        )
    while fake.in_flight() and time.monotonic() - started < 3:
        time.sleep(0.01)
    # Generating all four tokens would take 0.8 s; stopping takes well under that.
    assert time.monotonic() - started < 0.7
    assert (fake.in_flight(), fake.cancelled()) == (0, 1)


def test_header_delay_and_client_disconnect(fake: FakeOllama) -> None:
    """header_delay_s holds the headers back; a client that leaves frees its slot."""
    fake.configure(header_delay_s=0.5)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(fake.url + "/api/chat", json=chat_body(), timeout=httpx.Timeout(5, read=0.1))
    deadline = time.monotonic() + 3
    while fake.in_flight() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.in_flight() == 0


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
    assert fake.faults_served() == 1


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
    assert fake.faults_served() == 2


def test_wire_faults_of_a_proxied_or_dying_ollama(fake: FakeOllama) -> None:
    """empty_stream: 200 and no line (a non-stream reply is the zero ChatResponse);
    bad_line: a line that is not JSON after N chunks; html_error: a proxy's HTML page."""
    fake.configure(
        fail_next=[
            {"empty_stream": True},
            {"empty_stream": True},
            {"bad_line": "<!-- hi -->", "after_tokens": 1},
            {"html_error": 502},
        ]
    )
    with httpx.Client(base_url=fake.url) as http:
        empty = http.post("/api/chat", json=chat_body())
        assert (empty.status_code, empty.text) == (200, "")
        zero = http.post("/api/chat", json=chat_body(stream=False)).json()
        assert (zero["done"], zero["model"], zero["message"]["content"]) == (False, "", "")
        lines = http.post("/api/chat", json=chat_body()).text.splitlines()
        assert lines[1] == "<!-- hi -->"
        assert json.loads(lines[0])["message"]["content"] == "You "
        assert json.loads(lines[-1])["done"] is True
        page = http.post("/api/chat", json=chat_body())
    assert page.status_code == 502
    assert page.headers["content-type"].startswith("text/html")
    assert "<title>502 Bad Gateway</title>" in page.text
    assert page.text.count("\n") > 3
    assert fake.faults_served() == 4


def test_final_text_fault(fake: FakeOllama, client: ollama.Client) -> None:
    """final_text N: the last N content tokens arrive in the done chunk, as Ollama's tool
    parser holds text back for it; a non-stream reply is whole as ever."""
    fake.configure(fail_next=[{"final_text": 2}])
    chunks = list(client.chat(model=MODEL, messages=USER, stream=True))
    assert chunks[-1].done
    assert chunks[-1].message.content
    assert (
        "".join(c.message.content or "" for c in chunks)
        == client.chat(model=MODEL, messages=USER).message.content
    )


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
    """Status faults reach /v1 in OpenAI error form."""
    fake.configure(fail_next=[{"status": 503}])
    with pytest.raises(openai.InternalServerError) as busy:
        oai.chat.completions.create(model=MODEL, messages=USER)
    assert busy.value.status_code == 503
    assert oai.chat.completions.create(model=MODEL, messages=USER).choices


def sse_events(text: str) -> list[str]:
    """The data of each server-sent event in a body."""
    return [event.removeprefix("data: ") for event in text.split("\n\n") if event]


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/chat/completions", {"messages": USER}),
        ("/v1/completions", {"prompt": "hello there"}),
    ],
)
def test_openai_stream_failure_is_an_empty_chunk_and_no_done(
    fake: FakeOllama, route: str, body: dict[str, Any]
) -> None:
    """An error after a /v1 stream began is no error event: the handler's error line reaches
    ChatWriter/CompleteWriter.writeResponse (the status is already 200), decodes as an empty
    response and goes out as one chunk with ``"model": ""``; then the stream ends with no
    finish_reason and no ``[DONE]`` (0.12.10 middleware/openai.go writeResponse,
    server/routes.go streamResponse)."""
    fake.configure(fail_next=[{"midstream_error": "CUDA error", "after_tokens": 2}])
    reply = httpx.post(fake.url + route, json={"model": MODEL, "stream": True, **body})
    assert reply.status_code == 200
    assert "CUDA error" not in reply.text  # Ollama loses the message
    *tokens, last = [json.loads(event) for event in sse_events(reply.text)]
    assert [t["model"] for t in tokens] == [MODEL, MODEL]
    assert last["model"] == ""
    assert last["id"] == tokens[0]["id"]
    [choice] = last["choices"]
    assert choice["finish_reason"] is None
    assert choice.get("delta", {}).get("content", "") == choice.get("text", "") == ""
    assert "[DONE]" not in reply.text
    whole = httpx.post(fake.url + route, json={"model": MODEL, "stream": True, **body})
    assert sse_events(whole.text)[-1] == "[DONE]"  # the fault was one request's only


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
    assert fake.received()[-1]["tools"][0]["function"]["name"] == "get_weather"


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
    """/v1 errors are {"error": {"message", "type", "param", "code"}}: the middleware's own
    400s typed by openai.NewError (invalid_request_error), and every error of the handler
    behind it ``api_error`` whatever its status, as BaseWriter.writeError wraps it in
    NewError(500, ...); a missing model is ChatHandler's ``model '<name>' not found``
    (0.12.10 middleware/openai.go, openai/openai.go NewError, server/routes.go)."""
    empty = httpx.post(fake.url + "/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert empty.status_code == 400
    assert empty.json()["error"] == {
        "message": "[] is too short - 'messages'",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    for method, path, body in (
        ("POST", "/v1/chat/completions", {"model": "ghost", "messages": USER}),
        ("POST", "/v1/completions", {"model": "ghost", "prompt": "hi"}),
        ("POST", "/v1/embeddings", {"model": "ghost", "input": "hi"}),
        ("GET", "/v1/models/ghost", None),
    ):
        unknown = httpx.request(method, fake.url + path, json=body)
        assert unknown.status_code == 404, path
        assert unknown.json()["error"] == {
            "message": "model 'ghost' not found",
            "type": "api_error",
            "param": None,
            "code": None,
        }, path
    thinking = {"model": MODEL, "messages": USER, "reasoning_effort": "low"}
    refused = httpx.post(fake.url + "/v1/chat/completions", json=thinking)
    assert refused.status_code == 400
    assert refused.json()["error"]["type"] == "api_error"
    native = httpx.post(fake.url + "/api/chat", json=chat_body(model="ghost"))
    assert native.json() == {"error": "model 'ghost' not found"}


def test_openai_ignores_what_ollama_does_not_read(fake: FakeOllama, oai: openai.OpenAI) -> None:
    """ChatCompletionRequest has no max_completion_tokens, n, tool_choice,
    parallel_tool_calls or logprobs: they are ignored, and only max_tokens sets num_predict
    (0.12.10 openai/openai.go ChatCompletionRequest, FromChatRequest)."""
    whole = oai.chat.completions.create(
        model=MODEL,
        messages=USER,
        max_completion_tokens=1,
        n=3,
        logprobs=True,
        top_logprobs=2,
    )
    [choice] = whole.choices
    assert (choice.message.content, choice.finish_reason) == ("You said: hello there", "stop")
    assert choice.logprobs is None
    assert "num_predict" not in fake.received()[-1].get("options", {})
    capped = oai.chat.completions.create(model=MODEL, messages=USER, max_tokens=1)
    assert (capped.choices[0].message.content, capped.choices[0].finish_reason) == (
        "You ",
        "length",
    )
    ask = [{"role": "user", "content": 'call get_weather {"city": "Rome"}'}]
    called = oai.chat.completions.create(
        model=MODEL,
        messages=ask,
        tools=[WEATHER_TOOL],
        tool_choice="none",
        parallel_tool_calls=False,
    )
    assert called.choices[0].finish_reason == "tool_calls"  # "none" was not honoured


@pytest.mark.parametrize(
    ("message", "error", "kind"),
    [
        ({"role": "user"}, "invalid message content type: <nil>", "invalid_request_error"),
        (
            {"role": "user", "content": None},
            "invalid message content type: <nil>",
            "invalid_request_error",
        ),
        ({"role": "user", "content": 7}, "invalid message content type: float64", None),
        (
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]},
            "invalid message format",
            None,
        ),
        ({"role": "user", "content": ["hi"]}, "invalid message format", None),
        (
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
            },
            "invalid image input",
            None,
        ),
        (
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}}
                ],
            },
            "json: cannot unmarshal object into Go struct field "
            ".messages.tool_calls.function.arguments of type string",
            None,
        ),
        (
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{"}}
                ],
            },
            "invalid tool call arguments",
            None,
        ),
    ],
)
def test_openai_rejects_the_messages_ollama_rejects(
    fake: FakeOllama, message: dict[str, Any], error: str, kind: str | None
) -> None:
    """Null content without tool_calls, arguments that are not a JSON string, and content
    parts other than text and image_url are 400s of the /v1 middleware (0.12.10
    middleware/openai.go ChatMiddleware, openai/openai.go FromChatRequest)."""
    body = {"model": MODEL, "messages": [*USER, message, *USER]}
    reply = httpx.post(fake.url + "/v1/chat/completions", json=body)
    assert reply.status_code == 400
    assert reply.json()["error"]["message"] == error
    assert reply.json()["error"]["type"] == (kind or "invalid_request_error")
    assert fake.in_flight() == fake.loads() == 0  # refused before the model


def test_openai_accepts_what_ollama_accepts(oai: openai.OpenAI) -> None:
    """Null content beside tool_calls with string arguments, and text and image_url parts
    (each part its own message) pass (0.12.10 openai/openai.go FromChatRequest)."""
    pixel = base64.b64encode(b"\x89PNG fake").decode()
    messages: list[Any] = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{pixel}"}},
                {"type": "text", "text": "what is this"},
            ],
        },
    ]
    reply = oai.chat.completions.create(model=MODEL, messages=messages)
    assert reply.choices[0].message.content == "You said: what is this"


def test_think_needs_the_thinking_capability(fake: FakeOllama, client: ollama.Client) -> None:
    """``think`` on a model without the thinking capability is 400 "<model>" does not support
    thinking; a thinking model thinks unless told not to; a think level is for harmony
    models (gpt-oss) only (0.12.10 server/routes.go ChatHandler and GenerateHandler,
    server/images.go Model.Capabilities)."""
    install_thinkers(fake)
    for call in (
        lambda: client.chat(model=MODEL, messages=USER, think=True),
        lambda: client.chat(model=MODEL, messages=USER, think="low"),
        lambda: client.generate(model=MODEL, prompt="hi", think=True),
        lambda: client.chat(model=MODEL, messages=[], think=True),
    ):
        with pytest.raises(ollama.ResponseError) as refused:
            call()
        assert (refused.value.status_code, refused.value.error) == (
            400,
            '"llama3.1:8b" does not support thinking',
        )
    plain = client.chat(model=MODEL, messages=USER, think=False)
    assert (plain.message.content, plain.message.thinking) == ("You said: hello there", None)
    assert client.chat(model=THINKER, messages=USER).message.thinking  # thinks by default
    assert client.chat(model=THINKER, messages=USER, think=False).message.thinking is None
    for call in (
        lambda: client.chat(model=THINKER, messages=USER, think="high"),
        lambda: client.generate(model=THINKER, prompt="hi", think="high"),
    ):
        with pytest.raises(ollama.ResponseError) as level:
            call()
        assert level.value.error == 'think value "high" is not supported for this model'
    assert client.chat(model=HARMONY, messages=USER, think="low").message.thinking
    assert client.show(THINKER).capabilities == ["completion", "tools", "thinking"]
    assert client.show(MODEL).capabilities == ["completion", "tools"]
    client.create(model="my-thinker", from_=THINKER, system="Be brief.")
    assert client.chat(model="my-thinker", messages=USER).message.thinking
    fake.configure(thinking_models=["llama"])
    assert client.chat(model=MODEL, messages=USER).message.thinking


def test_a_completion_only_model_refuses_tools_images_and_embeddings(
    fake: FakeOllama, client: ollama.Client
) -> None:
    """As the real Gemma 3 270M does (tests/test_conformance.py): tools a 400 naming the full
    model name (0.12.10 server/images.go CheckCapabilities), an image and an embedding the
    runner's 500s, and /api/show lists completion alone."""
    fake.configure(completion_only_models=["llama3.1"])
    with pytest.raises(ollama.ResponseError) as tools:
        client.chat(model=MODEL, messages=USER, tools=[WEATHER_TOOL])
    assert (tools.value.status_code, tools.value.error) == (
        400,
        "registry.ollama.ai/library/llama3.1:8b does not support tools",
    )
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
    with pytest.raises(ollama.ResponseError) as image:
        client.chat(model=MODEL, messages=[{**USER[0], "images": [png]}])
    assert image.value.status_code == 500
    assert image.value.error.endswith("this model is missing data required for image input")
    with pytest.raises(ollama.ResponseError) as embed:
        client.embed(model=MODEL, input="hi")
    assert (embed.value.status_code, embed.value.error) == (
        500,
        "this model does not support embeddings",
    )
    assert client.show(MODEL).capabilities == ["completion"]
    assert client.chat(model=MODEL, messages=USER).message.content == "You said: hello there"


def test_request_errors_in_go_s_words(fake: FakeOllama) -> None:
    """Bodies and fields as encoding/json and api.Options.FromMap refuse them in 0.12.10."""
    cases = [
        ('{"model": ', 400, "unexpected EOF"),
        ('{"model": "x" "y"}', 400, "invalid character '\"' after object key:value pair"),
        ("model=x", 400, "invalid character 'm' looking for beginning of value"),
        (
            json.dumps({"model": MODEL, "messages": USER, "options": "hot"}),
            400,
            "json: cannot unmarshal string into Go struct field ChatRequest.options of type "
            "map[string]interface {}",
        ),
        (
            json.dumps({"model": MODEL, "messages": "hi"}),
            400,
            "json: cannot unmarshal string into Go struct field ChatRequest.messages of type "
            "[]api.Message",
        ),
        (
            json.dumps({"model": MODEL, "messages": USER, "options": {"temperature": "hot"}}),
            500,
            'option "temperature" must be of type float32',
        ),
        (
            json.dumps({"model": MODEL, "messages": USER, "options": {"stop": "x"}}),
            500,
            'option "stop" must be of type array',
        ),
    ]
    for body, status, error in cases:
        reply = httpx.post(f"{fake.url}/api/chat", content=body)
        assert (reply.status_code, reply.json()) == (status, {"error": error}), body
    bad = httpx.post(
        f"{fake.url}/v1/chat/completions",
        json={"model": MODEL, "messages": USER, "max_tokens": 4.5},
    )
    assert bad.json()["error"]["message"] == (
        "json: cannot unmarshal number 4.5 into Go struct field "
        "ChatCompletionRequest.max_tokens of type int"
    )
    assert bad.headers["content-type"] == "application/json; charset=utf-8"  # the middleware's


def test_the_v1_writers_encode_with_a_newline_under_bare_json(fake: FakeOllama) -> None:
    """middleware/openai.go writes with json.NewEncoder under "application/json", handler
    errors included; gin's own JSON (the middleware's 400s, the native routes) has a charset."""
    whole = httpx.post(f"{fake.url}/v1/chat/completions", json={"model": MODEL, "messages": USER})
    missing = httpx.post(
        f"{fake.url}/v1/chat/completions", json={"model": "ghost", "messages": USER}
    )
    listed = httpx.get(f"{fake.url}/v1/models")
    for reply in (whole, missing, listed):
        assert reply.headers["content-type"] == "application/json"
        assert reply.text.endswith("}\n")
    assert missing.status_code == 404
    native = httpx.post(
        f"{fake.url}/api/chat", json={"model": MODEL, "messages": USER, "stream": False}
    )
    assert native.headers["content-type"] == "application/json; charset=utf-8"
    assert not native.text.endswith("\n")


def test_ps_reports_what_sits_in_gpu_memory(fake: FakeOllama, client: ollama.Client) -> None:
    """/api/ps gives each loaded model's size and size_vram; with gpu_fraction < 1 part of it
    is in system memory, as when a model does not fit the GPU (0.12.10 server/routes.go
    PsHandler: Size totalSize, SizeVRAM vramSize)."""
    client.chat(model=MODEL, messages=[])
    [whole] = client.ps().models
    assert whole.size > 0
    assert whole.size_vram == whole.size
    fake.configure(gpu_fraction=0.25)
    [split] = client.ps().models
    assert split.size_vram == int(whole.size * 0.25)
    with pytest.raises(ValueError, match="gpu_fraction"):
        coerce_config({"gpu_fraction": 1.5})


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
    remote = RemoteOllama(fake.url)
    for readings in (fake, remote):  # the typed calls read the same counters
        assert readings.request_counts()["POST /api/chat"] == 2
        assert readings.last_received()["options"] == {"temperature": 0.3}
        assert readings.received() == stats["chat_requests"]
        assert readings.faults_served() == 1
        assert readings.token_times() == []  # both replies were whole, not streamed
        assert (readings.in_flight(), readings.peak_in_flight(), readings.queued()) == (0, 1, 0)
        assert (readings.loads(), readings.cancelled()) == (stats["loads"], 0)
    remote.close()
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
    """python -m standins.ollama serves, takes HTTP control, exits 0 on SIGTERM."""
    port = free_port()
    cmd = [sys.executable, "-m", "standins.ollama", "--port", str(port), "--reply", "Hi."]
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
    module = [sys.executable, "-m", "standins.ollama"]
    sick_port, dying_port = free_port(), free_port()
    sick_env = child_env(OLLAMA_HOST=f"127.0.0.1:{sick_port}", FAKE_OLLAMA_NEVER_HEALTHY="1")
    dying_env = child_env(
        OLLAMA_HOST=f":{dying_port}",
        # Counted from exec: longer than the stand-in's own imports (~0.7 s quiet, past 1.5 s
        # on a busy two-core machine, where the port was already open at the first look).
        FAKE_OLLAMA_START_DELAY="3",
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
        assert version.stdout.strip() == "ollama version is 0.12.10"
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
    assert "Warning: client version is 0.12.10" in result.stdout


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
        "from standins.ollama.server import seconds_since_process_start as age; print(age())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert 0.5 <= float(done.stdout) < 10
