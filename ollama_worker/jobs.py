"""Route a RunPod job to its handler and turn every failure into one coded error item."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ollama_worker.chat import merge_stream_items, run_chat
from ollama_worker.config import Settings, get_settings
from ollama_worker.errors import ErrorCode, WorkerError
from ollama_worker.health import run_health
from ollama_worker.log_setup import loggable
from ollama_worker.ollama_client import OllamaClient, get_client
from ollama_worker.openai_route import run_openai
from ollama_worker.schemas import (
    SURROGATE,
    ChatJob,
    HealthJob,
    InputLimits,
    OpenAIJob,
    VapiWebhookJob,
    parse_job,
)
from ollama_worker.streaming import Merge, closing, coalesce, merge_text
from ollama_worker.vapi import run_vapi

log = logging.getLogger(__name__)


Job = ChatJob | HealthJob | OpenAIJob | VapiWebhookJob
# How a job's stream pieces that pile up during a RunPod POST merge into one item.
MERGES: dict[type[Any], Merge[Any]] = {
    ChatJob: merge_stream_items,
    OpenAIJob: merge_text,
    VapiWebhookJob: merge_text,
}


def answer_job(job: Job, client: OllamaClient, settings: Settings) -> AsyncIterator[Any]:
    """A parsed job's items as its handler yields them, whoever delivers them (RunPod or HTTP)."""
    match job:
        case ChatJob():
            return run_chat(job, client, settings)
        case HealthJob():
            return _one(run_health, client, settings)
        case OpenAIJob():
            return run_openai(job.openai_route, job.openai_input, client, settings)
        case VapiWebhookJob():
            return run_vapi(job, client, settings)
        case _:
            raise WorkerError(ErrorCode.INVALID_INPUT, f"no handler for {type(job).__name__}")


def _answer(raw_input: Any) -> AsyncIterator[Any]:
    """The job's items, stream pieces that pile up during a POST merged into one item."""
    settings = get_settings()
    job = parse_job(raw_input, InputLimits.from_settings(settings))
    items = answer_job(job, get_client(), settings)
    merge = MERGES.get(type(job))
    return items if merge is None else coalesce(items, merge)


async def _one(reply: Callable[..., Awaitable[Any]], *args: Any) -> AsyncIterator[Any]:
    """A one-item job as a stream; the call starts only when the item is asked for."""
    yield await reply(*args)


def encodable(item: Any) -> Any:
    """`item` as RunPod's SDK can send it: JSON whose text encodes as UTF-8.

    The SDK's POST of an item it cannot encode raises past its own handler and the job is
    never answered: lone surrogates (echoed from the input) become U+FFFD here, and values
    JSON does not know become their text. Checked cheaply first: most items are fine.
    """
    try:
        json.dumps(item, ensure_ascii=False).encode()
        return item
    except (UnicodeEncodeError, TypeError, ValueError):
        text = json.dumps(item, ensure_ascii=False, default=str)
        return json.loads(SURROGATE.sub("\ufffd", text))
    except RecursionError:
        log.error("an output item nests too deep to send; it is replaced by an error")
        return WorkerError(ErrorCode.INTERNAL, "an output item nests too deep to send").as_output()


def internal_error(job_id: Any, what: str) -> dict[str, str]:
    """The item of a job that failed on a bug: what, and the job id its traceback is under."""
    return WorkerError(
        ErrorCode.INTERNAL, f"{what} in job {job_id}; the worker log has the details"
    ).as_output()


def _kind(raw_input: Any) -> str:
    """The job's kind for the log: a caller's value, so quoted and cut unless plain."""
    if not isinstance(raw_input, dict):
        return "invalid"
    return loggable(raw_input.get("openai_route") or raw_input.get("type") or "chat")


async def run_job(job: dict[str, Any]) -> AsyncIterator[Any]:
    """Yield a job's output items; on failure yield `{"error": "CODE: ..."}` last."""
    job_id, raw_input = job.get("id", "-"), job.get("input")
    started, items = time.perf_counter(), 0
    try:
        async with closing(_answer(raw_input)) as answer:
            async for item in answer:
                items += 1
                yield encodable(item)
    except WorkerError as exc:
        if exc.code is ErrorCode.INTERNAL:  # a bug of ours or a library's: the cause, logged
            log.error("job %s (%s) failed: %s", job_id, _kind(raw_input), exc, exc_info=exc)
            yield internal_error(job_id, exc.message)
            return
        log.warning("job %s (%s) failed: %s", job_id, _kind(raw_input), exc)
        yield encodable(exc.as_output())
        return
    except Exception:
        # The traceback stays in the log; the caller gets a code and the job id to find it.
        log.exception("job %s (%s) crashed", job_id, _kind(raw_input))
        yield internal_error(job_id, "unexpected error")
        return
    log.info(
        "job %s (%s) done: %d item(s) in %.0f ms",
        job_id,
        _kind(raw_input),
        items,
        (time.perf_counter() - started) * 1000,
    )
