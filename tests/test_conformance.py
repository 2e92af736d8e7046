"""The stand-in Ollama checked against the real one: the same requests to both, answers compared.

Every request the worker makes, and the errors it must read, goes to the real `ollama serve`
0.12.10 with the real Gemma 3 270M and to `standins/ollama` set up with the same models
(the real store's names, ours built from the project's Modelfile). `differences` lists every
way two answers differ, each as `path: real ..., stand-in ...`, so a failure reads as a list.
Compared: the status, the content type, the framing (NDJSON lines and blank lines, SSE events,
`data: [DONE]`, the usage chunk, a JSON body's trailing newline), and the body recursively:
key sets, JSON types and values. Stream items are compared kind by kind (chunk, done, final,
usage), each stand-in item against the real stream's first item of its kind.

What differs on purpose, and so is compared by type only (`BY_TYPE`), by set (`ONE_OF`) or
not at all below its type (`OPAQUE`): the generated text and its token counts (the stand-in
echoes; the reason a generation stopped may then be either "stop" or "length"), durations and
timestamps (real work takes real time), the random ids Ollama gives too, and the facts of the
model file (sizes, digests, details, the Modelfile's FROM path, model_info and tensors: the
stand-in's models are llama-shaped, ours is a gemma3 GGUF). /api/show's parameter lines are
compared as a set, since Go prints them in map order. On this CPU the real server keeps one
model in memory (loading another evicts it), the stand-in several, as a GPU with room does:
the cases are ordered so that /api/ps is read only where both hold the same. /api/pull is
never sent (the real one
would dial the registry). Sources of the real behaviour: the comments beside each case, files
of Ollama v0.12.10.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from ollama_worker.ollama_client import parse_parameters
from standins.ollama import FakeOllama
from tests.real_ollama import GEMMA3_TEMPLATE, MODEL, RealOllamaServer
from tests.test_real_ollama import PNG, modelfile_parameters

pytestmark = pytest.mark.real

LATEST = f"{MODEL}:latest"
# A copy of our model with a 256-token context, so "longer than num_ctx" costs little CPU.
SMALL = "conformance-ctx256"
COPY = "conformance-copy"
# Greedy decoding, a seed and a few tokens: the CPU is shared, and the answers are repeatable.
SAMPLING = {"temperature": 0, "seed": 42, "num_predict": 4}
V1_SAMPLING = {"temperature": 0, "seed": 42, "max_tokens": 4}
SAY_HI = [{"role": "user", "content": "Say hi."}]
TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}

# Paths (fnmatch patterns over "a/b/#/c", `#` for any list index) whose values differ between
# the two by nature, so only their JSON types are compared:
BY_TYPE = {
    # The generated text: the stand-in echoes, the model writes; and its token counts.
    "*message/content",
    "*choices/#/message/content",
    "*choices/#/delta/content",
    "*choices/#/text",
    "*eval_count",
    "*prompt_eval_count",
    "*usage/*_tokens",
    # Clocks: durations of real work, and when it happened.
    "*_duration",
    "*created_at",
    "*modified_at",
    "*expires_at",
    "*created",
    # Random per request in Ollama too (middleware/openai.go: chatcmpl-<rand.Intn(999)>).
    "id",
    # Facts of the model file, not of the wire: its bytes, digests and what its GGUF says.
    "*size",
    "*size_vram",
    "*digest",
    "*details/*",
    "modelfile",
    "tensors",
}
# Paths whose values may differ within a set: why generation stopped depends on what the
# model wrote (it may end its turn within num_predict), so either answer is Ollama's.
ONE_OF = {"*done_reason": {"stop", "length"}, "*finish_reason": {"stop", "length"}}
# Paths compared by JSON type alone, keys and all: the GGUF's own metadata, whose keys are
# named after the model's architecture (gemma3.* for the real model).
OPAQUE = {"model_info"}
# The stand-in's reply, long enough that num_predict 4 cuts it as it cuts the real model's.
FAKE_REPLY = "Hello there, how are you doing today?"


# --- one exchange, parsed ---------------------------------------------------------------------


@dataclass
class Reply:
    """One HTTP answer: status, content type, framing skeleton and parsed body."""

    status: int
    content_type: str
    framing: str
    body: Any  # a JSON value, the text, or for a stream the list of its items


def item_kind(item: Any) -> str:
    """What one stream item is, for the framing skeleton."""
    if not isinstance(item, dict):
        return repr(item)
    if "error" in item:
        return "error"
    if "done" in item:  # NDJSON: api.ChatResponse
        return "done" if item["done"] else "chunk"
    choices = item.get("choices")
    if choices == []:
        return "usage"
    if item.get("model") == "":
        return "empty-model"
    if isinstance(choices, list) and any(c.get("finish_reason") for c in choices):
        return "final"
    return "chunk"


def collapse(tokens: list[str]) -> str:
    """Runs of the same token as one `token+`, so streams of any length compare."""
    out: list[str] = []
    for token in tokens:
        if out and out[-1].rstrip("+") == token:
            out[-1] = token + "+"
        else:
            out.append(token)
    return " ".join(out)


def parse_ndjson(raw: str) -> tuple[str, list[Any]]:
    lines = raw.split("\n")
    items, tokens = [], []
    for line in lines[:-1]:
        if not line.strip():
            tokens.append("<blank line>")
            continue
        items.append(json.loads(line))
        tokens.append(item_kind(items[-1]) + ("\\r" if line.endswith("\r") else "") + "\\n")
    if lines[-1]:
        tokens.append("<no final newline>")
    return collapse(tokens), items


def parse_sse(raw: str) -> tuple[str, list[Any]]:
    events = raw.split("\n\n")
    items, tokens = [], []
    for event in events[:-1]:
        if not event.startswith("data: "):
            tokens.append(f"<{event[:30]!r}>")
            continue
        payload = event[len("data: ") :]
        if payload == "[DONE]":
            tokens.append("data: [DONE]\\n\\n")
            continue
        items.append(json.loads(payload))
        tokens.append(f"data: {item_kind(items[-1])}\\n\\n")
    if events[-1]:
        tokens.append(f"<unterminated {events[-1][:30]!r}>")
    return collapse(tokens), items


def exchange(base: str, method: str, path: str, body: Any = None, raw: str | None = None) -> Reply:
    """Send one request and parse the answer by its content type."""
    content = raw if raw is not None else None if body is None else json.dumps(body)
    response = httpx.request(method, base + path, content=content, timeout=120)
    kind = response.headers.get("content-type", "")
    text = response.text
    if kind.startswith("application/x-ndjson"):
        framing, items = parse_ndjson(text)
        return Reply(response.status_code, kind, framing, items)
    if kind.startswith("text/event-stream"):
        framing, items = parse_sse(text)
        return Reply(response.status_code, kind, framing, items)
    if kind.startswith("application/json"):
        framing = "json\\n" if text.endswith("\n") else "json"
        return Reply(response.status_code, kind, framing, json.loads(text))
    return Reply(response.status_code, kind, "text", text)


# --- the comparison ---------------------------------------------------------------------------


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"  # Go writes a float64 that is whole as "1": int and float are one type
    return {str: "string", list: "array", dict: "object"}[type(value)]


def matches(path: str, patterns: set[str]) -> bool:
    """Whether a path (its stream-item prefix `<kind>/` left out) is one of `patterns`."""
    bare = re.sub(r"^<[^>]*>/?", "", path)
    return any(fnmatch.fnmatchcase(bare, pattern) for pattern in patterns)


def both_allowed(path: str, real: Any, fake: Any) -> bool:
    """Whether two different values are both among those `ONE_OF` allows at `path`."""
    return any(
        matches(path, {pattern}) and {real, fake} <= allowed for pattern, allowed in ONE_OF.items()
    )


def compare(path: str, real: Any, fake: Any, loose: set[str], out: list[str]) -> None:
    """Append to `out` every difference between two JSON values below `path`."""
    where = path or "(body)"
    if json_type(real) != json_type(fake):
        out.append(f"{where}: real {json_type(real)} {real!r:.100}, stand-in {fake!r:.100}")
        return
    if matches(path, OPAQUE):
        return
    by_type = matches(path, loose)
    below = f"{path}/" if path else ""
    if isinstance(real, dict):
        for key in sorted(real.keys() - fake.keys()):
            out.append(f"{below}{key}: real has it ({real[key]!r:.100}), the stand-in not")
        for key in sorted(fake.keys() - real.keys()):
            out.append(f"{below}{key}: the stand-in has it ({fake[key]!r:.100}), real not")
        for key in sorted(real.keys() & fake.keys()):
            compare(
                below + key,
                real[key],
                fake[key],
                loose | ({below + key} if by_type else set()),
                out,
            )
    elif isinstance(real, list):
        if by_type:  # each item against the real first one, by type
            for item in fake if real else []:
                compare(below + "#", real[0], item, loose | {below + "#"}, out)
            return
        if len(real) != len(fake):
            out.append(f"{where}: real has {len(real)} items, the stand-in {len(fake)}")
        for real_item, fake_item in zip(real, fake, strict=False):
            compare(below + "#", real_item, fake_item, loose, out)
    elif not by_type and real != fake and not both_allowed(path, real, fake):
        out.append(f"{where}: real {real!r:.200}, stand-in {fake!r:.200}")


def compare_streams(real: list[Any], fake: list[Any], loose: set[str], out: list[str]) -> None:
    """Each stand-in item against the real stream's first item of the same kind."""
    first: dict[str, Any] = {}
    for item in real:
        first.setdefault(item_kind(item), item)
    found: list[str] = []
    for item in fake:
        if item_kind(item) in first:
            compare(f"<{item_kind(item)}>", first[item_kind(item)], item, loose, found)
    out.extend(dict.fromkeys(found))  # the same difference in every chunk, once


