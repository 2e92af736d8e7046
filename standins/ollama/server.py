"""Faithful stand-in for the Ollama HTTP server, for tests (no GPU, no model).

It speaks Ollama's wire contract (server/routes.go, api/types.go,
openai/openai.go) with deterministic replies, configurable timing and
injectable faults. Use it in-process (``FakeOllama(...).start()``), as a
process (``python -m standins.ollama``) or through ``tests/bin/ollama
serve``, and steer it at run time over ``POST /_fake/config``,
``GET /_fake/stats`` and ``POST /_fake/reset``.

Replies: ``"You said: " + <last user message>`` (or ``FakeConfig.reply``),
streamed one word per chunk. Faults (``fail_next``, consumed one per request
on /api/chat, /api/generate, /v1/chat/completions, /v1/completions)::

    {"status": 503}                     # also 400/500/502/504..., optional "error"
    {"midstream_error": "text", "after_tokens": 2}
    {"drop": "before_headers"}          # close the connection, no response
    {"drop": "mid_stream", "after_tokens": 2}
    {"delay_s": 1.5}                    # slow headers for this request only
    {"empty_stream": true}              # 200 and no line at all
    {"bad_line": "text", "after_tokens": 2}   # a line that is not JSON, mid-stream
    {"html_error": 502}                 # an HTML error page (a proxy's) for a body
    {"final_text": 2}                   # the last 2 content tokens come in the done chunk

Why each can happen with a real Ollama 0.12.10: ``empty_stream``: llm/server.go Completion
returns nil when the runner's response ends without a done line, and server/routes.go
streamResponse then closes the 200 having written nothing (a non-stream reply is then the
zero ChatResponse, ``done: false``). ``bad_line`` and ``html_error``: OLLAMA_HOST may name an
Ollama behind a proxy (a URL with a path), whose own pages (nginx's "502 Bad Gateway" HTML)
and cut or foreign lines reach the client. ``final_text``: with ``tools``, ChatHandler's tool
parser (tools/tools.go Parser.Add) holds back text from anything that may start a tool call
on, and ChatHandler sends it, ``toolParser.Content()``, in the ``done: true`` chunk.

Stats: ``requests`` ("METHOD /path" counts), ``in_flight``/``max_in_flight``
(requests inside the num_parallel slots), ``queued``, ``chat_requests`` (last
100 generation bodies), ``loads``, ``faults_served``, ``cancelled`` (generations
stopped because their client left), ``stream_token_times`` (for each of the last
100 streams, the ``time.monotonic()`` at which each token chunk was written: the
bench's time-to-first-token reference).

As in Ollama 0.12.10, a loaded model's requests wait for a slot without limit:
the only unforced 503 is ``server busy`` for requests beyond ``max_queue`` that
wait for a model to load (``fail_next``/``fail_rate`` inject others). Models
named like ``thinking_models`` can think (and do unless ``think`` is false);
models named like ``completion_only_models`` (as the real Gemma 3 270M) have no capability
but completion: ``tools`` is a 400, an image or an embedding a 500, in Ollama's words;
``think`` on any other is a 400. ``gpu_fraction`` below 1 makes /api/ps report
part of each model in system memory (``size_vram < size``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import signal
import socket
import string
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, ClassVar, get_type_hints

from aiohttp import web

from standins._server import ThreadedServer
from standins.ollama.host import connect_host, parse_ollama_host
from standins.ollama.readings import OllamaReadings

VERSION = "0.12.10"  # the release the Dockerfile pins
DEFAULT_MODELS = ("llama3.1:8b", "voice-assistant:latest")
STATE_FILE_NAME = "fake-ollama-models.json"
BUSY_ERROR = "server busy, please try again.  maximum pending requests exceeded"
DEFAULT_REPLY = "Hello! How can I help you today?"
NS_PER_S = 1_000_000_000
FOREVER_NS = 2**63 - 1
EMBED_DIM = 8
DEFAULT_NUM_CTX = 4096
# What 0.12.10's non-stream ChatHandler answers when the runner sent nothing: the zero value.
ZERO_CHAT_RESPONSE = {
    "model": "",
    "created_at": "0001-01-01T00:00:00Z",
    "message": {"role": "", "content": ""},
    "done": False,
}
MAX_RECORDED_BODIES = 100
DEFAULT_TEMPLATE = (
    "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n"
    "{{ .System }}<|eot_id|>{{ end }}{{ range .Messages }}"
    "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
    "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
FAULT_MESSAGES: dict[int, str] = {
    400: "invalid request: fake fault",
    500: "llama runner process has terminated: exit status 2",
    502: "bad gateway",
    503: BUSY_ERROR,
    504: "gateway timeout",
}
THINK_LEVELS = ("high", "medium", "low")
# Model families with the thinking capability (Ollama infers it from the template's tags);
# gpt-oss alone uses the harmony parser, the only one that takes a think level string.
THINKING_FAMILIES = ("qwen3", "deepseek-r1", "gpt-oss", "magistral")
HARMONY_FAMILIES = ("gpt-oss",)
_TOKEN_RE = re.compile(r"\S+\s*|\s+")
_NAME_RE = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/){0,2}[A-Za-z0-9][\w.-]*(?::\w[\w.-]{0,79})?$")
_DURATION_PART_RE = re.compile(r"(\d+\.?\d*|\.\d+)([^\d.]*)")
_DURATION_UNITS_NS: dict[str, float] = {
    "ns": 1,
    "us": 1e3,
    "µs": 1e3,  # Go accepts the micro sign
    "μs": 1e3,  # and the Greek mu
    "ms": 1e6,
    "s": 1e9,
    "m": 60e9,
    "h": 3600e9,
}
NO_VISION_ERROR = (
    "Failed to create new sequence: failed to process inputs: "
    "this model is missing data required for image input"
)
NO_EMBEDDINGS_ERROR = "this model does not support embeddings"
# api.Options (0.12.10 api/types.go): each option's Go kind, as FromMap checks it.
_INTEGER_OPTIONS = "num_keep seed num_predict top_k repeat_last_n num_ctx num_batch num_gpu"
_FLOAT_OPTIONS = (
    "top_p min_p typical_p temperature repeat_penalty presence_penalty frequency_penalty"
)
OPTION_KINDS: dict[str, str] = {
    **dict.fromkeys(f"{_INTEGER_OPTIONS} main_gpu num_thread".split(), "integer"),
    **dict.fromkeys(_FLOAT_OPTIONS.split(), "float32"),
    "use_mmap": "boolean",
    "stop": "array",
}
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})


# --------------------------------------------------------------------------
# configuration


@dataclass
class FakeConfig:
    """Every run-time knob of the fake; the defaults are fast and fault-free."""

    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    state_file: str | None = None
    start_delay_s: float = 0.0
    load_delay_s: float = 0.0
    first_token_delay_s: float = 0.0
    token_delay_s: float = 0.0
    header_delay_s: float = 0.0
    num_parallel: int = 4
    max_queue: int = 512
    keep_alive: str = "5m"
    reply: str | None = None
    fail_next: list[dict[str, Any]] = field(default_factory=list)
    fail_rate: float = 0.0
    fail_status: int = 503
    seed: int = 0
    pull_fail: list[str] = field(default_factory=list)
    pullable: str = ".*"
    crash_after_s: float | None = None
    crash_on_start: bool = False
    never_healthy: bool = False
    version: str = VERSION
    gpu_fraction: float = 1.0
    thinking_models: list[str] = field(default_factory=lambda: list(THINKING_FAMILIES))
    completion_only_models: list[str] = field(default_factory=list)


def _as_bool(value: Any) -> bool:
    """Read a boolean from JSON, a flag or an environment variable."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE_WORDS:
        return True
    if text in _FALSE_WORDS:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _as_str_list(value: Any) -> list[str]:
    """Read a list of names from JSON or a comma-separated string."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"not a list of strings: {value!r}")


FAULT_KINDS = (
    "status",
    "midstream_error",
    "drop",
    "delay_s",
    "empty_stream",
    "bad_line",
    "html_error",
    "final_text",
)
# nginx's own error page, as a proxy in front of Ollama answers when Ollama is down.
HTML_ERROR_PAGE = (
    "<html>\r\n<head><title>{status} {phrase}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {phrase}</h1></center>\r\n<hr><center>nginx/1.24.0</center>\r\n"
    "</body>\r\n</html>\r\n"
)


def _check_fault(spec: Any) -> dict[str, Any]:
    """Validate one fault spec so a typo fails loudly instead of doing nothing."""
    if not isinstance(spec, dict):
        raise TypeError(f"fault spec must be an object: {spec!r}")
    kinds = set(FAULT_KINDS) & spec.keys()
    if len(kinds) != 1:
        raise ValueError(f"fault spec needs exactly one of {', '.join(FAULT_KINDS)}: {spec!r}")
    if "status" in spec and not 400 <= int(spec["status"]) <= 599:
        raise ValueError(f"fault status must be 400..599: {spec!r}")
    if "drop" in spec and spec["drop"] not in ("before_headers", "mid_stream"):
        raise ValueError(f"drop must be before_headers or mid_stream: {spec!r}")
    return dict(spec)


def _as_faults(value: Any) -> list[dict[str, Any]]:
    """Read a fault list from JSON text, one spec object or a list of them."""
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else []
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise TypeError(f"fail_next must be a list of fault specs: {value!r}")
    return [_check_fault(spec) for spec in value]


def _optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap a converter so None (or an empty string) means "unset"."""

    def wrapped(value: Any) -> Any:
        return None if value is None or value == "" else convert(value)

    return wrapped


_COERCERS: dict[Any, Callable[[Any], Any]] = {
    list[str]: _as_str_list,
    list[dict[str, Any]]: _as_faults,
    str: str,
    str | None: _optional(str),
    float: float,
    float | None: _optional(float),
    int: int,
    bool: _as_bool,
}
_FIELD_TYPES: dict[str, Any] = get_type_hints(FakeConfig)
CONFIG_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(FakeConfig))


def coerce_config(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and convert config changes; raises ValueError on a bad one."""
    result: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in _FIELD_TYPES:
            raise ValueError(f"unknown config field {name!r}")
        try:
            result[name] = _COERCERS[_FIELD_TYPES[name]](value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad value for {name}: {exc}") from None
    if result.get("num_parallel", 1) < 1:
        raise ValueError("num_parallel must be at least 1")
    if result.get("max_queue", 0) < 0:
        raise ValueError("max_queue must not be negative")
    if not 0.0 <= result.get("fail_rate", 0.0) <= 1.0:
        raise ValueError("fail_rate must be within 0..1")
    if not 0.0 <= result.get("gpu_fraction", 1.0) <= 1.0:
        raise ValueError("gpu_fraction must be within 0..1")
    if "keep_alive" in result:
        server_keep_alive(result["keep_alive"])
    if "pullable" in result:
        re.compile(result["pullable"])
    return result


# --------------------------------------------------------------------------
# wire helpers


class RequestError(Exception):
    """A request Ollama would reject with this status and error text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HandlerError(RequestError):
    """A rejection by the route handler itself, after the /v1 middleware decoded the body.

    On /v1 the middleware's own 400s are typed ``invalid_request_error``; whatever the
    handler answers passes through ``BaseWriter.writeError`` as ``NewError(500, ...)`` and
    so is typed ``api_error`` whatever its status (0.12.10 middleware/openai.go).
    """


class RunnerError(HandlerError):
    """A refusal by the loaded model's runner, which reaches a native stream through
    streamResponse's channel: before any line, under a bare ``application/json``."""


def go_time(ns: int | None = None) -> str:
    """Format Unix nanoseconds as Go's RFC3339Nano in UTC (JSON time.Time)."""
    ns = time.time_ns() if ns is None else ns
    seconds, frac = divmod(ns, NS_PER_S)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if frac:
        stamp += "." + f"{frac:09d}".rstrip("0")
    return stamp + "Z"


def parse_go_duration(text: str) -> float:
    """Parse a Go duration ("5m", "1h30m", "300ms", "0") into seconds."""
    rest, sign = text, 1.0
    if rest[:1] in ("-", "+"):
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f'time: invalid duration "{text}"')
    total_ns, pos = 0.0, 0
    while pos < len(rest):
        match = _DURATION_PART_RE.match(rest, pos)
        if match is None:
            raise ValueError(f'time: invalid duration "{text}"')
        number, unit = match.groups()
        if not unit:
            raise ValueError(f'time: missing unit in duration "{text}"')
        if unit not in _DURATION_UNITS_NS:
            raise ValueError(f'time: unknown unit "{unit}" in duration "{text}"')
        total_ns += float(number) * _DURATION_UNITS_NS[unit]
        pos = match.end()
    return sign * total_ns / NS_PER_S


