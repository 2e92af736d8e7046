"""HTTP mode: the worker as a RunPod load-balancing endpoint, which VAPI and OpenAI clients call
directly (`WORKER_MODE=http`; `http_server.py` starts it, `ollama_boot.sh` starts that).

Routes (README, "Load-balancing endpoint"): `GET HEALTH_CHECK_PATH` (default /ping) for RunPod's
health check, `POST /vapi` (a raw VAPI server message or custom-LLM request), the OpenAI API
under `/v1`, `POST /chat` (a chat job's input) and `GET /health`. Each answers through the same
job code as the queue worker (`jobs.answer_job`), so a route differs from its job only in how the
answer travels: a JSON body, a `text/event-stream` (OpenAI and VAPI streams) or NDJSON (chat
streams), each event written as it comes.

The platform gives no retry and no backlog, so the worker bounds its own load: at most
MAX_CONCURRENCY generations at Ollama; one more waits up to HTTP_QUEUE_TIMEOUT_S for a slot and
is then answered 429 with Retry-After. 429, not 503: the worker is healthy, only full, and a
caller (the OpenAI client, VAPI) retries it; RunPod's scaler counts the waiting request while it
waits, which is what adds workers. 503 is kept for "this worker is going away" (stopping, or
Ollama gone), so the two never read alike in a log or to a load balancer judging its backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from starlette.responses import Response

from ollama_worker.boot import normalise_model, shares_in_gpu_memory
from ollama_worker.config import Settings
from ollama_worker.errors import ErrorCode, WorkerError
from ollama_worker.jobs import Job, answer_job
from ollama_worker.ollama_client import get_client
from ollama_worker.schemas import (
    ChatJob,
    HealthJob,
    InputLimits,
    OpenAIJob,
    parse_job,
)
from ollama_worker.streaming import closing
from ollama_worker.vapi import custom_llm_body

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# /ping asks Ollama's /api/ps; RunPod polls often, so one slow answer must not pile them up.
PING_TIMEOUT_S = 1.0
RETRY_AFTER_S = 1
# Streams still running when the stop grace ends get this long to write their last event.
STREAM_END_S = 0.5
# A body that trickles in slower than this is refused: it would hold the request forever.
BODY_TIMEOUT_S = 30.0
# Longer than a gateway's idle timeout, so that it never reuses a connection we just closed.
KEEP_ALIVE_S = 75
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
NOTE = "ollama_worker.note"  # scope key: how a request ended, for its log line
SSE, NDJSON = "text/event-stream", "application/x-ndjson"
CLOSE = ((b"connection", b"close"),)

STATUS = {
    ErrorCode.INVALID_INPUT: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.MODEL_NOT_FOUND: 404,
    ErrorCode.WORKER_BUSY: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.OLLAMA_ERROR: 502,
    ErrorCode.OLLAMA_UNAVAILABLE: 503,
    ErrorCode.WORKER_STOPPED: 503,
    ErrorCode.TIMEOUT: 504,
}
STOPPED = WorkerError(
    ErrorCode.WORKER_STOPPED,
    "the worker is stopping (SIGTERM) and takes no more requests; send it again, another "
    "worker takes it",
)
CUT_OFF = WorkerError(
    ErrorCode.WORKER_STOPPED,
    "the worker was stopped before this reply finished (it got WORKER_STOP_GRACE_S); send the "
    "request again",
)


@dataclass(frozen=True)
class Style:
    """How a route writes its answers: errors in OpenAI's form or the jobs' `{"error"}`, and
    streams as SSE or NDJSON."""

    stream_type: str
    openai_errors: bool

    def error_body(self, exc: WorkerError) -> dict[str, Any]:
        """The JSON body of a failed request."""
        if self.openai_errors:
            return openai_error(exc)
        return exc.as_output()

    def event(self, item: Any) -> bytes:
        """One stream item on the wire: SSE text passes as it is, anything else as JSON."""
        if isinstance(item, str):
            return item.encode()
        text = json.dumps(item)
        return f"data: {text}\n\n".encode() if self.stream_type == SSE else f"{text}\n".encode()

    def error_event(self, exc: WorkerError) -> bytes:
        """The last event of a stream that failed: the OpenAI client raises on an SSE `error`."""
        return self.event(openai_error(exc) if self.stream_type == SSE else exc.as_output())


def openai_error(exc: WorkerError) -> dict[str, Any]:
    """A WorkerError in the OpenAI API's error form."""
    return {
        "error": {
            "message": str(exc),
            "type": exc.code.lower(),
            "param": None,
            "code": exc.code.value,
        }
    }


