"""The one pooled connection to the local Ollama, with retries bounded by a deadline.

Typed native calls go through the official `ollama.AsyncClient`; raw OpenAI-compatible
calls go through `httpx`. Both share one transport, so one connection pool serves all jobs.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import hashlib
import inspect
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx
import ollama
from pydantic import ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_before_delay,
    wait_random_exponential,
)

from ollama_worker.boot import ollama_error_message, shares_in_gpu_memory
from ollama_worker.config import Settings, get_settings
from ollama_worker.errors import ErrorCode, WorkerError, one_line
from ollama_worker.streaming import close_iterator, closing

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRYABLE_STATUSES = frozenset({502, 503, 504})
# HTTP 500s of Ollama 0.12.10 that are the request's fault, so no retry can help: an option
# of the wrong type (api/types.go Options.FromMap), an image or an embedding asked of a model
# without that capability (the runner's refusals, passed on as 500s).
REFUSED_AS_500 = re.compile(
    r'option "[^"]+" must be of|missing data required for image input|does not support embeddings'
)
# Ollama's options that are lists, shown one `key value` line per item even when there is one.
LIST_PARAMETERS = frozenset({"stop"})
INTEGER = re.compile(r"[+-]?\d+")
# A model's PARAMETERs, per Ollama URL and model: baked into the image, they never change.
_parameters: dict[tuple[str, str], dict[str, Any]] = {}


def _parameter_value(text: str) -> Any:
    """One value as Ollama's `%#v` prints it: a Go-quoted string, a bool or a number."""
    if text.startswith('"'):
        # Go's quoting (\", \\, \n, \t, \xNN, \uNNNN, \UNNNNNNNN) is Python's too.
        with contextlib.suppress(ValueError, SyntaxError):
            value = ast.literal_eval(text)
            if isinstance(value, str):
                return value
        return text
    if text in ("true", "false"):
        return text == "true"
    if INTEGER.fullmatch(text):
        return int(text)
    try:
        value = float(text)  # Go prints large or tiny float64s as "1e+06", "1.5e-05"
    except ValueError:
        return text
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def parse_parameters(text: str) -> dict[str, Any]:
    """/api/show's `parameters`: one `key value` line per PARAMETER, repeated keys as lists."""
    found: dict[str, Any] = {}
    for line in text.splitlines():
        key, _, raw = line.strip().partition(" ")
        if not key or not raw.strip():
            continue
        value = _parameter_value(raw.strip())
        if key in LIST_PARAMETERS or key in found:
            previous = found.get(key, [])
            found[key] = [*(previous if isinstance(previous, list) else [previous]), value]
        else:
            found[key] = value
    return found


def is_retryable(exc: BaseException) -> bool:
    """Faults that cannot have started a generation: no connection, or a proxy's or a loading
    Ollama's 502/503/504. A read timeout or a dropped connection may have started one, and a
    retry would run that generation again from scratch."""
    if isinstance(exc, ollama.ResponseError):
        return exc.status_code in RETRYABLE_STATUSES
    # The ollama client raises the builtin ConnectionError itself for httpx.ConnectError only
    # (its subclasses, such as ConnectionResetError, come from elsewhere); a pool timeout
    # never sent the request.
    return type(exc) is ConnectionError or isinstance(
        exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout
    )


# How much of Ollama's (or a proxy's) error text goes into a job's error line.
ERROR_TEXT_LIMIT = 300


class BadReply(Exception):
    """Ollama's answer could not be read: not JSON, or not the object the route answers."""