def parse_keep_alive(value: Any) -> float:
    """Decode keep_alive like api.Duration: seconds, inf for "forever", 0 unloads."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"Unsupported type: '{type(value).__name__}'")
    if isinstance(value, str):
        seconds = parse_go_duration(value)
        return math.inf if seconds < 0 else seconds
    return math.inf if value < 0 else float(int(value))


def server_keep_alive(text: str) -> float:
    """OLLAMA_KEEP_ALIVE like 0.12.10 envconfig.KeepAlive: a Go duration or whole seconds
    ("-1" is forever there, unlike in a request); the stand-in refuses what Ollama would
    silently replace by 5m, so a typo fails loudly."""
    if re.fullmatch(r"[+-]?\d+", text.strip()):
        return parse_keep_alive(int(text))
    return parse_keep_alive(text)


def _dumps(value: Any) -> str:
    """Compact JSON like Go's encoder (no spaces, UTF-8 kept)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _line(value: Any) -> bytes:
    """One NDJSON line."""
    return (_dumps(value) + "\n").encode()


def _sse(value: Any) -> bytes:
    """One server-sent event carrying JSON."""
    return f"data: {_dumps(value)}\n\n".encode()


def _is_number(value: Any) -> bool:
    """A JSON number (Go's float64), not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def option_type_error(options: Mapping[str, Any]) -> str | None:
    """The error api.Options.FromMap gives an option of the wrong type (unknown options are
    only logged there, null ones skipped), or None."""
    for key, value in options.items():
        kind = OPTION_KINDS.get(key)
        if kind is None or value is None:
            continue
        if kind in ("integer", "float32") and not _is_number(value):
            return f'option "{key}" must be of type {kind}'
        if kind == "boolean" and not isinstance(value, bool):
            return f'option "{key}" must be of type boolean'
        if kind == "array" and not isinstance(value, list):
            return f'option "{key}" must be of type array'
        if kind == "array" and not all(isinstance(item, str) for item in value):
            return f'option "{key}" must be of an array of strings'
    return None


def full_name(name: str) -> str:
    """A model's name as model.ParseName completes it, as Ollama's capability errors give it."""
    short = normalize_model(name)
    parts = short.split("/")
    return "/".join(["registry.ollama.ai", "library"][: max(0, 3 - len(parts))] + parts)


def normalize_model(name: str) -> str:
    """Canonical short model name: a missing tag means ``:latest``."""
    name = name.strip()
    for prefix in ("registry.ollama.ai/library/", "library/"):
        if name.lower().startswith(prefix):
            name = name[len(prefix) :]
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name


def valid_model_name(name: Any) -> bool:
    """Whether Ollama's ParseName would accept this model name."""
    return isinstance(name, str) and bool(_NAME_RE.match(name.strip()))


def tokenize(text: str) -> list[str]:
    """Split a reply into word tokens that keep their trailing whitespace."""
    return _TOKEN_RE.findall(text)


def embed_vector(model: str, text: str) -> list[float]:
    """A deterministic unit-length embedding derived from a hash of the text."""
    digest = hashlib.sha256(f"{model}\0{text}".encode()).digest()
    raw = [(byte - 127.5) / 127.5 for byte in digest[:EMBED_DIM]]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [round(v / norm, 6) for v in raw]


def _word_count(text: Any) -> int:
    """Words in a message content (0 for non-text content)."""
    return len(text.split()) if isinstance(text, str) else 0


def _log(level: str, msg: str, source: str = "routes.go:1580") -> None:
    """Write one slog-style line to stderr, like the real server does."""
    print(
        f"time={go_time()} level={level} source={source} msg={json.dumps(msg)}",
        file=sys.stderr,
        flush=True,
    )


# --------------------------------------------------------------------------
# models


def _param_billions(name: str) -> float:
    """Parameter count (billions) guessed from a tag such as ``8b``; 8 else."""
    match = re.search(r"(\d+(?:\.\d+)?)b(?![a-z])", name.lower())
    return float(match.group(1)) if match else 8.0