OPENAI = Style(SSE, openai_errors=True)
VAPI = Style(SSE, openai_errors=False)
JOBS = Style(NDJSON, openai_errors=False)


def style_of(path: str) -> Style:
    """The answer style of the route at `path`."""
    if path.startswith("/v1/"):
        return OPENAI
    return VAPI if path == "/vapi" else JOBS


class Worker:
    """What the routes share: settings, the generation slots, readiness and the stop."""

    def __init__(self, settings: Settings, ready_file: str | None = None) -> None:
        self.settings = settings
        self.ready_file = ready_file
        self.slots = asyncio.Semaphore(settings.max_concurrency)
        self.ready = False
        self.stopping = False
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        # Set once the stop grace is over: replies still running end with WORKER_STOPPED.
        self.cut_off = asyncio.Event()
        self._stop_task: asyncio.Task[None] | None = None

    def _boot_done(self) -> bool:
        # ollama_boot.sh creates the file once its `boot ready` step (check, preload) succeeded.
        return self.ready_file is None or os.path.exists(self.ready_file)

    def _resident(self, ps_answer: Any) -> bool:
        wanted = normalise_model(self.settings.default_model)
        return any(normalise_model(name) == wanted for name in shares_in_gpu_memory(ps_answer))

    async def health_status(self) -> int:
        """RunPod's health code: 204 while booting, 200 once the model is resident, 503 when
        stopping or once Ollama no longer answers."""
        if self.stopping:
            return 503
        try:
            response = await get_client().http.get("/api/ps", timeout=PING_TIMEOUT_S)
            response.raise_for_status()
            loaded = response.json()
        except (httpx.HTTPError, ValueError):
            return 503 if self.ready else 204
        if not self.ready and self._boot_done() and self._resident(loaded):
            self.ready = True
            log.info(
                "ready: %s is resident; the health check answers 200", self.settings.default_model
            )
        return 200 if self.ready else 204

    def begin_stop(self, server: uvicorn.Server) -> None:
        """SIGTERM: unhealthy and refusing at once; then drain, cut off, and let uvicorn exit."""
        if self._stop_task is None:
            self.stopping = True
            self._stop_task = asyncio.get_running_loop().create_task(self._stop(server))

    async def _stop(self, server: uvicorn.Server) -> None:
        grace = self.settings.stop_grace_s
        log.info(
            "got SIGTERM: the health check answers 503 and new requests are refused; "
            "%d in flight get up to %g s to finish",
            self.in_flight,
            grace,
        )
        try:
            async with asyncio.timeout(grace):
                await self.idle.wait()
            log.info("every request in flight finished")
        except TimeoutError:
            log.warning(
                "%d request(s) still running after %g s end with %s",
                self.in_flight,
                grace,
                ErrorCode.WORKER_STOPPED,
            )
            self.cut_off.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STREAM_END_S):
                    await self.idle.wait()
        server.should_exit = True


