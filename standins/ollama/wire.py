"""Ollama's wire formats: Go time and duration text, NDJSON and SSE lines, the native and
OpenAI-compatible renderers of a reply, and error bodies."""

from __future__ import annotations

import json
import math
import re
import sys
import time
from typing import Any

from aiohttp import web

VERSION = "0.12.10"  # the release the Dockerfile pins
BUSY_ERROR = "server busy, please try again.  maximum pending requests exceeded"
NS_PER_S = 1_000_000_000
FOREVER_NS = 2**63 - 1
# What 0.12.10's non-stream ChatHandler answers when the runner sent nothing: the zero value.
ZERO_CHAT_RESPONSE = {
    "model": "",
    "created_at": "0001-01-01T00:00:00Z",
    "message": {"role": "", "content": ""},
    "done": False,
}
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


def _log(level: str, msg: str, source: str = "routes.go:1580") -> None:
    """Write one slog-style line to stderr, like the real server does."""
    print(
        f"time={go_time()} level={level} source={source} msg={json.dumps(msg)}",
        file=sys.stderr,
        flush=True,
    )


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