def _go_value(value: Any) -> str:
    """A PARAMETER value as Ollama's ``%#v`` prints it, each number a float64 (JSON-loaded)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return json.dumps(value, ensure_ascii=False)  # strconv.Quote keeps printable Unicode
    import decimal  # only /api/show needs it

    number = decimal.Decimal(repr(float(value))).normalize()
    exponent = number.adjusted()
    # strconv.FormatFloat(v, 'g', -1, 64): "1" not "1.0", and %e from 1e+06 up or below 1e-04.
    if number.is_zero() or -4 <= exponent < 6:
        return format(number, "f")
    sign, digits, _ = number.as_tuple()
    mantissa = ".".join(filter(None, [str(digits[0]), "".join(map(str, digits[1:]))]))
    return f"{'-' if sign else ''}{mantissa}e{exponent:+03d}"


@dataclass
class ModelEntry:
    """One installed model with the metadata /api/tags and /api/show report."""

    name: str
    modified_ns: int
    billions: float = 8.0
    parent_model: str = ""
    system: str = ""
    template: str = DEFAULT_TEMPLATE
    parameters: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fresh(cls, name: str) -> ModelEntry:
        """A newly pulled model."""
        return cls(name=name, modified_ns=time.time_ns(), billions=_param_billions(name))

    @property
    def digest(self) -> str:
        """Manifest digest (hex), stable for the same name and content."""
        key = _dumps([self.name, self.parent_model, self.system, self.parameters])
        return hashlib.sha256(key.encode()).hexdigest()

    @property
    def blob_digest(self) -> str:
        """Digest of the weights layer, shared by models built on the same base."""
        base = self.parent_model or self.name
        return "sha256:" + hashlib.sha256(f"blob:{base}".encode()).hexdigest()

    @property
    def size(self) -> int:
        """Bytes on disk, roughly a Q4_K_M file for that many parameters."""
        return int(self.billions * 580_000_000) + int(self.digest[:4], 16)

    def details(self) -> dict[str, Any]:
        """The api.ModelDetails object."""
        return {
            "parent_model": self.parent_model,
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": f"{self.billions:.1f}B",
            "quantization_level": "Q4_K_M",
        }

    def tags_item(self) -> dict[str, Any]:
        """One /api/tags entry."""
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": go_time(self.modified_ns),
            "size": self.size,
            "digest": self.digest,
            "details": self.details(),
        }

    def parameters_text(self) -> str:
        """Parameters as /api/show prints them (``%-30s %#v`` per value)."""
        lines = []
        for key, value in self.parameters.items():
            for item in value if isinstance(value, list) else [value]:
                lines.append(f"{key:<30} {_go_value(item)}")
        return "\n".join(lines)

    def modelfile(self) -> str:
        """The Modelfile text /api/show returns."""
        text = (
            '# Modelfile generated by "ollama show"\n'
            "# To build a new Modelfile based on this, replace FROM with:\n"
            f"# FROM {self.name}\n\n"
            f"FROM /root/.ollama/models/blobs/{self.blob_digest.replace(':', '-')}\n"
            f'TEMPLATE """{self.template}"""\n'
        )
        if self.system:
            text += f'SYSTEM """{self.system}"""\n'
        for key, value in self.parameters.items():
            for item in value if isinstance(value, list) else [value]:
                text += f"PARAMETER {key} {item}\n"
        return text


# --------------------------------------------------------------------------
# reply planning


@dataclass
class GenRequest:
    """A generation request reduced to what decides the fake's answer."""

    model: str
    messages: list[dict[str, Any]]
    options: dict[str, Any]
    stream: bool
    keep_alive: float | None = None
    format: Any = None
    think: Any = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    preload: bool = False
    include_usage: bool = False


@dataclass
class Plan:
    """The deterministic outcome of one generation request."""

    content: list[str]
    thinking: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    done_reason: str = "stop"
    prompt_eval_count: int = 10

    @property
    def eval_count(self) -> int:
        """Tokens "generated": content tokens plus the tool-call JSON's."""
        calls = sum(len(tokenize(_dumps(c["function"]))) for c in self.tool_calls)
        return len(self.content) + calls

    @property
    def text(self) -> str:
        """The whole content."""
        return "".join(self.content)

    def steps(self) -> list[tuple[str, Any]]:
        """What is emitted, in order: thinking tokens, tool calls, content tokens."""
        steps: list[tuple[str, Any]] = [("thinking", t) for t in self.thinking]
        if self.tool_calls:
            steps.append(("tool_calls", self.tool_calls))
        steps += [("content", t) for t in self.content]
        return steps


def _last_user(messages: list[dict[str, Any]]) -> str | None:
    """Content of the last user message, if any."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else ""
    return None


def _tool_call(text: str, tools: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The call the user asked for with ``call <tool> {json args}``, if any."""
    best: tuple[int, str, int] | None = None
    for tool in tools:
        name = (tool.get("function") or {}).get("name") if isinstance(tool, dict) else None
        if not isinstance(name, str) or not name:
            continue
        match = re.search(rf"\bcall\s+{re.escape(name)}(?![\w-])", text)
        if match and (best is None or match.start() < best[0]):
            best = (match.start(), name, match.end())
    if best is None:
        return None
    _, name, end = best
    arguments: dict[str, Any] = {}
    brace = text.find("{", end)
    if brace >= 0:
        with contextlib.suppress(ValueError):
            value, _ = json.JSONDecoder().raw_decode(text, brace)
            if isinstance(value, dict):
                arguments = value
    function = {"index": 0, "name": name, "arguments": arguments}
    return {"id": _tool_call_id(), "function": function}


def _fill_value(schema: Any, text: str) -> Any:
    """A value that fits a JSON-schema fragment."""
    if not isinstance(schema, dict):
        return text
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    fillers: dict[str, Callable[[], Any]] = {
        "integer": lambda: 1,
        "number": lambda: 1.0,
        "boolean": lambda: True,
        "array": list,
        "null": lambda: None,
        "object": lambda: _fill_object(schema, text),
    }
    return fillers.get(kind, lambda: text)() if isinstance(kind, str) else text


def _fill_object(schema: Any, text: str) -> dict[str, Any]:
    """A JSON object for ``format``: the schema's properties, or {"reply"}."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict) or not properties:
        return {"reply": text}
    return {key: _fill_value(sub, text) for key, sub in properties.items()}


def plan_reply(req: GenRequest, reply: str | None, system: str) -> Plan:
    """Decide the answer: echo, tool call, JSON format, thinking, stop and caps."""
    messages = req.messages
    last = _last_user(messages)
    prompt_words = _word_count(system) + sum(_word_count(m.get("content")) for m in messages)
    plan = Plan(content=[], prompt_eval_count=prompt_words + 10)
    if req.think in (True, *THINK_LEVELS):
        plan.thinking = tokenize(f"Thinking about: {last or ''}")
    call = _tool_call(last, req.tools) if last and req.tools else None
    if call is not None:
        plan.tool_calls = [call]
        return plan
    echo = DEFAULT_REPLY if last is None else "You said: " + last
    text = reply if reply is not None else echo
    if req.format == "json" or isinstance(req.format, dict):
        text = json.dumps(_fill_object(req.format, text))
    stops = req.options.get("stop") or []
    stops = [stops] if isinstance(stops, str) else stops
    cuts = [text.find(s) for s in stops if isinstance(s, str) and s and s in text]
    if cuts:
        text = text[: min(cuts)]
    tokens = tokenize(text)
    limit = req.options.get("num_predict")
    if isinstance(limit, int | float) and 0 <= limit < len(tokens):
        tokens = tokens[: int(limit)]
        plan.done_reason = "length"
    plan.content = tokens
    return plan


# --------------------------------------------------------------------------
# request parsing (one per route)


# Python's JSON syntax errors and the context encoding/json names for the same mistake.
_GO_SYNTAX_CONTEXT = {
    "Expecting value": "looking for beginning of value",
    "Expecting property name": "looking for beginning of object key string",
    "Expecting ':' delimiter": "after object key",
    "Invalid control character at": "in string literal",
    "Invalid \\escape": "in string escape code",
}


def _go_char(char: str) -> str:
    """A character as encoding/json's quoteChar writes it."""
    if char == "'":
        return "'\\''"
    if char == '"':
        return "'\"'"
    return "'" + json.dumps(char)[1:-1] + "'"


def _innermost(text: str, pos: int) -> str:
    """The bracket that is open at ``pos`` ("{", "[" or "")."""
    stack: list[str] = []
    in_string = escaped = False
    for char in text[:pos]:
        if in_string:
            in_string = escaped or char != '"'
            escaped = not escaped and char == "\\"
        elif char == '"':
            in_string = True
        elif char in "{[":
            stack.append(char)
        elif char in "}]" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def decode_json(raw: bytes) -> Any:
    """A request body as gin's ShouldBindJSON reads it (json.Decoder: the first value, what
    follows it unread), or a 400 with encoding/json's text: "unexpected EOF" for a body that
    stops early, "invalid character 'x' looking for beginning of value" and the like."""
    text = raw.decode("utf-8", errors="replace")
    start = len(text) - len(text.lstrip())
    try:
        return json.JSONDecoder().raw_decode(text, start)[0]
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
            raise RequestError(400, "unexpected EOF") from None
        context = next(
            (go for py, go in _GO_SYNTAX_CONTEXT.items() if exc.msg.startswith(py)), None
        )
        if context is None:  # Expecting ',' delimiter
            in_object = _innermost(text, exc.pos) == "{"
            context = "after object key:value pair" if in_object else "after array element"
        # Python points at an escape's backslash, Go at the character after it.
        pos = exc.pos + 1 if context == "in string escape code" else exc.pos
        raise RequestError(400, f"invalid character {_go_char(text[pos])} {context}") from None


def _require_object(body: Any, go_type: str) -> dict[str, Any]:
    """Reject non-object bodies the way Go's json.Unmarshal does (null is {})."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        kind = {list: "array", str: "string"}.get(type(body), "number")
        raise RequestError(400, f"json: cannot unmarshal {kind} into Go value of type {go_type}")
    return body


_GO_KINDS: dict[str, Callable[[Any], bool]] = {
    "bool": lambda v: isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "int": lambda v: _is_number(v) and float(v).is_integer(),
    "float64": _is_number,
    "float32": _is_number,
}


def _check_fields(body: dict[str, Any], go_struct: str, fields: Mapping[str, str]) -> None:
    """Bind errors of typed struct fields, in the body's order as encoding/json meets them
    (null leaves a field unset): "json: cannot unmarshal string into Go struct field
    ChatCompletionRequest.temperature of type float64"."""
    for key, value in body.items():
        go_type = fields.get(key)
        if go_type is None or value is None or _GO_KINDS[go_type](value):
            continue
        kind = _json_kind(value)
        if kind == "number":  # a number that does not fit: Go quotes its literal
            kind = f"number {value}"
        raise RequestError(
            400,
            f"json: cannot unmarshal {kind} into Go struct field {go_struct}.{key} "
            f"of type {go_type}",
        )


def _bind_error(value: Any, go_field: str, go_type: str) -> RequestError:
    """encoding/json's UnmarshalTypeError for a value of the wrong JSON kind."""
    return RequestError(
        400,
        f"json: cannot unmarshal {_json_kind(value)} into Go struct field {go_field} "
        f"of type {go_type}",
    )


def _check_stream(body: dict[str, Any], default: bool, go_type: str) -> bool:
    """The ``stream`` flag, typed like Go's ``*bool``."""
    value = body.get("stream")
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bind_error(value, f"{go_type}.stream", "bool")
    return value


def _check_think(value: Any) -> Any:
    """Validate ``think`` like api.ThinkValue."""
    if value is None or isinstance(value, bool) or value in THINK_LEVELS:
        return value
    raise RequestError(
        400,
        f'invalid think value: "{value}" (must be "high", "medium", "low", true, or false)',
    )


def _check_format(value: Any) -> Any:
    """``format``: "" is unset; anything but "json" or a schema object is refused only by
    the runner, once the model is loaded (0.12.10 llm/server.go Completion)."""
    return None if value in (None, "") else value


def _check_keep_alive(value: Any) -> float | None:
    """Decode ``keep_alive`` or reject it with Go's error text."""
    if value is None:
        return None
    try:
        return parse_keep_alive(value)
    except (TypeError, ValueError) as exc:
        raise RequestError(400, str(exc)) from None


def _check_options(value: Any, go_field: str = "ChatRequest.options") -> dict[str, Any]:
    """``options`` must be an object (a Go ``map[string]any``)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bind_error(value, go_field, "map[string]interface {}")
    return dict(value)


def _check_model(body: dict[str, Any]) -> str:
    """The requested model name, or 400 "model is required"."""
    name = body.get("model")
    if not valid_model_name(name):
        raise HandlerError(400, "model is required")
    return str(name)


def parse_chat(body: Any) -> GenRequest:
    """Decode a POST /api/chat body (api.ChatRequest)."""
    body = _require_object(body, "api.ChatRequest")
    messages = body.get("messages") or []
    if not isinstance(messages, list):
        raise _bind_error(messages, "ChatRequest.messages", "[]api.Message")
    for message in messages:
        if not isinstance(message, dict):
            # api.Message decodes through an alias type (its UnmarshalJSON), and Go names it.
            raise _bind_error(message, "ChatRequest.messages", "api.Alias")
    tools = body.get("tools") or []
    return GenRequest(
        model=_check_model(body),
        messages=messages,
        options=_check_options(body.get("options")),
        stream=_check_stream(body, True, "ChatRequest"),
        keep_alive=_check_keep_alive(body.get("keep_alive")),
        format=_check_format(body.get("format")),
        think=_check_think(body.get("think")),
        tools=tools if isinstance(tools, list) else [],
        preload=not messages,
    )


def parse_generate(body: Any) -> GenRequest:
    """Decode a POST /api/generate body (api.GenerateRequest)."""
    body = _require_object(body, "api.GenerateRequest")
    prompt = body.get("prompt") or ""
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("system"), str) and body["system"]:
        messages.append({"role": "system", "content": body["system"]})
    messages.append({"role": "user", "content": str(prompt)})
    return GenRequest(
        model=_check_model(body),
        messages=messages,
        options=_check_options(body.get("options"), "GenerateRequest.options"),
        stream=_check_stream(body, True, "GenerateRequest"),
        keep_alive=_check_keep_alive(body.get("keep_alive")),
        format=_check_format(body.get("format")),
        think=_check_think(body.get("think")),
        preload=not prompt and not body.get("images"),
    )


def _openai_options(body: dict[str, Any]) -> dict[str, Any]:
    """Map OpenAI sampling fields onto Ollama options like openai.go does."""
    options: dict[str, Any] = {"temperature": body.get("temperature", 1.0)}
    stop = body.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list):
        options["stop"] = [s for s in stop if isinstance(s, str)]
    # Only max_tokens: 0.12.10 has no max_completion_tokens field, so it goes unread.
    if body.get("max_tokens") is not None:
        options["num_predict"] = body["max_tokens"]
    for key in ("seed", "frequency_penalty", "presence_penalty"):
        if body.get(key) is not None:
            options[key] = body[key]
    options["top_p"] = body.get("top_p", 1.0)
    return options


def _go_type(value: Any) -> str:
    """What Go's ``%T`` prints for a decoded JSON value held in an ``any``."""
    if value is None:
        return "<nil>"
    kinds = {bool: "bool", str: "string", list: "[]interface {}", dict: "map[string]interface {}"}
    return kinds.get(type(value), "float64")


def _json_kind(value: Any) -> str:
    """How encoding/json names a JSON value in an UnmarshalTypeError."""
    if isinstance(value, bool):
        return "bool"
    return {dict: "object", list: "array", str: "string"}.get(type(value), "number")


def _check_openai_bind(messages: list[Any]) -> None:
    """Binding errors of ChatCompletionRequest: ``function.arguments`` is a Go string."""
    for message in messages:
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        for call in calls if isinstance(calls, list) else []:
            function = call.get("function") if isinstance(call, dict) else None
            arguments = function.get("arguments") if isinstance(function, dict) else None
            if arguments is not None and not isinstance(arguments, str):
                # The innermost struct is anonymous, so Go prints an empty struct name.
                raise RequestError(
                    400,
                    f"json: cannot unmarshal {_json_kind(arguments)} into Go struct field "
                    ".messages.tool_calls.function.arguments of type string",
                )


def _openai_tool_calls(calls: Any) -> list[dict[str, Any]]:
    """OpenAI tool calls as api.ToolCall, like FromCompletionToolCall: arguments must be a
    JSON object (or null) encoded in a string."""
    converted = []
    for call in calls if isinstance(calls, list) else []:
        function = (call.get("function") if isinstance(call, dict) else None) or {}
        try:
            arguments = json.loads(function.get("arguments") or "")
        except ValueError:
            raise RequestError(400, "invalid tool call arguments") from None
        if arguments is not None and not isinstance(arguments, dict):
            raise RequestError(400, "invalid tool call arguments")
        name = function.get("name") or ""
        converted.append({"function": {"name": name, "arguments": arguments or {}}})
    return converted


_IMAGE_PREFIXES = tuple(f"data:image/{kind};base64," for kind in ("jpeg", "jpg", "png", "webp"))


def _openai_image(part: dict[str, Any]) -> str:
    """The base64 data of an ``image_url`` part, validated like FromChatRequest."""
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise RequestError(400, "invalid message format")
    for prefix in ("data:;base64,", *_IMAGE_PREFIXES):
        if url.startswith(prefix):
            data = url[len(prefix) :]
            break
    else:
        raise RequestError(400, "invalid image input")
    try:
        base64.b64decode(data, validate=True)
    except ValueError:
        raise RequestError(400, "invalid message format") from None
    return data


def _openai_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """OpenAI messages as api.Message, like 0.12.10 openai.FromChatRequest: string content,
    content parts (each ``text`` or ``image_url`` part its own message), or null content
    only beside tool_calls."""
    converted: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict):
            raise RequestError(400, "invalid message format")
        role = message.get("role") or ""
        content = message.get("content")
        calls = message.get("tool_calls")
        if isinstance(content, str):
            converted.append({"role": role, "content": content})
            if calls:
                converted[-1]["tool_calls"] = _openai_tool_calls(calls)
        elif isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    converted.append({"role": role, "content": part["text"]})
                elif kind == "image_url":
                    converted.append({"role": role, "content": "", "images": [_openai_image(part)]})
                else:
                    raise RequestError(400, "invalid message format")
            if converted and calls:
                converted[-1]["tool_calls"] = _openai_tool_calls(calls)
        elif calls is None:  # content may be null only when the message calls tools
            raise RequestError(400, f"invalid message content type: {_go_type(content)}")
        else:
            converted.append({"role": role, "content": "", "tool_calls": _openai_tool_calls(calls)})
    return converted