def to_worker_error(
    exc: BaseException, *, deadline_s: float, mid_stream: bool = False
) -> WorkerError:
    """Translate a client-side exception into the coded error the caller sees."""
    if isinstance(exc, WorkerError):
        return exc
    where = "mid-stream, after the reply had begun" if mid_stream else "before replying"
    if isinstance(exc, BadReply):
        return WorkerError(
            ErrorCode.OLLAMA_ERROR, f"Ollama's reply could not be read: {exc}; retry the job"
        )
    if isinstance(exc, ollama.ResponseError):
        # An HTML page from a proxy, or any long text: one short line.
        status, text = exc.status_code, one_line(str(exc.error), ERROR_TEXT_LIMIT)
        if status == 404:
            return WorkerError(ErrorCode.MODEL_NOT_FOUND, text)
        if status == 400 or (status == 500 and REFUSED_AS_500.search(text)):
            return WorkerError(ErrorCode.INVALID_INPUT, f"Ollama rejected the request: {text}")
        if status in RETRYABLE_STATUSES:
            return WorkerError(
                ErrorCode.OLLAMA_UNAVAILABLE,
                f"Ollama kept answering HTTP {status} ({text}) for {deadline_s:g} s; "
                "retry later or raise OLLAMA_RETRY_DEADLINE_S",
            )
        status_text = "mid-stream" if status == -1 else f"HTTP {status}"
        return WorkerError(ErrorCode.OLLAMA_ERROR, f"Ollama failed ({status_text}): {text}")
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError | ConnectionError):
        return WorkerError(
            ErrorCode.OLLAMA_UNAVAILABLE,
            f"could not reach Ollama within {deadline_s:g} s ({type(exc).__name__}); "
            "check that `ollama serve` is running and OLLAMA_HOST points at it",
        )
    if isinstance(exc, httpx.TimeoutException):
        return WorkerError(
            ErrorCode.TIMEOUT,
            f"Ollama did not answer in time {where} ({type(exc).__name__}); "
            "shorten the request or raise OLLAMA_REQUEST_TIMEOUT_S",
        )
    if isinstance(exc, httpx.TransportError):
        return WorkerError(
            ErrorCode.OLLAMA_ERROR,
            f"the connection to Ollama broke {where} ({type(exc).__name__}: {exc}); retry the job",
        )
    # run_job adds the job id and logs the cause under it.
    return WorkerError(ErrorCode.INTERNAL, f"unexpected {type(exc).__name__}")


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning(
        "Ollama call failed (%s: %s); retry %d in %.2f s",
        type(exc).__name__,
        one_line(str(exc), ERROR_TEXT_LIMIT),
        state.attempt_number,
        state.upcoming_sleep,
    )


def retrying(deadline_s: float, *, max_wait_s: float = 2.0) -> AsyncRetrying:
    """Exponential backoff with full jitter, never starting an attempt past the deadline."""
    return AsyncRetrying(
        retry=retry_if_exception(is_retryable),
        stop=stop_before_delay(deadline_s),
        wait=wait_random_exponential(multiplier=0.1, max=max_wait_s),
        before_sleep=_log_retry,
        reraise=True,
    )


def parse_reply(cls: type[T], text: str) -> T:
    """One JSON object of Ollama's as `cls`; ResponseError for an `{"error"}` one, BadReply
    for anything that is not such an object (a proxy's page, a cut or foreign line)."""
    try:
        part = json.loads(text)
    except ValueError:
        raise BadReply(f"not JSON ({one_line(text, 80)!r})") from None
    if not isinstance(part, dict):
        raise BadReply(f"a JSON {type(part).__name__}, not an object")
    if error := part.get("error"):
        raise ollama.ResponseError(json.dumps({"error": str(error)}))
    try:
        return cls(**part)
    except (ValidationError, TypeError) as exc:
        raise BadReply(f"not the object expected ({type(exc).__name__})") from None


# The digest of ollama 0.6.3's AsyncClient._request source, which NativeClient replaces: a
# client release that changes it must be read again before the override is trusted.
CLIENT_REQUEST_FINGERPRINT = "4d6f35d5ef41b4b3"


def client_request_fingerprint() -> str:
    """The digest of the installed ollama-python's `AsyncClient._request` source."""
    source = inspect.getsource(ollama.AsyncClient._request)
    return hashlib.sha256(source.encode()).hexdigest()[:16]


