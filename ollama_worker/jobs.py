"""Route a RunPod job to its handler and turn every failure into one coded error item."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ollama_worker.chat import merge_stream_items, run_chat
from ollama_worker.config import get_settings
from ollama_worker.errors import ErrorCode, WorkerError
from ollama_worker.health import run_health
from ollama_worker.ollama_client import get_client
from ollama_worker.openai_route import run_openai
from ollama_worker.schemas import ChatJob, HealthJob, OpenAIJob, VapiWebhookJob, parse_job
from ollama_worker.streaming import closing, coalesce, merge_text
from ollama_worker.vapi import run_vapi

log = logging.getLogger(__name__)


def _answer(raw_input: Any) -> AsyncIterator[Any]:
    """The job's items, stream pieces that pile up during a POST merged into one item."""
    settings = get_settings()
    job = parse_job(raw_input, max_input_chars=settings.max_input_chars)
    client = get_client()
    match job:
        case ChatJob():
            return coalesce(run_chat(job, client, settings), merge_stream_items)
        case HealthJob():
            return _one(run_health, client, settings)
        case OpenAIJob():
            items = run_openai(job.openai_route, job.openai_input, client, settings)
            return coalesce(items, merge_text)
        case VapiWebhookJob():
            return coalesce(run_vapi(job, client, settings), merge_text)
        case _:
            raise WorkerError(ErrorCode.INVALID_INPUT, f"no handler for {type(job).__name__}")


async def _one(reply: Callable[..., Awaitable[Any]], *args: Any) -> AsyncIterator[Any]:
    """A one-item job as a stream; the call starts only when the item is asked for."""
    yield await reply(*args)


def _kind(raw_input: Any) -> str:
    if not isinstance(raw_input, dict):
        return "invalid"
    return str(raw_input.get("openai_route") or raw_input.get("type") or "chat")


async def run_job(job: dict[str, Any]) -> AsyncIterator[Any]:
    """Yield a job's output items; on failure yield `{"error": "CODE: ..."}` last."""
    job_id, raw_input = job.get("id", "-"), job.get("input")
    started, items = time.perf_counter(), 0
    try:
        async with closing(_answer(raw_input)) as answer:
            async for item in answer:
                items += 1
                yield item
    except WorkerError as exc:
        log.warning("job %s (%s) failed: %s", job_id, _kind(raw_input), exc)
        yield exc.as_output()
        return
    except Exception:
        # The traceback stays in the log; the caller gets a code and the job id to find it.
        log.exception("job %s (%s) crashed", job_id, _kind(raw_input))
        yield WorkerError(
            ErrorCode.INTERNAL, f"unexpected error in job {job_id}; the worker log has the details"
        ).as_output()
        return
    log.info(
        "job %s (%s) done: %d item(s) in %.0f ms",
        job_id,
        _kind(raw_input),
        items,
        (time.perf_counter() - started) * 1000,
    )