# The typed fields of openai.ChatCompletionRequest and openai.CompletionRequest (0.12.10
# openai/openai.go); the others are `any`, structs or slices, checked where they are read.
OPENAI_CHAT_FIELDS = {
    "model": "string",
    "stream": "bool",
    "max_tokens": "int",
    "seed": "int",
    "temperature": "float64",
    "frequency_penalty": "float64",
    "presence_penalty": "float64",
    "top_p": "float64",
    "reasoning_effort": "string",
}
OPENAI_COMPLETION_FIELDS = {
    **dict.fromkeys(("model", "prompt", "suffix"), "string"),
    **dict.fromkeys(("frequency_penalty", "presence_penalty", "temperature", "top_p"), "float32"),
    **dict.fromkeys(("max_tokens", "seed"), "int"),
    "stream": "bool",
}


def parse_openai_chat(body: Any) -> GenRequest:
    """Decode a POST /v1/chat/completions body (openai.ChatCompletionRequest)."""
    body = _require_object(body, "openai.ChatCompletionRequest")
    _check_fields(body, "ChatCompletionRequest", OPENAI_CHAT_FIELDS)
    messages = body.get("messages")
    if messages is not None and not isinstance(messages, list):
        raise _bind_error(messages, "ChatCompletionRequest.messages", "[]openai.Message")
    if isinstance(messages, list):
        _check_openai_bind(messages)  # gin's ShouldBindJSON runs before any other check
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "[] is too short - 'messages'")
    converted = _openai_messages(messages)
    fmt = None
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        kind = str(response_format.get("type", "")).strip().lower()
        if kind == "json_object":
            fmt = "json"
        elif kind == "json_schema":
            fmt = (response_format.get("json_schema") or {}).get("schema")
    effort = (body.get("reasoning") or {}).get("effort") or body.get("reasoning_effort")
    think: Any = None
    if effort:
        if effort not in (*THINK_LEVELS, "none"):
            raise RequestError(
                400,
                f"invalid reasoning value: '{effort}' "
                '(must be "high", "medium", "low", or "none")',
            )
        think = False if effort == "none" else effort
    tools = body.get("tools") or []
    return GenRequest(
        model=_check_model(body),
        messages=converted,
        options=_openai_options(body),
        stream=_check_stream(body, False, "ChatCompletionRequest"),
        format=fmt,
        think=think,
        tools=tools if isinstance(tools, list) else [],
        include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
    )


def parse_openai_completion(body: Any) -> GenRequest:
    """Decode a POST /v1/completions body (openai.CompletionRequest)."""
    body = _require_object(body, "openai.CompletionRequest")
    _check_fields(body, "CompletionRequest", OPENAI_COMPLETION_FIELDS)
    prompt = body.get("prompt") or ""
    return GenRequest(
        model=_check_model(body),
        messages=[{"role": "user", "content": prompt}],
        options=_openai_options(body),
        stream=_check_stream(body, False, "CompletionRequest"),
        include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
        preload=not prompt,
    )


# --------------------------------------------------------------------------
# renderers: one wire format per generation route


def _metrics(plan: Plan, timing: dict[str, int]) -> dict[str, int]:
    """The api.Metrics block of a final reply."""
    return {
        "total_duration": timing["total"],
        "load_duration": timing["load"],
        "prompt_eval_count": plan.prompt_eval_count,
        "prompt_eval_duration": timing["prompt"],
        "eval_count": plan.eval_count,
        "eval_duration": timing["eval"],
    }


def _tool_call_id() -> str:
    """A tool-call id like Ollama's toolCallId()."""
    alphabet = string.ascii_lowercase + string.digits
    return "call_" + "".join(random.choice(alphabet) for _ in range(8))


class Renderer:
    """Turns a Plan into one route's wire format (stream or whole)."""

    content_type: ClassVar[str] = "application/x-ndjson"
    # The Ollama handler behind the route: ChatHandler or GenerateHandler.
    handler: ClassVar[str] = "chat"

    def __init__(self, req: GenRequest) -> None:
        self.req = req
        self.stream = req.stream
        # Text the closing chunk carries (the ``final_text`` fault; /api/chat only).
        self.final_content = ""

    @staticmethod
    def error(
        status: int, message: str, *, middleware: bool = False, channel: bool = False
    ) -> web.Response:
        """An error reply before any byte of the answer was sent (``middleware``: the body
        failed to decode, which only the /v1 routes answer differently; ``channel``: it came
        down a stream's channel, where streamResponse sets a bare ``application/json``)."""
        if channel:
            body = _dumps({"error": message}).encode()
            headers = {"Content-Type": "application/json"}
            return web.Response(body=body, status=status, headers=headers)
        return web.json_response({"error": message}, status=status, dumps=_dumps)

    @staticmethod
    def not_found(model: str) -> str:
        """Error text for a model that is not installed."""
        return f"model '{model}' not found"

    @staticmethod
    def json(value: Any) -> web.Response:
        """A whole reply (gin's c.JSON)."""
        return web.json_response(value, dumps=_dumps)

    def step(self, kind: str, value: Any) -> bytes:
        """One stream chunk for a thinking token, tool-call batch or content token."""
        raise NotImplementedError

    def done(self, plan: Plan, timing: dict[str, int]) -> bytes:
        """The closing chunk(s) of a stream."""
        raise NotImplementedError

    def stream_error(self, message: str) -> bytes:
        """An error reported after the stream began."""
        return _line({"error": message})

    def whole(self, plan: Plan, timing: dict[str, int]) -> dict[str, Any]:
        """The single JSON object of a non-stream reply."""
        raise NotImplementedError

    def preload(self, reason: str) -> web.Response:
        """Answer to a load/unload request (no prompt)."""
        raise NotImplementedError


class ChatRenderer(Renderer):
    """POST /api/chat: api.ChatResponse objects as NDJSON."""

    def _chunk(self, message: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {
            "model": self.req.model,
            "created_at": go_time(),
            "message": {"role": "assistant", "content": "", **message},
            **extra,
        }

    def step(self, kind: str, value: Any) -> bytes:
        """One chat chunk."""
        return _line(self._chunk({kind: value}, done=False))

    def done(self, plan: Plan, timing: dict[str, int]) -> bytes:
        """Final chat chunk with done_reason and metrics (and any text held back for it)."""
        message = {"content": self.final_content} if self.final_content else {}
        return _line(
            self._chunk(message, done=True, done_reason=plan.done_reason, **_metrics(plan, timing))
        )

    def whole(self, plan: Plan, timing: dict[str, int]) -> dict[str, Any]:
        """Non-stream chat reply."""
        message: dict[str, Any] = {"content": plan.text}
        if plan.thinking:
            message["thinking"] = "".join(plan.thinking)
        if plan.tool_calls:
            message["tool_calls"] = plan.tool_calls
        return self._chunk(
            message, done=True, done_reason=plan.done_reason, **_metrics(plan, timing)
        )

    def preload(self, reason: str) -> web.Response:
        """Load/unload answer (ChatHandler with no messages)."""
        body = self._chunk({}, done_reason=reason, done=True)
        return web.json_response(body, dumps=_dumps)


class GenerateRenderer(Renderer):
    """POST /api/generate: api.GenerateResponse objects as NDJSON."""

    handler: ClassVar[str] = "generate"

    def _chunk(self, response: str, **extra: Any) -> dict[str, Any]:
        return {
            "model": self.req.model,
            "created_at": go_time(),
            "response": response,
            **extra,
        }

    def step(self, kind: str, value: Any) -> bytes:
        """One generate chunk (thinking goes in its own field)."""
        if kind == "thinking":
            return _line(self._chunk("", thinking=value, done=False))
        return _line(self._chunk(value, done=False))

    def _final(self, plan: Plan, timing: dict[str, int], response: str) -> dict[str, Any]:
        context = [len(t) for t in plan.content] or [0]
        return self._chunk(
            response,
            done=True,
            done_reason=plan.done_reason,
            context=context,
            **_metrics(plan, timing),
        )

    def done(self, plan: Plan, timing: dict[str, int]) -> bytes:
        """Final generate chunk with context and metrics."""
        return _line(self._final(plan, timing, ""))

    def whole(self, plan: Plan, timing: dict[str, int]) -> dict[str, Any]:
        """Non-stream generate reply."""
        body = self._final(plan, timing, plan.text)
        if plan.thinking:
            body["thinking"] = "".join(plan.thinking)
        return body

    def preload(self, reason: str) -> web.Response:
        """Load/unload answer (GenerateHandler with an empty prompt)."""
        body = self._chunk("", done=True, done_reason=reason)
        return web.json_response(body, dumps=_dumps)


def encoded_json(value: Any, status: int = 200) -> web.Response:
    """A body as the /v1 writers send it (0.12.10 middleware/openai.go): json.NewEncoder's
    output, with its trailing newline, under a bare ``application/json``; what gin writes
    itself (c.JSON, the middleware's own 400s) has ``charset=utf-8`` and no newline."""
    body = (_dumps(value) + "\n").encode()
    return web.Response(body=body, status=status, headers={"Content-Type": "application/json"})


def openai_error(status: int, message: str, *, middleware: bool = False) -> web.Response:
    """An OpenAI-style error object as 0.12.10 writes it: typed by openai.NewError from the
    status when the /v1 middleware itself refuses the body, else ``api_error`` whatever the
    status, as BaseWriter.writeError wraps every handler error in NewError(500, ...)."""
    kind = "api_error"
    if middleware:
        kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, kind)
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    if not middleware:
        return encoded_json(body, status)
    return web.json_response(body, status=status, dumps=_dumps)


