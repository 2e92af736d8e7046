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
bench's time-to-first-token reference). Outside the package, read them with the typed calls
of ``standins.ollama.readings.OllamaReadings`` (``received()``, ``peak_in_flight()``, ...).

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
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from standins._server import ThreadedServer
from standins.ollama.faults import (
    _FIELD_TYPES,
    CONFIG_FIELDS,
    FAULT_MESSAGES,
    HTML_ERROR_PAGE,
    FakeConfig,
    _flag_names,
    coerce_config,
    config_from_env,
)
from standins.ollama.host import connect_host, parse_ollama_host
from standins.ollama.models import (
    DEFAULT_NUM_CTX,
    HARMONY_FAMILIES,
    ModelEntry,
    full_name,
    normalize_model,
    valid_model_name,
)
from standins.ollama.readings import OllamaReadings
from standins.ollama.render import (
    ChatRenderer,
    GenerateRenderer,
    OpenAIChatRenderer,
    OpenAICompletionRenderer,
)
from standins.ollama.replies import _word_count, embed_vector, plan_reply
from standins.ollama.requests import (
    _check_keep_alive,
    _check_options,
    _check_stream,
    _is_number,
    _require_object,
    decode_json,
    option_type_error,
    parse_chat,
    parse_generate,
    parse_openai_chat,
    parse_openai_completion,
)
from standins.ollama.wire import (
    BUSY_ERROR,
    FOREVER_NS,
    NO_EMBEDDINGS_ERROR,
    NO_VISION_ERROR,
    NS_PER_S,
    ZERO_CHAT_RESPONSE,
    HandlerError,
    RequestError,
    RunnerError,
    _dumps,
    _line,
    _log,
    encoded_json,
    go_time,
    openai_error,
    server_keep_alive,
)

if TYPE_CHECKING:
    from standins.ollama.render import Renderer
    from standins.ollama.replies import Plan
    from standins.ollama.requests import GenRequest
MAX_RECORDED_BODIES = 100


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
        names, seen = [], set()
        current: ModelEntry | None = entry
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