async def _json_response(
    send: Send, status: int, body: Any, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _disconnect(receive: Receive) -> None:
    """Return when the client hangs up (uvicorn says so once the request body is read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class Reply(Response):
    """A job's answer as the response to one request: one JSON body, or a stream written event
    by event. The generation is cancelled (and Ollama's connection closed) the moment the
    client leaves, and cut off with a last WORKER_STOPPED event when the stop grace ends."""

    def __init__(
        self,
        worker: Worker,
        style: Style,
        job: Job,
        *,
        stream: bool,
        generation: bool,
        shape: Callable[[Any], Any] = lambda item: item,
    ) -> None:
        super().__init__()
        self.worker, self.style, self.job = worker, style, job
        self.stream, self.generation, self.shape = stream, generation, shape
        self.started = self.ended = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        left = asyncio.create_task(_disconnect(receive))
        work = asyncio.create_task(self._deliver(send))
        cut = asyncio.create_task(self.worker.cut_off.wait())
        try:
            done, _ = await asyncio.wait({work, left, cut}, return_when=asyncio.FIRST_COMPLETED)
            if work in done:
                work.result()
                return
            work.cancel()
            await asyncio.wait({work})
            if left in done:
                scope[NOTE] = "client left; generation cancelled"
                return
            scope[NOTE] = "cut off by the stop"
            await self._fail(send, CUT_OFF)
        finally:
            left.cancel()
            cut.cancel()

    async def _slot(self, send: Send) -> bool:
        """Take a generation slot, waiting at most HTTP_QUEUE_TIMEOUT_S; False (answered 429)."""
        settings = self.worker.settings
        try:
            async with asyncio.timeout(settings.http_queue_timeout_s):
                await self.worker.slots.acquire()
        except TimeoutError:
            busy = WorkerError(
                ErrorCode.WORKER_BUSY,
                f"all {settings.max_concurrency} generation slots (MAX_CONCURRENCY) stayed busy "
                f"for {settings.http_queue_timeout_s:g} s; retry after {RETRY_AFTER_S} s",
            )
            await self._fail(send, busy, ((b"retry-after", str(RETRY_AFTER_S).encode()),))
            return False
        return True

    async def _deliver(self, send: Send) -> None:
        if self.generation and not await self._slot(send):
            return
        try:
            items = answer_job(self.job, get_client(), self.worker.settings)
            async with closing(items):
                await self._write(send, items)
        except WorkerError as exc:
            log.warning("%s failed: %s", type(self.job).__name__, exc)
            await self._fail(send, exc)
        except Exception:
            log.exception("%s crashed", type(self.job).__name__)
            await self._fail(
                send, WorkerError(ErrorCode.INTERNAL, "unexpected error; the worker log has it")
            )
        finally:
            if self.generation:
                self.worker.slots.release()

    async def _write(self, send: Send, items: AsyncIterator[Any]) -> None:
        try:
            first = await anext(items)
        except StopAsyncIteration:
            raise WorkerError(ErrorCode.INTERNAL, "the job answered nothing") from None
        if not self.stream:
            self.started = self.ended = True
            await _json_response(send, 200, self.shape(first))
            return
        self.started = True
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", f"{self.style.stream_type}; charset=utf-8".encode()),
                    (b"cache-control", b"no-cache"),
                    # Proxies that buffer (nginx and friends) would hold the events back.
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        await self._event(send, self.style.event(first))
        async for item in items:
            await self._event(send, self.style.event(item))
        self.ended = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _event(self, send: Send, data: bytes) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": True})

    async def _fail(
        self, send: Send, exc: WorkerError, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        """Answer the error with its status, or end a stream already begun with it."""
        if not self.started:
            self.started = self.ended = True
            await _json_response(send, STATUS[exc.code], self.style.error_body(exc), headers)
        elif not self.ended:
            self.ended = True
            data = self.style.error_event(exc)
            await send({"type": "http.response.body", "body": data, "more_body": False})


class BodyTooLarge(Exception):
    """The request body is over HTTP_MAX_BODY_BYTES."""


class ClientLeft(Exception):
    """The client hung up before its request body arrived."""


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientLeft
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class Door:
    """The ASGI app uvicorn serves: request ids and one log line per request, the health
    check, the stop, the body size limit, and the health-only second port."""

    def __init__(self, worker: Worker, app: FastAPI) -> None:
        self.worker, self.app = worker, app
        self.settings = worker.settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan, no websockets
        started = time.perf_counter()
        given = next((v.decode() for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        method, path = scope["method"], scope["path"]
        status = 0

        async def send_tagged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        ping = path == self.settings.health_check_path and method in ("GET", "HEAD")
        try:
            await self._route(scope, receive, send_tagged, ping=ping)
        finally:
            note = scope.get(NOTE, "")
            # Path without its query string: no secret or text of the request reaches the log.
            log.log(
                logging.DEBUG if ping else logging.INFO,
                "request %s %s %s %d %.0f ms%s",
                request_id,
                method,
                path[:100],
                status,
                (time.perf_counter() - started) * 1000,
                f" ({note})" if note else "",
            )

    async def _route(self, scope: Scope, receive: Receive, send: Send, *, ping: bool) -> None:
        port = (scope.get("server") or ("", 0))[1]
        health_only = port == self.settings.health_port != self.settings.http_port
        style = style_of(scope["path"])
        if ping:
            code = await self.worker.health_status()
            body = {200: {"status": "healthy"}, 503: {"status": "unhealthy"}}.get(code)
            if body is None:
                await send({"type": "http.response.start", "status": code, "headers": []})
                await send({"type": "http.response.body", "body": b""})
            else:
                await _json_response(send, code, body)
        elif health_only:
            scope[NOTE] = "the health port serves only the health check"
            await _json_response(send, 404, {"error": "not found"})
        elif self.worker.stopping:
            refused = (*CLOSE, (b"retry-after", str(RETRY_AFTER_S).encode()))
            await _json_response(send, 503, style.error_body(STOPPED), refused)
        else:
            await self._serve(scope, receive, send, style)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, style: Style) -> None:
        limit = self.settings.http_max_body_bytes
        length = next((v for k, v in scope["headers"] if k == b"content-length"), b"0")
        too_large = WorkerError(
            ErrorCode.INVALID_INPUT,
            f"the request body is over {limit:,} bytes (HTTP_MAX_BODY_BYTES)",
        )
        if length.isdigit() and int(length) > limit:
            await _json_response(send, 413, style.error_body(too_large), CLOSE)
            return
        self.worker.in_flight += 1
        self.worker.idle.clear()
        try:
            try:
                async with asyncio.timeout(BODY_TIMEOUT_S):
                    body = await _read_body(receive, limit)
            except TimeoutError:
                late = WorkerError(
                    ErrorCode.INVALID_INPUT,
                    f"the request body did not arrive within {BODY_TIMEOUT_S:g} s",
                )
                await _json_response(send, 408, style.error_body(late), CLOSE)
                return
            except BodyTooLarge:
                await _json_response(send, 413, style.error_body(too_large), CLOSE)
                return
            except ClientLeft:
                scope[NOTE] = "client left before its body arrived"
                return
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.worker.in_flight -= 1
            if self.worker.in_flight == 0:
                self.worker.idle.set()


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands over the body read already, then waits for the disconnect."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


def _json_of(raw: bytes, style: Style) -> tuple[Any, Response | None]:
    """The body's JSON object, or the 400 answer for a body that is not one."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        problem = "the request body is not JSON"
    except RecursionError:  # valid JSON nested past what Python's parser can take
        problem = "the request body nests too deep"
    else:
        if isinstance(value, dict):
            return value, None
        problem = f"the request body is a JSON {type(value).__name__}, not an object"
    # VAPI's error form, {"error": "..."}, holds the coded line as every other route's does.
    body = style.error_body(WorkerError(ErrorCode.INVALID_INPUT, problem))
    return None, Response(json.dumps(body), 400, media_type="application/json")


def _job_of(job_input: dict[str, Any], style: Style, settings: Settings) -> Job | Response:
    """The request as a job, through the queue jobs' own validation (depth, text, surrogates),
    or the 400 answer naming what is wrong."""
    try:
        return parse_job(job_input, InputLimits.from_settings(settings))
    except WorkerError as exc:
        return Response(json.dumps(style.error_body(exc)), 400, media_type="application/json")


def public_url(request: Request, settings: Settings) -> str:
    """The URL the caller used: on RunPod, the endpoint's https://<ID>.api.runpod.ai one (an
    HMAC plan may sign it), not the worker's own http://host:port."""
    if not settings.runpod_endpoint_id:
        return str(request.url)
    query = f"?{request.url.query}" if request.url.query else ""
    return f"https://{settings.runpod_endpoint_id}.api.runpod.ai{request.url.path}{query}"


def vapi_response(item: Any) -> Any:
    """The body VAPI expects back: the job's `response`."""
    return item["response"] if isinstance(item, dict) and "response" in item else item


def build_app(worker: Worker) -> FastAPI:
    """The routes, each a thin translation of HTTP into a job and of its answer back."""
    settings = worker.settings
    # No /docs or /openapi.json: the endpoint's surface is exactly the routes below.
    app = FastAPI(title="Ollama worker", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/v1/chat/completions")
    @app.post("/v1/completions")
    @app.post("/v1/embeddings")
    async def openai_post(request: Request) -> Response:
        body, refused = _json_of(await request.body(), OPENAI)
        if refused is not None:
            return refused
        route = request.url.path
        if route == "/v1/chat/completions":
            # VAPI's custom LLM posts here, with its call data that the model has no use for.
            body = custom_llm_body(body)
        job = _job_of({"openai_route": route, "openai_input": body}, OPENAI, settings)
        if isinstance(job, Response):
            return job
        stream = body.get("stream") is True and route != "/v1/embeddings"
        return Reply(worker, OPENAI, job, stream=stream, generation=True)

    @app.get("/v1/models")
    async def models() -> Response:
        job = OpenAIJob(openai_route="/v1/models")
        return Reply(worker, OPENAI, job, stream=False, generation=False)

    @app.post("/vapi")
    async def vapi(request: Request) -> Response:
        raw = await request.body()
        payload, refused = _json_of(raw, VAPI)
        if refused is not None:
            return refused
        job_input = {
            "type": "vapi_webhook",
            "payload": payload,
            # All of them, and the exact body: what proves the request depends on the plan.
            "headers": dict(request.headers.items()),
            "raw_body": raw.decode("utf-8"),
            "method": request.method,
            "url": public_url(request, settings),
        }
        job = _job_of(job_input, VAPI, settings)
        if isinstance(job, Response):
            return job
        message = payload.get("message")
        custom_llm = not isinstance(message, dict) and isinstance(payload.get("messages"), list)
        stream = custom_llm and payload.get("stream") is True
        return Reply(worker, VAPI, job, stream=stream, generation=custom_llm, shape=vapi_response)

    @app.post("/chat")
    async def chat(request: Request) -> Response:
        body, refused = _json_of(await request.body(), JOBS)
        if refused is not None:
            return refused
        job = _job_of({"type": "chat", **body}, JOBS, settings)
        if isinstance(job, Response):
            return job
        if not isinstance(job, ChatJob):
            wrong = WorkerError(ErrorCode.INVALID_INPUT, "POST /chat takes a chat job's input")
            return Response(json.dumps(wrong.as_output()), 400, media_type="application/json")
        return Reply(worker, JOBS, job, stream=job.stream, generation=True)

    @app.get("/health")
    async def health() -> Response:
        return Reply(worker, JOBS, HealthJob(type="health"), stream=False, generation=False)

    return app


class Server(uvicorn.Server):
    """uvicorn's server with our stop: SIGTERM/SIGINT go to `Worker.begin_stop`, on the loop."""

    def __init__(self, config: uvicorn.Config, worker: Worker) -> None:
        super().__init__(config)
        self.worker = worker

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Our handlers instead of uvicorn's, which would stop at once and re-raise the signal."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.worker.begin_stop, self)
        try:
            yield
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)


def listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, for uvicorn to serve."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


def serve(settings: Settings, *, ready_file: str | None = None) -> None:
    """Serve until stopped: PORT, and PORT_HEALTH too when it differs (health check only)."""
    # Whatever started it: VAPI's assistant then points at this endpoint's own /v1.
    settings = dataclasses.replace(settings, worker_mode="http")
    ports = dict.fromkeys((settings.http_port, settings.health_port))
    sockets = [listener(settings.http_host, port) for port in ports]
    worker = Worker(settings, ready_file)
    config = uvicorn.Config(
        Door(worker, build_app(worker)),
        lifespan="off",
        access_log=False,  # our one line per request replaces it
        log_config=None,  # keep log_setup's format and level
        timeout_keep_alive=KEEP_ALIVE_S,
        # Our stop has drained by the time uvicorn stops; this only bounds its own close.
        timeout_graceful_shutdown=1,
    )
    log.info(
        "http mode: serving on %s port %s (health check %s on port %d), %d generation slot(s)",
        settings.http_host,
        settings.http_port,
        settings.health_check_path,
        settings.health_port,
        settings.max_concurrency,
    )
    Server(config, worker).run(sockets=sockets)