class OpenAIRenderer(Renderer):
    """Shared parts of the /v1 generation routes (SSE streams, OpenAI errors)."""

    content_type: ClassVar[str] = "text/event-stream"
    id_prefix: ClassVar[str] = "chatcmpl"

    def __init__(self, req: GenRequest) -> None:
        super().__init__(req)
        self.id = f"{self.id_prefix}-{random.randrange(999)}"
        self.created = int(time.time())

    @staticmethod
    def error(
        status: int, message: str, *, middleware: bool = False, channel: bool = False
    ) -> web.Response:
        """OpenAI-form error (the /v1 writer's, however the handler met it)."""
        return openai_error(status, message, middleware=middleware)

    @staticmethod
    def json(value: Any) -> web.Response:
        """A whole reply, through the /v1 writer."""
        return encoded_json(value)

    def empty_chunk(self) -> dict[str, Any]:
        """The chunk the middleware makes of a response with nothing in it."""
        raise NotImplementedError

    def stream_error(self, message: str) -> bytes:
        """What 0.12.10 makes of an error after the stream began: the handler's error line
        reaches ChatWriter.writeResponse (the status is already 200), decodes as an empty
        response and goes out as one empty chunk with ``"model": ""``; no finish_reason,
        no ``[DONE]``, and the message is lost (middleware/openai.go)."""
        return _sse({**self.empty_chunk(), "model": ""})

    @staticmethod
    def usage(plan: Plan) -> dict[str, int]:
        """The usage block."""
        return {
            "prompt_tokens": plan.prompt_eval_count,
            "completion_tokens": plan.eval_count,
            "total_tokens": plan.prompt_eval_count + plan.eval_count,
        }

    def envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        """Fields every completion object and chunk carries."""
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.req.model,
            "system_fingerprint": "fp_ollama",
            "choices": choices,
        }

    def finish_reason(self, plan: Plan) -> str:
        """OpenAI finish_reason for a plan."""
        return "tool_calls" if plan.tool_calls else plan.done_reason

    def closing(self, last: dict[str, Any], plan: Plan) -> bytes:
        """Final chunk, optional usage chunk and the [DONE] marker."""
        out = _sse(last)
        if self.req.include_usage:
            out += _sse({**last, "choices": [], "usage": self.usage(plan)})
        return out + b"data: [DONE]\n\n"


class OpenAIChatRenderer(OpenAIRenderer):
    """POST /v1/chat/completions."""

    def _tool_calls(self, plan_calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                "id": call["id"],
                "index": i,
                "type": "function",
                "function": {
                    "name": call["function"]["name"],
                    "arguments": _dumps(call["function"]["arguments"]),
                },
            }
            for i, call in enumerate(plan_calls)
        ]

    def _delta_chunk(self, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": "", **delta},
            "finish_reason": finish,
        }
        return self.envelope("chat.completion.chunk", [choice])

    def empty_chunk(self) -> dict[str, Any]:
        """openai.ToChunk of an empty api.ChatResponse."""
        return self._delta_chunk({}, None)

    def step(self, kind: str, value: Any) -> bytes:
        """One chat.completion.chunk event."""
        delta = {
            "thinking": lambda: {"reasoning": value},
            "tool_calls": lambda: {"tool_calls": self._tool_calls(value)},
            "content": lambda: {"content": value},
        }[kind]()
        return _sse(self._delta_chunk(delta, None))

    def done(self, plan: Plan, timing: dict[str, int]) -> bytes:
        """Last chunk carries finish_reason; then usage and [DONE]."""
        return self.closing(self._delta_chunk({}, self.finish_reason(plan)), plan)

    def whole(self, plan: Plan, timing: dict[str, int]) -> dict[str, Any]:
        """A chat.completion object."""
        message: dict[str, Any] = {"role": "assistant", "content": plan.text}
        if plan.thinking:
            message["reasoning"] = "".join(plan.thinking)
        if plan.tool_calls:
            message["tool_calls"] = self._tool_calls(plan.tool_calls)
        choice = {"index": 0, "message": message, "finish_reason": self.finish_reason(plan)}
        return {**self.envelope("chat.completion", [choice]), "usage": self.usage(plan)}