def differences(real: Reply, fake: Reply, by_type: set[str] = frozenset()) -> list[str]:
    """Every way `fake` differs from `real`, one line each."""
    out: list[str] = []
    for name in ("status", "content_type", "framing"):
        if getattr(real, name) != getattr(fake, name):
            out.append(f"{name}: real {getattr(real, name)!r}, stand-in {getattr(fake, name)!r}")
    loose = BY_TYPE | set(by_type)
    if real.framing.startswith(("json", "text")):
        compare("", normalize(real.body), normalize(fake.body), loose, out)
    elif isinstance(real.body, list) and isinstance(fake.body, list):
        compare_streams(real.body, fake.body, loose, out)
    return out


def normalize(body: Any) -> Any:
    """/api/show's parameter lines come in Go's map order, random on each call: sort them."""
    if isinstance(body, dict) and isinstance(body.get("parameters"), str):
        return {**body, "parameters": "\n".join(sorted(body["parameters"].splitlines()))}
    return body


# --- the two servers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(real_ollama: RealOllamaServer) -> Iterator[str]:
    """The real server with our model loaded, and the small-context copy built."""
    installed = {m["name"] for m in real_ollama.api("GET", "/api/tags")["models"]}
    if f"{SMALL}:latest" not in installed:
        # From a local model only: a `from` Ollama does not have would be pulled.
        real_ollama.api(
            "POST",
            "/api/create",
            {"model": SMALL, "from": MODEL, "parameters": {"num_ctx": 256}, "stream": False},
        )
    real_ollama.preload()
    yield real_ollama.url
    real_ollama.preload()  # a test here may have loaded the small copy, evicting ours