class NativeClient(ollama.AsyncClient):
    """ollama-python's client with its replies read by `parse_reply`.

    Its own reader lets a line that is not JSON, or JSON that is not an object, escape as
    JSONDecodeError or AttributeError, and breaks on a blank line; this is its `_request`
    (ollama 0.6.3, CLIENT_REQUEST_FINGERPRINT) with the reading replaced, and only the reading.
    """

    async def _request(self, cls: type[T], *args: Any, stream: bool = False, **kwargs: Any) -> Any:
        if not stream:
            response = await self._request_raw(*args, **kwargs)  # type: ignore[no-untyped-call]
            return parse_reply(cls, response.text)

        async def inner() -> AsyncIterator[T]:
            async with self._client.stream(*args, **kwargs) as response:
                if response.is_error:
                    await response.aread()
                    raise ollama.ResponseError(response.text, response.status_code)
                async for line in response.aiter_lines():
                    if line.strip():
                        yield parse_reply(cls, line)

        return inner()


class OllamaClient:
    """All of the worker's calls to Ollama; one per event loop, shared by every job on it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        timeout = httpx.Timeout(settings.request_timeout_s, connect=settings.connect_timeout_s)
        # Keep a warm connection for every job that may run at once, and some for health checks.
        limits = httpx.Limits(
            max_connections=settings.max_concurrency * 2 + 8,
            max_keepalive_connections=settings.max_concurrency + 4,
        )
        self._transport = httpx.AsyncHTTPTransport(limits=limits)
        self.native = NativeClient(
            host=settings.ollama_url, timeout=timeout, transport=self._transport
        )
        self.http = httpx.AsyncClient(
            base_url=settings.ollama_url, timeout=timeout, transport=self._transport
        )

    async def aclose(self) -> None:
        """Close the shared pool."""
        await self.http.aclose()
        await self.native.close()  # type: ignore[no-untyped-call]  # ollama leaves it unhinted

    def _error(self, exc: BaseException, *, mid_stream: bool = False) -> WorkerError:
        return to_worker_error(
            exc, deadline_s=self.settings.retry_deadline_s, mid_stream=mid_stream
        )

    async def call(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run one request with retries; raise a WorkerError when it finally fails."""
        try:
            async for try_ in retrying(self.settings.retry_deadline_s):
                with try_:
                    return await attempt()
        except Exception as exc:
            raise self._error(exc) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    async def stream(self, open_stream: Callable[[], AsyncIterator[T]]) -> AsyncIterator[T]:
        """Yield a stream's items; retry only until its first item has arrived."""

        async def first_item() -> tuple[T, AsyncIterator[T]]:
            items = open_stream()
            try:
                return await anext(items), items
            except StopAsyncIteration:
                # Raised on, it would end tenacity's `async for` as if it were done.
                await close_iterator(items)
                raise WorkerError(
                    ErrorCode.OLLAMA_ERROR,
                    "Ollama answered with a stream that ended before its first line "
                    "(its log says why); retry the job",
                ) from None
            except BaseException:
                await close_iterator(items)
                raise

        first, items = await self.call(first_item)
        try:
            yield first
            while True:
                try:
                    item = await anext(items)
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    raise self._error(exc, mid_stream=True) from exc
                yield item
        finally:
            await close_iterator(items)

    async def chat(self, request: dict[str, Any]) -> ollama.ChatResponse:
        """One whole `/api/chat` reply."""
        return await self.call(lambda: self.native.chat(**request, stream=False))

    def chat_stream(self, request: dict[str, Any]) -> AsyncIterator[ollama.ChatResponse]:
        """`/api/chat` chunks as Ollama sends them."""

        async def open_stream() -> AsyncIterator[ollama.ChatResponse]:
            # Leaving `async for` early does not close the client's generator, whose
            # `async with` holds the connection: close it here, not when it is collected.
            chunks = await self.native.chat(**request, stream=True)
            async with closing(chunks):
                async for chunk in chunks:
                    yield chunk

        return self.stream(open_stream)

    async def raw_json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """A non-streamed request answered with JSON, for routes we pass through verbatim."""

        async def attempt() -> Any:
            response = await self.http.request(method, path, json=body)
            _raise_for_status(response)
            return parse_reply(dict, response.text)

        return await self.call(attempt)

    def raw_lines(self, path: str, body: dict[str, Any]) -> AsyncIterator[str]:
        """A streamed POST's lines as they arrive, for SSE passthrough."""

        async def open_stream() -> AsyncIterator[str]:
            async with self.http.stream("POST", path, json=body) as response:
                if response.is_error:
                    await response.aread()
                    _raise_for_status(response)
                async for line in response.aiter_lines():
                    yield line

        return self.stream(open_stream)

    async def installed_models(self) -> list[str]:
        """Names of the models Ollama has on disk."""
        reply = await self.call(self.native.list)
        return [m.model for m in reply.models if m.model]

    async def gpu_shares(self) -> dict[str, float]:
        """Each loaded model's share in GPU memory, from `/api/ps` (see boot's reading of it)."""
        shares = shares_in_gpu_memory(await self.raw_json("GET", "/api/ps"))
        return {name: round(share, 3) for name, share in shares.items()}

    async def model_parameters(
        self, model: str, *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """The model's own PARAMETERs from `/api/show`, cached per process and model.

        With `timeout_s`, one attempt bounded by it (for callers on a deadline, such as
        VAPI's assistant-request); otherwise the usual retries.
        """
        key = (self.settings.ollama_url, model)
        if key in _parameters:
            return _parameters[key]
        body = {"model": model}
        if timeout_s is None:
            reply = await self.raw_json("POST", "/api/show", body)
        else:
            try:
                response = await self.http.post("/api/show", json=body, timeout=timeout_s)
                _raise_for_status(response)
                reply = parse_reply(dict, response.text)
            except Exception as exc:
                raise self._error(exc) from exc
        parameters = reply.get("parameters") if isinstance(reply, dict) else None
        _parameters[key] = parse_parameters(parameters if isinstance(parameters, str) else "")
        return _parameters[key]

    async def version(self) -> str:
        """Ollama's version string."""
        reply = await self.raw_json("GET", "/api/version")
        return str(reply.get("version", ""))

    async def model_not_found(self, model: str) -> WorkerError:
        """The MODEL_NOT_FOUND error for `model`, naming the models that are installed."""
        try:
            installed = ", ".join(sorted(await self.installed_models())) or "none"
        except WorkerError:
            installed = "unknown (listing them failed)"
        return WorkerError(
            ErrorCode.MODEL_NOT_FOUND,
            f"model '{model}' is not installed; installed models: {installed}",
        )


def _raise_for_status(response: httpx.Response) -> None:
    """Raise the ollama client's own error type for a non-2xx answer, so one policy covers both."""
    if not response.is_error:
        return
    message = ollama_error_message(response.text) or response.text
    # ResponseError json-parses its text and expects an object: hand it one, whatever the body was.
    raise ollama.ResponseError(json.dumps({"error": message}), response.status_code)


_clients: dict[asyncio.AbstractEventLoop, OllamaClient] = {}


def get_client() -> OllamaClient:
    """The shared client of the running event loop, created on first use."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        # A client is bound to the loop it was made on; drop those of loops that have closed.
        for old in [old for old in _clients if old.is_closed()]:
            del _clients[old]
        client = _clients[loop] = OllamaClient(get_settings())
    return client


async def warm_up(timeout_s: float = 2.0) -> None:
    """Build this loop's client and make one cheap call, so that the first jobs find the pool,
    a connection and the HTTP stack's lazy imports (about 30 ms) ready; failures are ignored."""
    client = get_client()
    try:
        await asyncio.wait_for(client.version(), timeout=timeout_s)
    except (WorkerError, TimeoutError) as exc:
        log.debug("warm-up call to Ollama failed (%s); the first job will make it", exc)