class OpenAICompletionRenderer(OpenAIRenderer):
    """POST /v1/completions."""

    id_prefix: ClassVar[str] = "cmpl"
    handler: ClassVar[str] = "generate"

    def _text_chunk(self, text: str, finish: str | None) -> dict[str, Any]:
        chunk = self.envelope(
            "text_completion", [{"text": text, "index": 0, "finish_reason": finish}]
        )
        if self.req.include_usage:
            chunk["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return chunk

    def empty_chunk(self) -> dict[str, Any]:
        """openai.ToCompleteChunk of an empty api.GenerateResponse."""
        return self._text_chunk("", None)

    def step(self, kind: str, value: Any) -> bytes:
        """One text_completion chunk (thinking is not part of completions)."""
        return _sse(self._text_chunk(value if kind == "content" else "", None))

    def done(self, plan: Plan, timing: dict[str, int]) -> bytes:
        """Closing chunk with finish_reason, optional usage, [DONE]."""
        return self.closing(self._text_chunk("", plan.done_reason), plan)

    def whole(self, plan: Plan, timing: dict[str, int]) -> dict[str, Any]:
        """A text_completion object."""
        choice = {"text": plan.text, "index": 0, "finish_reason": plan.done_reason}
        return {**self.envelope("text_completion", [choice]), "usage": self.usage(plan)}

    def preload(self, reason: str) -> web.Response:
        """Empty prompt: Ollama loads the model and answers done_reason "load"."""
        plan = Plan(content=[], done_reason=reason, prompt_eval_count=0)
        if self.stream:
            body = self.done(plan, {})
            return web.Response(body=body, content_type=self.content_type)
        return encoded_json(self.whole(plan, {}))


# --------------------------------------------------------------------------
# the server


class _Slots:
    """Generation slots whose limit follows the live config (num_parallel)."""

    def __init__(self) -> None:
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self, limit: Callable[[], int]) -> None:
        """Wait for a free slot and take it."""
        while self.active >= limit():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        self.active += 1

    def release(self) -> None:
        """Give a slot back."""
        self.active -= 1
        self.wake()

    def wake(self) -> None:
        """Let every waiter re-check (after a release or a config change)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


@dataclass
class _Loaded:
    """A model resident in memory, as /api/ps lists it."""

    expires_ns: int
    num_ctx: int


def _new_stats() -> dict[str, Any]:
    """Zeroed counters."""
    return {
        "requests": {},
        "in_flight": 0,
        "max_in_flight": 0,
        "queued": 0,
        "chat_requests": deque(maxlen=MAX_RECORDED_BODIES),
        "stream_token_times": deque(maxlen=MAX_RECORDED_BODIES),
        "loads": 0,
        "faults_served": 0,
        "cancelled": 0,
    }


class FakeOllama(OllamaReadings, ThreadedServer):
    """A real aiohttp server on 127.0.0.1 that behaves like Ollama for tests."""

    thread_name = "fake-ollama"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_requests: bool = False,
        **config: Any,
    ) -> None:
        self.host = host
        self.port = port
        self.log_requests = log_requests
        self._lock = threading.RLock()
        self._config = dataclasses.replace(FakeConfig(), **coerce_config(config))
        self._registry: dict[str, ModelEntry] = {}
        self._loaded: dict[str, _Loaded] = {}
        self._loading: dict[str, asyncio.Future[None]] = {}
        self._load_queue = 0  # requests waiting for a load they did not start
        self._stats = _new_stats()
        self._rng = random.Random(self._config.seed)
        self._slots = _Slots()
        self._init_thread_state()
        self._load_registry()

    # ---- public, thread-safe API ------------------------------------------

    @property
    def host_port(self) -> str:
        """``127.0.0.1:PORT`` (what OLLAMA_HOST would hold)."""
        port = self.bound_port or self.port
        if not port:
            raise RuntimeError("the fake is not listening yet")
        return f"{connect_host(self.host)}:{port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host_port}"

    def start_timeout_s(self) -> float:
        """The start delay, and some."""
        return self.config().start_delay_s + 10

    def config(self) -> FakeConfig:
        """A copy of the live configuration."""
        with self._lock:
            return copy.deepcopy(self._config)

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change config fields now (validated); returns the full config."""
        values = coerce_config(changes)
        with self._lock:
            self._config = dataclasses.replace(self._config, **values)
            if "models" in values:
                self._set_installed(values["models"])
            if "seed" in values:
                self._rng = random.Random(values["seed"])
            result = dataclasses.asdict(self._config)
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._slots.wake)
        return result

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters (see the module docstring)."""
        with self._lock:
            snapshot = copy.deepcopy(self._stats)
        snapshot["chat_requests"] = list(snapshot["chat_requests"])
        snapshot["stream_token_times"] = list(snapshot["stream_token_times"])
        return snapshot

    def reset_stats(self) -> None:
        """Zero the counters, drop queued faults and reseed; models stay."""
        with self._lock:
            fresh = _new_stats()
            fresh["in_flight"] = fresh["max_in_flight"] = self._stats["in_flight"]
            fresh["queued"] = self._stats["queued"]
            self._stats = fresh
            self._config.fail_next = []
            self._rng = random.Random(self._config.seed)

    def installed(self) -> list[str]:
        """Names of the installed models."""
        with self._lock:
            return list(self._registry)

    # ---- registry -----------------------------------------------------------

    def _load_registry(self) -> None:
        """Installed models from the state file if present, else config.models."""
        path = self._config.state_file
        if path and Path(path).is_file():
            data = json.loads(Path(path).read_text())
            entries = [ModelEntry(**item) for item in data.get("models", [])]
            self._registry = {e.name: e for e in entries}
            self._config.models = list(self._registry)
        else:
            self._set_installed(self._config.models, persist=False)

    def _set_installed(self, names: list[str], persist: bool = True) -> None:
        """Make exactly these models installed (keeping known metadata)."""
        registry: dict[str, ModelEntry] = {}
        for raw in names:
            name = normalize_model(raw)
            registry[name] = self._registry.get(name) or ModelEntry.fresh(name)
        self._registry = registry
        self._sync_models(persist)

    def _sync_models(self, persist: bool = True) -> None:
        """Mirror the registry into config.models and the state file."""
        self._config.models = list(self._registry)
        for name in list(self._loaded):
            if name not in self._registry:
                del self._loaded[name]
        path = self._config.state_file
        if persist and path:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            entries = [dataclasses.asdict(e) for e in self._registry.values()]
            tmp.write_text(json.dumps({"models": entries}, indent=1))
            os.replace(tmp, target)

    def _find(self, name: str) -> ModelEntry | None:
        """Installed model by name (tag defaults to latest, case-insensitive)."""
        wanted = normalize_model(name).lower()
        with self._lock:
            return next((e for key, e in self._registry.items() if key.lower() == wanted), None)

    def _add_model(self, entry: ModelEntry) -> None:
        """Install (or replace) a model and persist."""
        with self._lock:
            self._registry.pop(entry.name, None)
            self._registry[entry.name] = entry
            self._sync_models()

    # ---- loading, slots, faults --------------------------------------------

    def _count(self, key: str, amount: int = 1) -> None:
        """Adjust a counter; in_flight also tracks its peak."""
        with self._lock:
            self._stats[key] += amount
            if key == "in_flight":
                peak = max(self._stats["max_in_flight"], self._stats["in_flight"])
                self._stats["max_in_flight"] = peak

    def _touch(self, name: str, keep_alive: float, num_ctx: int | None = None) -> None:
        """Set when a loaded model expires (keep_alive 0 unloads it now)."""
        with self._lock:
            if keep_alive == 0:
                self._loaded.pop(name, None)
                return
            now = time.time_ns()
            expires = (
                now + FOREVER_NS if math.isinf(keep_alive) else now + int(keep_alive * NS_PER_S)
            )
            previous = self._loaded.get(name)
            ctx = num_ctx or (previous.num_ctx if previous else DEFAULT_NUM_CTX)
            self._loaded[name] = _Loaded(expires_ns=expires, num_ctx=ctx)

    def _release_model(self, name: str, keep_alive: float) -> None:
        """After a request: restart the keep-alive clock, or unload on 0."""
        with self._lock:
            resident = name in self._loaded
        if keep_alive == 0 or resident:
            self._touch(name, keep_alive)

    def _resident(self) -> dict[str, _Loaded]:
        """Loaded models that have not expired (expired ones are dropped)."""
        now = time.time_ns()
        with self._lock:
            for name, loaded in list(self._loaded.items()):
                if loaded.expires_ns <= now:
                    del self._loaded[name]
            return dict(self._loaded)

    async def _ensure_loaded(self, name: str, keep_alive: float, num_ctx: int) -> int:
        """Load a model unless resident; concurrent callers share one load.

        Returns the nanoseconds this request waited.
        """
        started = time.monotonic_ns()
        if name not in self._resident():
            pending = self._loading.get(name)
            if pending is None:
                pending = asyncio.ensure_future(self._load(name, num_ctx))
                self._loading[name] = pending
                await asyncio.shield(pending)
            else:
                # While a model loads, the requests for it wait in the scheduler's pending
                # queue, OLLAMA_MAX_QUEUE long; past that Ollama answers 503 at once
                # (0.12.10 server/sched.go GetRunner, ErrMaxQueue). This is its only 503.
                with self._lock:
                    if self._load_queue >= self._config.max_queue:
                        raise HandlerError(503, BUSY_ERROR)
                    self._load_queue += 1
                try:
                    await asyncio.shield(pending)
                finally:
                    with self._lock:
                        self._load_queue -= 1
        self._touch(name, math.inf if keep_alive == 0 else keep_alive, num_ctx)
        return max(1, time.monotonic_ns() - started)

    async def _load(self, name: str, num_ctx: int) -> None:
        """The shared load task: wait load_delay_s, then mark resident."""
        try:
            await asyncio.sleep(self.config().load_delay_s)
            self._touch(name, math.inf, num_ctx)
            self._count("loads")
        finally:
            self._loading.pop(name, None)

    def _take_fault(self) -> dict[str, Any] | None:
        """The next queued fault, else a random one at fail_rate."""
        with self._lock:
            cfg = self._config
            if cfg.fail_next:
                return cfg.fail_next.pop(0)
            if cfg.fail_rate and self._rng.random() < cfg.fail_rate:
                return {"status": cfg.fail_status}
            return None

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        """Close the connection; the returned response is never sent."""
        if request.transport is not None:
            request.transport.close()
        return web.Response()

    # ---- generation ----------------------------------------------------------

    async def _generation(
        self,
        request: web.Request,
        renderer_cls: type[Renderer],
        parse: Callable[[Any], GenRequest],
    ) -> web.StreamResponse:
        """Shared flow of the four generation routes."""
        started = time.monotonic_ns()
        raw = await request.read()
        body: Any = None
        decode_error = "missing request body" if not raw.strip() else None
        if raw.strip():
            try:
                body = decode_json(raw)
            except RequestError as exc:
                decode_error = exc.message
            else:
                with self._lock:
                    self._stats["chat_requests"].append(copy.deepcopy(body))
        fault = self._take_fault() or {}
        if "html_error" in fault:
            self._count("faults_served")
            status = int(fault["html_error"])
            page = HTML_ERROR_PAGE.format(status=status, phrase=HTTPStatus(status).phrase)
            return web.Response(status=status, text=page, content_type="text/html")
        if "status" in fault or fault.get("drop") == "before_headers":
            self._count("faults_served")
            if "status" in fault:
                status = int(fault["status"])
                message = fault.get("error") or FAULT_MESSAGES.get(status, f"fake fault {status}")
                return renderer_cls.error(status, message)
            return self._drop(request)
        try:
            if decode_error:
                raise RequestError(400, decode_error)
            req = parse(body)
        except RequestError as exc:
            middleware = not isinstance(exc, HandlerError)
            return renderer_cls.error(exc.status, exc.message, middleware=middleware)
        entry = self._find(req.model)
        if entry is None:
            return renderer_cls.error(404, renderer_cls.not_found(req.model))
        cfg = self.config()
        keep_alive = req.keep_alive
        if keep_alive is None:
            keep_alive = server_keep_alive(cfg.keep_alive)
        options = {**entry.parameters, **req.options}
        req.options = options
        num_ctx = options.get("num_ctx")  # its type is checked before any load
        num_ctx = int(num_ctx) if _is_number(num_ctx) and num_ctx >= 1 else DEFAULT_NUM_CTX
        renderer = renderer_cls(req)
        if req.preload and keep_alive == 0:
            self._touch(entry.name, 0)
            return await self._finish_quick(request, renderer, cfg, fault, "unload")
        try:
            self._check_think_before_load(req, entry, renderer_cls.handler)
            self._check_schedulable(req, entry)
            if req.preload:
                await self._ensure_loaded(entry.name, keep_alive, num_ctx)
                return await self._finish_quick(request, renderer, cfg, fault, "load")
        except RequestError as exc:
            return renderer_cls.error(exc.status, exc.message)
        self._count("queued")
        try:
            try:
                load_ns = await self._ensure_loaded(entry.name, keep_alive, num_ctx)
                if renderer_cls.handler == "chat":  # ChatHandler checks the level once loaded
                    self._check_think_level(req, entry)
                self._check_inputs(req, entry)
                # A loaded model's requests wait for a slot without limit, as they wait on
                # the runner's semaphore in Ollama: no 503 however long the wait.
                await self._slots.acquire(lambda: self._config.num_parallel)
            finally:
                self._count("queued", -1)
            self._count("in_flight")
            try:
                plan = plan_reply(req, cfg.reply, entry.system)
                timing = {"start": started, "load": load_ns}
                return await self._answer(request, renderer, plan, cfg, fault, timing)
            finally:
                self._count("in_flight", -1)
                self._slots.release()
        except RequestError as exc:
            channel = isinstance(exc, RunnerError) and req.stream
            return renderer_cls.error(exc.status, exc.message, channel=channel)
        except asyncio.CancelledError:
            # The client went away: aiohttp cancels this handler (handler_cancellation), as
            # Go cancels the request's context, and generation stops, stream or not.
            self._count("cancelled")
            raise
        finally:
            self._release_model(entry.name, keep_alive)

    def _families(self, entry: ModelEntry) -> list[str]:
        """The model's base names, lower-case and untagged: its own and its ancestors'."""
        names, seen, current = [], set(), entry
        while current is not None and current.name not in seen:
            seen.add(current.name)
            names.append(current.name.rsplit("/", 1)[-1].split(":", 1)[0].lower())
            current = self._find(current.parent_model) if current.parent_model else None
        return names

    def _can_think(self, entry: ModelEntry) -> bool:
        """Whether the model has the thinking capability (``thinking_models`` prefixes)."""
        if self._completion_only(entry):
            return False
        prefixes = tuple(p.lower() for p in self.config().thinking_models)
        return any(family.startswith(prefixes) for family in self._families(entry))

    def _completion_only(self, entry: ModelEntry) -> bool:
        """Whether completion is the model's only capability (``completion_only_models``)."""
        prefixes = tuple(p.lower() for p in self.config().completion_only_models)
        return bool(prefixes) and any(f.startswith(prefixes) for f in self._families(entry))

    def capabilities(self, entry: ModelEntry) -> list[str]:
        """What /api/show lists and the handlers check (0.12.10 server/images.go)."""
        if self._completion_only(entry):
            return ["completion"]
        return ["completion", "tools"] + (["thinking"] if self._can_think(entry) else [])

    def _check_schedulable(self, req: GenRequest, entry: ModelEntry) -> None:
        """scheduleRunner's checks before a load (0.12.10 server/routes.go): the capabilities
        asked for (CheckCapabilities, named by the full model name, then a 400 from
        handleScheduleError), then the options' types (modelOptions, a 500)."""
        if req.tools and "tools" not in self.capabilities(entry):
            raise HandlerError(400, f"{full_name(entry.name)} does not support tools")
        if (problem := option_type_error(req.options)) is not None:
            raise HandlerError(500, problem)

    def _check_inputs(self, req: GenRequest, entry: ModelEntry) -> None:
        """The runner's refusals once loaded: a format that is neither "json" nor a schema
        (0.12.10 llm/server.go Completion), images a model cannot see (runner/ollamarunner)."""
        if req.format is not None and req.format != "json" and not isinstance(req.format, dict):
            quoted = json.dumps(_dumps(req.format), ensure_ascii=False)  # Go's %q of the JSON
            raise RunnerError(
                500, f'invalid format: {quoted}; expected "json" or a valid JSON Schema object'
            )
        if self._completion_only(entry) and any(m.get("images") for m in req.messages):
            raise RunnerError(500, NO_VISION_ERROR)

    def _check_think_before_load(self, req: GenRequest, entry: ModelEntry, handler: str) -> None:
        """ChatHandler/GenerateHandler before scheduling (0.12.10 server/routes.go): a thinking
        model thinks unless told not to; any other refuses ``think`` with 400."""
        if handler == "generate":  # GenerateHandler checks the level first
            self._check_think_level(req, entry)
        if self._can_think(entry):
            if req.think is None:
                req.think = True
        elif req.think not in (None, False):
            raise HandlerError(400, f"{_dumps(req.model)} does not support thinking")

    def _check_think_level(self, req: GenRequest, entry: ModelEntry) -> None:
        """A think level ("high", ...) only for harmony models (gpt-oss), as 0.12.10 has it."""
        if isinstance(req.think, str) and not any(
            family.startswith(HARMONY_FAMILIES) for family in self._families(entry)
        ):
            raise HandlerError(400, f'think value "{req.think}" is not supported for this model')

    async def _finish_quick(
        self,
        request: web.Request,
        renderer: Renderer,
        cfg: FakeConfig,
        fault: dict[str, Any],
        reason: str,
    ) -> web.StreamResponse:
        """Preload/unload answer, honouring header delay and stream faults."""
        await asyncio.sleep(cfg.header_delay_s + float(fault.get("delay_s", 0)))
        if "midstream_error" in fault:
            self._count("faults_served")
            return renderer.error(500, str(fault["midstream_error"]))
        if fault.get("drop") == "mid_stream":
            self._count("faults_served")
            return self._drop(request)
        if "delay_s" in fault:
            self._count("faults_served")
        return renderer.preload(reason)

    async def _answer(
        self,
        request: web.Request,
        renderer: Renderer,
        plan: Plan,
        cfg: FakeConfig,
        fault: dict[str, Any],
        timing: dict[str, int],
    ) -> web.StreamResponse:
        """Emit the plan with its timing, as a stream or one object."""
        slot_ns = time.monotonic_ns()
        await asyncio.sleep(cfg.header_delay_s + float(fault.get("delay_s", 0)))
        if "delay_s" in fault:
            self._count("faults_served")
        mid_error = fault.get("midstream_error")
        drop_mid = fault.get("drop") == "mid_stream"
        steps = plan.steps()
        if mid_error is not None or drop_mid:
            steps = steps[: int(fault.get("after_tokens", 0))]
            self._count("faults_served")
        if fault.get("empty_stream"):
            self._count("faults_served")
            if not renderer.stream:
                return web.json_response(ZERO_CHAT_RESPONSE, dumps=_dumps)
            return await self._open_stream(request, renderer)
        bad_line = fault.get("bad_line")
        if bad_line is not None:
            self._count("faults_served")
        if fault.get("final_text") and renderer.stream:
            self._count("faults_served")
            held = int(fault["final_text"])
            kept = [step for step in steps if step[0] != "content"]
            content = [step for step in steps if step[0] == "content"]
            cut = max(0, len(content) - held)
            steps = kept + content[:cut]
            renderer.final_content = "".join(str(value) for _, value in content[cut:])
        first_ns = None
        response: web.StreamResponse | None = None
        written: list[float] = []  # time.monotonic() as each token chunk is written
        for index, (kind, value) in enumerate(steps):
            delay = cfg.first_token_delay_s if index == 0 else cfg.token_delay_s
            await asyncio.sleep(delay)
            first_ns = first_ns or time.monotonic_ns()
            if renderer.stream:
                if response is None:
                    response = await self._open_stream(request, renderer)
                if bad_line is not None and index == int(fault.get("after_tokens", 0)):
                    await response.write(str(bad_line).encode() + b"\n")
                chunk = renderer.step(kind, value)
                written.append(time.monotonic())  # as the chunk goes to the socket
                await response.write(chunk)
        if written:
            with self._lock:
                self._stats["stream_token_times"].append(written)
        if mid_error is not None and response is None:
            return renderer.error(500, str(mid_error))
        if drop_mid:
            if renderer.stream and response is None:
                await self._open_stream(request, renderer)
            return self._drop(request)
        now = time.monotonic_ns()
        first_ns = first_ns or now
        timing = {
            "total": max(1, now - timing["start"]),
            "load": timing["load"],
            "prompt": max(1, first_ns - slot_ns),
            "eval": max(1, now - first_ns),
        }
        if not renderer.stream:
            return renderer.json(renderer.whole(plan, timing))
        if response is None:
            response = await self._open_stream(request, renderer)
        if mid_error is not None:
            await response.write(renderer.stream_error(str(mid_error)))
        else:
            await response.write(renderer.done(plan, timing))
        return response

    @staticmethod
    async def _open_stream(request: web.Request, renderer: Renderer) -> web.StreamResponse:
        """Send the 200 headers of a stream (Ollama does so with the first chunk)."""
        response = web.StreamResponse(status=200)
        response.content_type = renderer.content_type
        await response.prepare(request)
        return response

    # ---- handlers --------------------------------------------------------------

    async def _root(self, request: web.Request) -> web.Response:
        """GET / and HEAD /: the health text (500 when never_healthy)."""
        if self.config().never_healthy:
            return web.json_response({"error": "fake: never healthy"}, status=500)
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.Response:
        """GET /api/version."""
        cfg = self.config()
        if cfg.never_healthy:
            return web.json_response({"error": "fake: never healthy"}, status=500)
        return web.json_response({"version": cfg.version}, dumps=_dumps)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        """POST /api/chat."""
        return await self._generation(request, ChatRenderer, parse_chat)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        """POST /api/generate."""
        return await self._generation(request, GenerateRenderer, parse_generate)

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/chat/completions."""
        return await self._generation(request, OpenAIChatRenderer, parse_openai_chat)

    async def _openai_completion(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/completions."""
        return await self._generation(request, OpenAICompletionRenderer, parse_openai_completion)

    def _sorted_entries(self) -> list[ModelEntry]:
        """Installed models, newest first (the /api/tags order)."""
        with self._lock:
            entries = list(self._registry.values())
        return sorted(entries, key=lambda e: e.modified_ns, reverse=True)

    async def _tags(self, request: web.Request) -> web.Response:
        """GET /api/tags: installed models."""
        models = [e.tags_item() for e in self._sorted_entries()]
        return web.json_response({"models": models}, dumps=_dumps)

    async def _ps(self, request: web.Request) -> web.Response:
        """GET /api/ps: loaded models, longest remaining keep-alive first."""
        resident = self._resident()
        rows = [(resident[e.name], e) for e in self._sorted_entries() if e.name in resident]
        rows.sort(key=lambda row: row[0].expires_ns, reverse=True)
        models = [
            {
                "name": entry.name,
                "model": entry.name,
                "size": entry.size,
                "digest": entry.digest,
                "details": entry.details(),
                "expires_at": go_time(loaded.expires_ns),
                # Below 1, part of the model sits in system memory and runs on the CPU.
                "size_vram": int(entry.size * self.config().gpu_fraction),
                "context_length": loaded.num_ctx,
            }
            for loaded, entry in rows
        ]
        return web.json_response({"models": models}, dumps=_dumps)

    @staticmethod
    async def _json_body(request: web.Request, go_type: str = "request") -> dict[str, Any]:
        """Decode a JSON object body (into Go's ``go_type``) or raise a 400 RequestError."""
        raw = await request.read()
        if not raw.strip():
            raise RequestError(400, "missing request body")
        return _require_object(decode_json(raw), go_type)

    def _named(self, body: dict[str, Any]) -> ModelEntry:
        """The installed model a body names (``model`` or legacy ``name``)."""
        name = body.get("model") or body.get("name")
        if not valid_model_name(name):
            raise RequestError(400, "model is required")
        entry = self._find(str(name))
        if entry is None:
            raise RequestError(404, f"model '{name}' not found")
        return entry

    async def _show(self, request: web.Request) -> web.Response:
        """POST /api/show: Modelfile, parameters, template, details, capabilities."""
        entry = self._named(await self._json_body(request, "api.ShowRequest"))
        body: dict[str, Any] = {
            "modelfile": entry.modelfile(),
            "parameters": entry.parameters_text(),
            "template": entry.template,
            "details": entry.details(),
            "model_info": {
                "general.architecture": "llama",
                "general.parameter_count": int(entry.billions * 1e9),
                "llama.context_length": 131072,
                "llama.embedding_length": 4096,
            },
            # Listed without `verbose` too (0.12.10 GetModelInfo): a few of a llama's tensors.
            "tensors": [
                {"name": "token_embd.weight", "type": "Q4_K", "shape": [4096, 128256]},
                {"name": "blk.0.attn_q.weight", "type": "Q4_K", "shape": [4096, 4096]},
                {"name": "output_norm.weight", "type": "F32", "shape": [4096]},
            ],
            "capabilities": self.capabilities(entry),
            "modified_at": go_time(entry.modified_ns),
        }
        if entry.system:
            body["system"] = entry.system
        return web.json_response(body, dumps=_dumps)

    async def _delete(self, request: web.Request) -> web.Response:
        """DELETE /api/delete: uninstall (empty 200 body, like Ollama)."""
        entry = self._named(await self._json_body(request, "api.DeleteRequest"))
        with self._lock:
            self._registry.pop(entry.name, None)
            self._sync_models()
        return web.Response()

    async def _progress(
        self,
        request: web.Request,
        stream: bool,
        lines: list[dict[str, Any]],
        error: str | None,
        status: int = 500,
    ) -> web.StreamResponse:
        """Send progress lines (stream) or only the outcome (non-stream), as 0.12.10
        waitForStream and streamResponse do: both answer an error met before any line with
        ``status`` under a bare ``application/json`` (server/routes.go)."""
        if not stream or (error is not None and not lines):
            outcome = {"error": error} if error is not None else lines[-1]
            body = _dumps(outcome).encode()
            return web.Response(
                body=body,
                status=200 if error is None else status,
                headers={"Content-Type": "application/json"},
            )
        response = web.StreamResponse(status=200)
        response.content_type = "application/x-ndjson"
        await response.prepare(request)
        for item in lines:
            await response.write(_line(item))
        if error is not None:
            await response.write(_line({"error": error}))
        return response

    async def _pull(self, request: web.Request) -> web.StreamResponse:
        """POST /api/pull: progress lines, or the manifest error for unpullable names."""
        body = await self._json_body(request, "api.PullRequest")
        raw_name = body.get("model") or body.get("name")
        stream = _check_stream(body, True, "PullRequest")
        if not valid_model_name(raw_name):
            raise RequestError(400, "invalid model name")
        name = normalize_model(str(raw_name))
        cfg = self.config()
        failing = {normalize_model(n).lower() for n in cfg.pull_fail}
        lines: list[dict[str, Any]] = [{"status": "pulling manifest"}]
        if name.lower() in failing or not re.fullmatch(cfg.pullable, name):
            error = "pull model manifest: file does not exist"
            return await self._progress(request, stream, lines, error)
        entry = self._find(name) or ModelEntry.fresh(name)
        layers = [(entry.blob_digest, entry.size)] + [
            ("sha256:" + hashlib.sha256(f"{name}:{part}".encode()).hexdigest(), size)
            for part, size in (("template", 1_432), ("license", 12_320), ("params", 96))
        ]
        for digest, total in layers:
            status = f"pulling {digest[7:19]}"
            lines.append({"status": status, "digest": digest, "total": total})
            lines.append({"status": status, "digest": digest, "total": total, "completed": total})
        lines += [
            {"status": "verifying sha256 digest"},
            {"status": "writing manifest"},
            {"status": "success"},
        ]
        entry.modified_ns = time.time_ns()
        self._add_model(entry)
        return await self._progress(request, stream, lines, None)

    async def _create(self, request: web.Request) -> web.StreamResponse:
        """POST /api/create: derive a model from an installed one."""
        body = await self._json_body(request, "api.CreateRequest")
        raw_name = body.get("model") or body.get("name")
        stream = _check_stream(body, True, "CreateRequest")
        if not valid_model_name(raw_name):
            raise RequestError(400, "invalid model name")
        source = body.get("from")
        if not source:
            if body.get("files"):
                raise RequestError(400, "fake ollama: creating from files is not supported")
            # Sent down the progress channel, as CreateHandler does (server/create.go).
            return await self._progress(
                request, stream, [], "neither 'from' or 'files' was specified", status=400
            )
        base = self._find(str(source))
        if base is None:
            raise RequestError(404, f"model '{source}' not found")
        parameters = _check_options(body.get("parameters"), "CreateRequest.parameters")
        entry = ModelEntry(
            name=normalize_model(str(raw_name)),
            modified_ns=time.time_ns(),
            billions=base.billions,
            parent_model=base.name,
            system=str(body.get("system") or base.system),
            template=str(body.get("template") or base.template),
            parameters={**base.parameters, **parameters},
        )
        template_digest = hashlib.sha256(entry.template.encode()).hexdigest()
        lines: list[dict[str, Any]] = [
            {"status": f"using existing layer {base.blob_digest}"},
            {"status": f"using existing layer sha256:{template_digest}"},
        ]
        for part in ("system", "parameters"):
            if body.get(part):
                digest = hashlib.sha256(_dumps(body[part]).encode()).hexdigest()
                lines.append({"status": f"creating new layer sha256:{digest}"})
        lines += [{"status": "writing manifest"}, {"status": "success"}]
        self._add_model(entry)
        return await self._progress(request, stream, lines, None)

    async def _embed_vectors(
        self, body: dict[str, Any], inputs: Any
    ) -> tuple[ModelEntry, list[str], int]:
        """Validate an embedding request and load its model."""
        if not valid_model_name(body.get("model")):
            raise HandlerError(400, "model is required")
        if isinstance(inputs, str):
            texts = [inputs]
        elif isinstance(inputs, list) and all(isinstance(t, str) for t in inputs):
            texts = list(inputs)
        else:
            raise HandlerError(400, "invalid input type")
        entry = self._find(str(body["model"]))
        if entry is None:
            raise HandlerError(404, f"model '{body['model']}' not found")
        keep_alive = _check_keep_alive(body.get("keep_alive"))
        if keep_alive is None:
            keep_alive = server_keep_alive(self.config().keep_alive)
        load_ns = await self._ensure_loaded(entry.name, keep_alive, DEFAULT_NUM_CTX)
        self._touch(entry.name, keep_alive)
        if self._completion_only(entry):
            # Loaded first, then refused by the runner (0.12.10 runner/ollamarunner/runner.go
            # answers 501; EmbedHandler passes its text on as a 500).
            raise HandlerError(500, NO_EMBEDDINGS_ERROR)
        return entry, texts, load_ns

    async def _embed(self, request: web.Request) -> web.Response:
        """POST /api/embed."""
        started = time.monotonic_ns()
        body = await self._json_body(request, "api.EmbedRequest")
        entry, texts, load_ns = await self._embed_vectors(body, body.get("input"))
        return web.json_response(
            {
                "model": body["model"],
                "embeddings": [embed_vector(entry.name, t) for t in texts],
                "total_duration": max(1, time.monotonic_ns() - started),
                "load_duration": load_ns,
                "prompt_eval_count": sum(max(1, _word_count(t)) for t in texts),
            },
            dumps=_dumps,
        )

    async def _openai_embeddings(self, request: web.Request) -> web.Response:
        """POST /v1/embeddings."""
        try:
            body = await self._json_body(request, "openai.EmbedRequest")
            encoding = body.get("encoding_format")
            if encoding and str(encoding).lower() not in ("float", "base64"):
                raise RequestError(
                    400,
                    f"Invalid value for 'encoding_format' = {encoding}. "
                    "Supported values: ['float', 'base64'].",
                )
            inputs = body.get("input")
            if inputs == "":
                inputs = [""]
            if inputs is None or inputs == []:
                raise RequestError(400, "invalid input")
            entry, texts, _ = await self._embed_vectors(body, inputs)
        except RequestError as exc:
            middleware = not isinstance(exc, HandlerError)
            return openai_error(exc.status, exc.message, middleware=middleware)
        tokens = sum(max(1, _word_count(t)) for t in texts)
        data = [
            {"object": "embedding", "embedding": embed_vector(entry.name, t), "index": i}
            for i, t in enumerate(texts)
        ]
        return encoded_json(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    @staticmethod
    def _openai_model(entry: ModelEntry, name: str) -> dict[str, Any]:
        """One /v1/models entry."""
        namespace = name.split("/")[-2] if name.count("/") else "library"
        return {
            "id": name,
            "object": "model",
            "created": entry.modified_ns // NS_PER_S,
            "owned_by": namespace,
        }

    async def _openai_models(self, request: web.Request) -> web.Response:
        """GET /v1/models."""
        data = [self._openai_model(e, e.name) for e in self._sorted_entries()]
        return encoded_json({"object": "list", "data": data})

    async def _openai_model_get(self, request: web.Request) -> web.Response:
        """GET /v1/models/{model}."""
        name = request.match_info["model"]
        entry = self._find(name)
        if entry is None:
            return openai_error(404, f"model '{name}' not found")
        return encoded_json(self._openai_model(entry, name))

    async def _fake_config(self, request: web.Request) -> web.Response:
        """GET/POST /_fake/config: read or change the live config."""
        if request.method == "GET":
            return web.json_response(dataclasses.asdict(self.config()))
        try:
            changes = await self._json_body(request)
            return web.json_response(self.configure(**changes))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)

    async def _fake_stats(self, request: web.Request) -> web.Response:
        """GET /_fake/stats."""
        return web.json_response(self.stats())

    async def _fake_reset(self, request: web.Request) -> web.Response:
        """POST /_fake/reset: zero stats, drop queued faults."""
        self.reset_stats()
        return web.json_response(self.stats())

    async def _not_found(self, request: web.Request) -> web.Response:
        """Any other route: gin's plain-text 404."""
        # gin's default 404 body, under a content type without charset.
        return web.Response(
            status=404, body=b"404 page not found", headers={"Content-Type": "text/plain"}
        )

    @web.middleware
    async def _middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Any],
    ) -> web.StreamResponse:
        """Count requests, turn RequestError into JSON errors, log like gin."""
        started = time.monotonic()
        if not request.path.startswith("/_fake/"):
            key = f"{request.method} {request.path}"
            with self._lock:
                requests = self._stats["requests"]
                requests[key] = requests.get(key, 0) + 1
        try:
            response: web.StreamResponse = await handler(request)
        except RequestError as exc:
            response = web.json_response({"error": exc.message}, status=exc.status)
        if self.log_requests:
            elapsed_ms = (time.monotonic() - started) * 1000
            stamp = time.strftime("%Y/%m/%d - %H:%M:%S")
            print(
                f"[GIN] {stamp} | {response.status} | {elapsed_ms:10.3f}ms | "
                f"{request.remote or '-':>15} | {request.method:<7} "
                f'"{request.path}"',
                file=sys.stderr,
                flush=True,
            )
        return response

    def _make_app(self) -> web.Application:
        """The aiohttp application with every route."""
        app = web.Application(middlewares=[self._middleware])
        route = app.router
        route.add_get("/", self._root)
        route.add_get("/api/version", self._version)
        route.add_get("/api/tags", self._tags)
        route.add_get("/api/ps", self._ps)
        route.add_post("/api/show", self._show)
        route.add_post("/api/chat", self._chat)
        route.add_post("/api/generate", self._generate)
        route.add_post("/api/pull", self._pull)
        route.add_post("/api/create", self._create)
        route.add_delete("/api/delete", self._delete)
        route.add_post("/api/embed", self._embed)
        route.add_post("/v1/chat/completions", self._openai_chat)
        route.add_post("/v1/completions", self._openai_completion)
        route.add_post("/v1/embeddings", self._openai_embeddings)
        route.add_get("/v1/models", self._openai_models)
        route.add_get("/v1/models/{model:.+}", self._openai_model_get)
        route.add_route("*", "/_fake/config", self._fake_config)
        route.add_get("/_fake/stats", self._fake_stats)
        route.add_post("/_fake/reset", self._fake_reset)
        route.add_route("*", "/{tail:.*}", self._not_found)
        return app

    # ---- lifecycle ------------------------------------------------------------

    async def serve(
        self,
        stop: asyncio.Event,
        on_ready: Callable[[], None] = lambda: None,
        allow_crash: bool = False,
    ) -> None:
        """Bind after start_delay_s, serve until ``stop`` is set, then close."""
        self._serving(stop)
        cfg = self.config()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), cfg.start_delay_s)
        if stop.is_set():
            return
        sock = self._bind(socket.AF_INET6 if ":" in self.host else socket.AF_INET)

        def ready() -> None:
            if allow_crash and cfg.crash_after_s is not None:
                asyncio.get_running_loop().call_later(cfg.crash_after_s, _crash)
            on_ready()

        await self._run_app(self._make_app(), sock, stop, ready)