def stand_in_models(real: str) -> list[dict[str, Any]]:
    """The stand-in's models (ModelEntry fields): the real store's, newest first as /api/tags
    lists them; ours as our Modelfile and the real fixture make it (its PARAMETERs and SYSTEM,
    gemma3's template and stop token), independent of what the real /api/show says, and the
    others with the PARAMETERs the real /api/show gives them."""
    parameters, system = modelfile_parameters()
    parameters["stop"] = [*parameters["stop"], "<end_of_turn>"]
    template = re.search(r'TEMPLATE """(.*?)"""', GEMMA3_TEMPLATE, re.DOTALL)
    assert template
    names = [m["name"] for m in httpx.get(f"{real}/api/tags").json()["models"]]
    entries = []
    for age, name in enumerate(names):
        own = parameters
        if name != LATEST:
            shown = httpx.post(f"{real}/api/show", json={"model": name}).json()
            own = parse_parameters(shown["parameters"])
        entries.append(
            {
                "name": name,
                "modified_ns": (len(names) - age) * 1_000_000_000,
                "billions": 0.27,
                "system": system,
                "template": template.group(1),
                "parameters": own,
            }
        )
    return entries


@contextlib.contextmanager
def stand_in_server(real: str, state: Path) -> Iterator[str]:
    """The stand-in with the real store's models, one request at a time as the real fixture
    runs, our model loaded; its models have no capability but completion, as Gemma 3 270M."""
    entries = stand_in_models(real)
    state.write_text(json.dumps({"models": entries}))
    with FakeOllama(
        state_file=str(state),
        num_parallel=1,
        keep_alive="-1",
        reply=FAKE_REPLY,
        completion_only_models=[entry["name"].split(":")[0] for entry in entries],
    ) as server:
        httpx.post(f"{server.url}/api/chat", json={"model": MODEL, "messages": []}, timeout=10)
        yield server.url