def _crash() -> None:
    """Die like a crashed server: no cleanup, exit status 1."""
    _log("ERROR", "fake ollama crashing (crash_after_s)", source="server.go:1")
    sys.stderr.flush()
    os._exit(1)


# --------------------------------------------------------------------------
# process mode


def _flag_names(name: str) -> list[str]:
    """``--load-delay-s`` and, for ``*_s`` fields, also ``--load-delay``."""
    flags = ["--" + name.replace("_", "-")]
    if name.endswith("_s"):
        flags.append("--" + name[:-2].replace("_", "-"))
    return flags


def _env_names(name: str) -> list[str]:
    """``FAKE_OLLAMA_LOAD_DELAY_S`` and, for ``*_s`` fields, ``..._LOAD_DELAY``."""
    names = ["FAKE_OLLAMA_" + name.upper()]
    if name.endswith("_s"):
        names.append("FAKE_OLLAMA_" + name[:-2].upper())
    return names


def config_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Config changes from OLLAMA_* server variables and FAKE_OLLAMA_* switches."""
    changes: dict[str, Any] = {}
    for env_name, field_name in (
        ("OLLAMA_KEEP_ALIVE", "keep_alive"),
        ("OLLAMA_NUM_PARALLEL", "num_parallel"),
        ("OLLAMA_MAX_QUEUE", "max_queue"),
    ):
        if environ.get(env_name):
            changes[field_name] = environ[env_name]
    for name in CONFIG_FIELDS:
        for env_name in _env_names(name):
            if env_name in environ:
                changes[name] = environ[env_name]
    return changes


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m standins.ollama``."""
    parser = argparse.ArgumentParser(
        prog="python -m standins.ollama",
        description="Fake Ollama server for tests. Every config field is a flag; "
        "FAKE_OLLAMA_<FIELD> environment variables work too.",
    )
    parser.add_argument("--host", help="listen address (default from OLLAMA_HOST)")
    parser.add_argument("--port", type=int, help="listen port (default from OLLAMA_HOST)")
    for name in CONFIG_FIELDS:
        is_bool = _FIELD_TYPES[name] is bool
        parser.add_argument(
            *_flag_names(name),
            dest=name,
            nargs="?" if is_bool else None,
            const="1" if is_bool else None,
            help=f"config field {name}",
        )
    return parser


def seconds_since_process_start() -> float:
    """How long this process has existed (0 where /proc cannot tell)."""
    try:
        with open("/proc/self/stat") as stat:
            # Fields after "pid (comm)": the 20th of them is the start time, in clock ticks.
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return 0.0
    started = start_ticks / os.sysconf("SC_CLK_TCK")
    return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)


def run_process(host: str, port: int, changes: Mapping[str, Any]) -> int:
    """Serve until SIGTERM/SIGINT (exit 0); crash options exit 1."""
    server = FakeOllama(host=host, port=port, log_requests=True, **changes)
    # A real `ollama serve` binds start_delay_s after it is exec'd: count our own Python
    # start-up (imports take 0.3-0.7 s) as part of that delay, not on top of it.
    delay = server.config().start_delay_s
    server.configure(start_delay_s=max(0.0, delay - seconds_since_process_start()))
    cfg = server.config()
    if cfg.crash_on_start:
        _log("ERROR", "fake ollama crashing on start (crash_on_start)", source="server.go:1")
        print("Error: fake ollama crashed on start", file=sys.stderr)
        return 1

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        _log("INFO", f"starting fake ollama (start delay {cfg.start_delay_s}s)")

        def ready() -> None:
            address = f"{host or '[::]'}:{server.bound_port}"
            _log("INFO", f"Listening on {address} (version {cfg.version})")

        try:
            await server.serve(stop, on_ready=ready, allow_crash=True)
        except OSError as exc:
            print(f"Error: listen tcp {host}:{port}: {exc.strerror}", file=sys.stderr)
            return 1
        return 0

    return asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m standins.ollama``."""
    args = build_parser().parse_args(argv)
    env_host, env_port = parse_ollama_host(os.environ.get("OLLAMA_HOST"))
    changes = config_from_env(os.environ)
    changes.update(
        {name: getattr(args, name) for name in CONFIG_FIELDS if getattr(args, name) is not None}
    )
    host = args.host if args.host is not None else env_host
    port = args.port if args.port is not None else env_port
    try:
        coerce_config(changes)
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    return run_process(host, port, changes)


if __name__ == "__main__":
    sys.exit(main())