@pytest.fixture(scope="module")
def stand_in(real: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The stand-in, set up as the real one is."""
    with stand_in_server(real, tmp_path_factory.mktemp("conformance") / "models.json") as url:
        yield url


@dataclass
class Case:
    """One request, sent alike to both."""

    name: str
    method: str
    path: str
    body: Any = None
    raw: str | None = None
    by_type: set[str] = field(default_factory=set)

    def __str__(self) -> str:
        return self.name


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": SAY_HI, "options": SAMPLING, **fields}


def v1(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": SAY_HI, **V1_SAMPLING, **fields}


CASES = [
    # server/routes.go GenerateRoutes: "/" and /api/version answer c.String / c.JSON.
    Case("root", "GET", "/"),
    Case("version", "GET", "/api/version"),
    # ListHandler, PsHandler, ShowHandler.
    Case("tags", "GET", "/api/tags"),
    Case("ps", "GET", "/api/ps"),
    Case("show", "POST", "/api/show", {"model": MODEL}),
    Case("show-unknown", "POST", "/api/show", {"model": "no-such-model"}),
    Case("show-no-model", "POST", "/api/show", {}),
    # ChatHandler with no messages: load (boot.preload) or unload; stream or not, one JSON.
    Case(
        "preload",
        "POST",
        "/api/chat",
        {"model": MODEL, "messages": [], "keep_alive": -1, "stream": False},
    ),
    Case(
        "preload-default-stream",
        "POST",
        "/api/chat",
        {"model": MODEL, "messages": [], "keep_alive": -1},
    ),
    # ChatHandler: a reply whole (waits for the channel) and streamed (streamResponse).
    Case("chat", "POST", "/api/chat", chat(stream=False)),
    Case("chat-stream", "POST", "/api/chat", chat(stream=True)),
    Case(
        "chat-options",
        "POST",
        "/api/chat",
        chat(stream=False, think=False, keep_alive=-1, format="json"),
    ),
    Case(
        "chat-schema",
        "POST",
        "/api/chat",
        chat(stream=False, format={"type": "object", "properties": {"a": {"type": "string"}}}),
    ),
    Case(
        "chat-image",
        "POST",
        "/api/chat",
        chat(stream=False, messages=[{**SAY_HI[0], "images": [PNG]}]),
    ),
    Case(
        "chat-system",
        "POST",
        "/api/chat",
        chat(stream=True, messages=[{"role": "system", "content": "Be brief."}, *SAY_HI]),
    ),
    # A history with a tool call and its result, as VAPI's tool turns reach the model.
    Case(
        "chat-tool-history",
        "POST",
        "/api/chat",
        chat(
            stream=False,
            messages=[
                *SAY_HI,
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "get_time", "arguments": {}}}],
                },
                {"role": "tool", "content": "12:00", "tool_name": "get_time"},
                {"role": "user", "content": "And now?"},
            ],
        ),
    ),
    # Capabilities the model lacks: tools are a 400 from scheduleRunner's CheckCapabilities
    # (server/images.go, named by the full "registry.ollama.ai/library/..." name, then
    # handleScheduleError), think one from ChatHandler itself ('"<model>" does not support
    # thinking'), before any load; an image is the runner's 500 once loaded
    # (runner/ollamarunner: "missing data required for image input").
    Case("chat-tools", "POST", "/api/chat", chat(stream=False, tools=[TOOL])),
    Case("chat-tools-stream", "POST", "/api/chat", chat(stream=True, tools=[TOOL])),
    Case("chat-think", "POST", "/api/chat", chat(stream=False, think=True)),
    Case("chat-think-stream", "POST", "/api/chat", chat(stream=True, think="high")),
    # GetModel's not-found: 404 "model '<name>' not found", stream or not (one JSON).
    Case("chat-unknown", "POST", "/api/chat", chat(model="no-such-model", stream=False)),
    Case("chat-unknown-stream", "POST", "/api/chat", chat(model="no-such-model")),
    # ShouldBindJSON (json.Decoder): "unexpected EOF", "invalid character ...", "missing
    # request body" for none, UnmarshalTypeError texts for fields of the wrong JSON kind.
    Case("chat-bad-json", "POST", "/api/chat", raw='{"model": '),
    Case("chat-bad-character", "POST", "/api/chat", raw='{"model": "voice-assistant" "x"}'),
    Case("chat-not-json", "POST", "/api/chat", raw="model=voice-assistant"),
    Case("chat-empty-body", "POST", "/api/chat", raw=""),
    Case("chat-body-array", "POST", "/api/chat", raw="[]"),
    Case("chat-stream-not-bool", "POST", "/api/chat", chat(stream="yes")),
    Case("chat-think-bad", "POST", "/api/chat", chat(think="maybe")),
    # The runner's refusals once loaded (llm/server.go Completion): a 500; streamed, it comes
    # down streamResponse's channel before any line, under a bare "application/json".
    Case("chat-format-bad", "POST", "/api/chat", chat(format="xml")),
    Case("chat-format-bad-whole", "POST", "/api/chat", chat(format=5, stream=False)),
    Case(
        "chat-image-stream",
        "POST",
        "/api/chat",
        chat(stream=True, messages=[{**SAY_HI[0], "images": [PNG]}]),
    ),
    Case("chat-keep-alive-bool", "POST", "/api/chat", chat(keep_alive=True)),
    Case("chat-message-not-object", "POST", "/api/chat", chat(messages=[1])),
    # model.ParseName of "": 400 "model is required".
    Case("chat-no-model", "POST", "/api/chat", {"messages": SAY_HI}),
    Case("chat-options-not-object", "POST", "/api/chat", chat(options="hot")),
    # api/types.go Options.FromMap inside scheduleRunner: a 500 (handleScheduleError default).
    Case("chat-option-bad-type", "POST", "/api/chat", chat(options={"temperature": "hot"})),
    Case("chat-messages-not-list", "POST", "/api/chat", chat(messages="hi")),
    # api.Duration's UnmarshalJSON: a string must be a Go duration ('time: missing unit ...').
    Case("chat-keep-alive-bad", "POST", "/api/chat", chat(keep_alive="-1")),
    # A context longer than num_ctx: server/prompt.go chatPrompt drops old messages, the
    # runner truncates one too long: a normal answer.
    Case(
        "chat-over-num-ctx",
        "POST",
        "/api/chat",
        chat(model=SMALL, stream=False, messages=[{"role": "user", "content": "hello " * 600}]),
    ),
    Case(
        "chat-over-num-ctx-stream",
        "POST",
        "/api/chat",
        chat(model=SMALL, stream=True, messages=[{"role": "user", "content": "hello " * 600}]),
    ),
    # The OpenAI routes (middleware/openai.go, openai/openai.go): the writers encode with
    # json.NewEncoder (a trailing newline) under a bare "application/json"; streams are
    # "data: <chunk>\n\n" events, the last with finish_reason, the usage chunk with
    # "choices": [] when stream_options.include_usage asks (on /v1/completions every chunk
    # then carries a zero usage too), then "data: [DONE]\n\n".
    Case("v1-models", "GET", "/v1/models"),
    Case("v1-chat", "POST", "/v1/chat/completions", v1()),
    Case("v1-chat-stream", "POST", "/v1/chat/completions", v1(stream=True)),
    Case(
        "v1-chat-stream-usage",
        "POST",
        "/v1/chat/completions",
        v1(stream=True, stream_options={"include_usage": True}, stop=["\n"]),
    ),
    Case(
        "v1-completions",
        "POST",
        "/v1/completions",
        {"model": MODEL, "prompt": "The sky is", **V1_SAMPLING},
    ),
    Case(
        "v1-completions-stream",
        "POST",
        "/v1/completions",
        {
            "model": MODEL,
            "prompt": "The sky is",
            "stream": True,
            "stream_options": {"include_usage": True},
            **V1_SAMPLING,
        },
    ),
    Case(
        "v1-completions-stream-plain",
        "POST",
        "/v1/completions",
        {"model": MODEL, "prompt": "The sky is", "stream": True, **V1_SAMPLING},
    ),
    Case(
        "v1-chat-format",
        "POST",
        "/v1/chat/completions",
        v1(response_format={"type": "json_object"}, stop="<end>", top_p=0.9),
    ),
    # EmbedHandler loads the model, the runner refuses (501) and the handler answers 500,
    # which the /v1 writer types "api_error".
    Case("v1-embeddings", "POST", "/v1/embeddings", {"model": MODEL, "input": "hello"}),
    # Handler errors through BaseWriter.writeError: the handler's status, type "api_error".
    Case("v1-chat-unknown", "POST", "/v1/chat/completions", v1(model="no-such-model")),
    Case(
        "v1-chat-unknown-stream",
        "POST",
        "/v1/chat/completions",
        v1(model="no-such-model", stream=True),
    ),
    Case("v1-chat-tools", "POST", "/v1/chat/completions", v1(tools=[TOOL])),
    Case("v1-chat-tools-stream", "POST", "/v1/chat/completions", v1(tools=[TOOL], stream=True)),
    Case("v1-chat-reasoning", "POST", "/v1/chat/completions", v1(reasoning_effort="high")),
    Case(
        "v1-chat-image",
        "POST",
        "/v1/chat/completions",
        v1(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    ],
                }
            ]
        ),
    ),
    # The middleware's own 400s (gin's AbortWithStatusJSON: charset, no newline, typed
    # "invalid_request_error"): FromChatRequest's message checks, ShouldBindJSON's errors.
    Case(
        "v1-chat-null-content",
        "POST",
        "/v1/chat/completions",
        v1(messages=[{"role": "user", "content": None}]),
    ),
    Case(
        "v1-chat-object-arguments",
        "POST",
        "/v1/chat/completions",
        v1(
            messages=[
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {}}}
                    ],
                },
                *SAY_HI,
            ]
        ),
    ),
    Case(
        "v1-chat-unknown-part",
        "POST",
        "/v1/chat/completions",
        v1(messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]),
    ),
    Case(
        "v1-chat-text-parts",
        "POST",
        "/v1/chat/completions",
        v1(messages=[{"role": "user", "content": [{"type": "text", "text": "Say hi."}]}]),
    ),
    Case("v1-chat-no-messages", "POST", "/v1/chat/completions", {"model": MODEL}),
    Case("v1-chat-messages-text", "POST", "/v1/chat/completions", v1(messages="hi")),
    Case("v1-embeddings-bad-input", "POST", "/v1/embeddings", {"model": MODEL, "input": 5}),
    Case("v1-embeddings-no-input", "POST", "/v1/embeddings", {"model": MODEL}),
    Case(
        "v1-embeddings-format",
        "POST",
        "/v1/embeddings",
        {"model": MODEL, "input": "hi", "encoding_format": "int8"},
    ),
    Case("show-body-array", "POST", "/api/show", raw="[]"),
    Case("v1-chat-bad-json", "POST", "/v1/chat/completions", raw="{"),
    Case("v1-chat-no-model", "POST", "/v1/chat/completions", {"messages": SAY_HI}),
    Case("v1-chat-bad-type", "POST", "/v1/chat/completions", v1(temperature="hot")),
    Case("v1-chat-fraction-tokens", "POST", "/v1/chat/completions", v1(max_tokens=4.5)),
    Case(
        "v1-completions-prompt-list", "POST", "/v1/completions", {"model": MODEL, "prompt": ["a"]}
    ),
    # gin's default 404, plain text without a charset.
    Case("unknown-route", "GET", "/api/nothing"),
    # CreateHandler from a local model (never a `from` the store lacks: Ollama would pull
    # it), its errors down the progress channel (waitForStream: a bare "application/json"),
    # and DeleteHandler (an empty 200); last, so the listings above see the store as set up.
    # /api/pull is not sent: the real one would dial the registry, which nothing here may.
    Case("create", "POST", "/api/create", {"model": COPY, "from": MODEL, "stream": False}),
    Case("create-nothing", "POST", "/api/create", {"model": COPY}),
    Case("delete", "DELETE", "/api/delete", {"model": COPY}),
    Case("delete-unknown", "DELETE", "/api/delete", {"model": COPY}),
    # ChatHandler's unload (no messages, keep_alive 0: expireRunner), of a model that may or
    # may not be loaded (on this CPU the real one keeps one model in memory, loading another
    # evicts it; the stand-in keeps several, as a GPU with room does), then the load again.
    Case("unload-small", "POST", "/api/chat", {"model": SMALL, "messages": [], "keep_alive": 0}),
    Case("unload", "POST", "/api/chat", {"model": MODEL, "messages": [], "keep_alive": 0}),
    Case("ps-unloaded", "GET", "/api/ps"),
    Case("reload", "POST", "/api/chat", {"model": MODEL, "messages": [], "keep_alive": -1}),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_stand_in_answers_as_the_real_ollama_does(case: Case, real: str, stand_in: str) -> None:
    real_reply = exchange(real, case.method, case.path, case.body, case.raw)
    fake_reply = exchange(stand_in, case.method, case.path, case.body, case.raw)
    found = differences(real_reply, fake_reply, case.by_type)
    assert not found, "the stand-in differs from Ollama 0.12.10:\n" + "\n".join(found)


# --- the comparison itself ------------------------------------------------------------------


def test_the_comparison_reports_every_difference_at_once() -> None:
    """`differences` must see what it is there to see, or the test above proves nothing."""
    real = Reply(
        200,
        "application/x-ndjson",
        "chunk\\n+ done\\n",
        [
            {"message": {"content": "Hi"}, "done": False},
            {"done": True, "done_reason": "length", "eval_count": 4, "extra": 1},
        ],
    )
    fake = Reply(
        200,
        "application/json",
        "chunk\\n done\\n",
        [
            {"message": {"content": "Other words"}, "done": False},
            {"done": True, "done_reason": "unload", "eval_count": "4", "more": 2},
        ],
    )
    assert differences(real, fake) == [
        "content_type: real 'application/x-ndjson', stand-in 'application/json'",
        "framing: real 'chunk\\\\n+ done\\\\n', stand-in 'chunk\\\\n done\\\\n'",
        "<done>/extra: real has it (1), the stand-in not",
        "<done>/more: the stand-in has it (2), real not",
        "<done>/done_reason: real 'length', stand-in 'unload'",
        "<done>/eval_count: real number 4, stand-in '4'",
    ]
    assert differences(real, real) == []
    # Either reason to stop is Ollama's (ONE_OF); the generated text differs by type only.
    stopped = Reply(200, "application/json", "json", {"done_reason": "stop", "eval_count": 9})
    cut = Reply(200, "application/json", "json", {"done_reason": "length", "eval_count": 4})
    assert differences(stopped, cut) == []


def test_the_framing_skeletons() -> None:
    assert parse_ndjson('{"done":false}\n{"done":false}\n{"done":true}\n')[0] == (
        "chunk\\n+ done\\n"
    )
    assert parse_ndjson('{"done":true}\n\n{"done":true}')[0] == (
        "done\\n <blank line> <no final newline>"
    )
    sse = 'data: {"choices":[{"finish_reason":null}]}\n\ndata: {"choices":[]}\n\ndata: [DONE]\n\n'
    assert parse_sse(sse)[0] == "data: chunk\\n\\n data: usage\\n\\n data: [DONE]\\n\\n"
    assert parse_sse('data: {"model":""}\n\n')[0] == "data: empty-model\\n\\n"
    assert parse_sse("data: [DONE]\n")[0] == "<unterminated 'data: [DONE]\\n'>"
