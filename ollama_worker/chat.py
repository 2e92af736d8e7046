"""The `chat` job: a conversation in, the assistant's reply out, whole or token by token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import ollama

from ollama_worker.config import Settings
from ollama_worker.errors import ErrorCode, WorkerError
from ollama_worker.ollama_client import OllamaClient
from ollama_worker.schemas import ChatJob
from ollama_worker.streaming import closing

# Top-level sampling knobs and the Ollama option each one sets; `options` wins over them.
TOP_LEVEL_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_tokens": "num_predict",
    "stop": "stop",
    "seed": "seed",
}


def ollama_options(job: ChatJob) -> dict[str, Any]:
    """Ollama `options` from the job: the top-level knobs, overridden by `options`."""
    options = {
        option: getattr(job, field)
        for field, option in TOP_LEVEL_OPTIONS.items()
        if getattr(job, field) is not None
    }
    if isinstance(options.get("stop"), str):
        options["stop"] = [options["stop"]]
    return options | job.options


def chat_request(job: ChatJob, default_model: str) -> dict[str, Any]:
    """The keyword arguments of `ollama.AsyncClient.chat` for this job."""
    request: dict[str, Any] = {
        "model": job.model or default_model,
        "messages": [turn.model_dump(exclude_none=True) for turn in job.conversation()],
    }
    if options := ollama_options(job):
        request["options"] = options
    for field in ("format", "tools", "think", "keep_alive"):
        if (value := getattr(job, field)) is not None:
            request[field] = value
    return request


def _ms(nanoseconds: int | None) -> float:
    return round((nanoseconds or 0) / 1e6, 3)


def usage(reply: ollama.ChatResponse) -> dict[str, int]:
    """OpenAI-style token counts from Ollama's final chunk."""
    prompt, completion = reply.prompt_eval_count or 0, reply.eval_count or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def timings(reply: ollama.ChatResponse) -> dict[str, float]:
    """Ollama's nanosecond durations as milliseconds, plus the generation speed."""
    eval_ns = reply.eval_duration or 0
    return {
        "total_ms": _ms(reply.total_duration),
        "load_ms": _ms(reply.load_duration),
        "prompt_eval_ms": _ms(reply.prompt_eval_duration),
        "eval_ms": _ms(eval_ns),
        "tokens_per_second": round((reply.eval_count or 0) / (eval_ns / 1e9), 2)
        if eval_ns
        else 0.0,
    }


def assistant_message(message: ollama.Message) -> dict[str, Any]:
    """The reply's message with only the fields it carries."""
    out: dict[str, Any] = {"role": "assistant", "content": message.content or ""}
    if message.tool_calls:
        out["tool_calls"] = [call.model_dump(exclude_none=True) for call in message.tool_calls]
    if message.thinking:
        out["thinking"] = message.thinking
    return out


def merge_messages(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two pieces of one assistant message as one: texts joined, tool calls kept in order."""
    merged = {**first, "content": first.get("content", "") + second.get("content", "")}
    if "thinking" in first or "thinking" in second:
        merged["thinking"] = first.get("thinking", "") + second.get("thinking", "")
    if "tool_calls" in first or "tool_calls" in second:
        merged["tool_calls"] = [*first.get("tool_calls", []), *second.get("tool_calls", [])]
    return merged


def merge_stream_items(first: Any, second: Any) -> dict[str, Any] | None:
    """A stream piece and the piece (or final summary) after it as one item; None if they can't be.

    The summary can take the last piece's `message` with it, so that the end of a stream
    costs one POST, not two; nothing merges after the summary, nor with an error.
    """
    if not (isinstance(first, dict) and isinstance(second, dict)):
        return None
    if first.get("done") is not False or "message" not in first or "error" in second:
        return None
    if second.get("done") is False and "message" in second:
        return {"message": merge_messages(first["message"], second["message"]), "done": False}
    if second.get("done") is True and "message" not in second:
        return {"message": first["message"], **second}
    return None


async def run_chat(
    job: ChatJob, client: OllamaClient, settings: Settings
) -> AsyncIterator[dict[str, Any]]:
    """Answer a chat job: one item, or one item per token chunk and a final summary."""
    request = chat_request(job, settings.default_model)
    try:
        if not job.stream:
            reply = await client.chat(request)
            if not reply.done:  # 0.12.10 answers its zero ChatResponse when the runner sent none
                raise WorkerError(
                    ErrorCode.OLLAMA_ERROR,
                    "Ollama's reply ended before it was done (its log says why); retry the job",
                )
            yield {
                "model": reply.model,
                "message": assistant_message(reply.message),
                "done_reason": reply.done_reason,
                "usage": usage(reply),
                "timings": timings(reply),
            }
            return
        # Closed on any way out, so the connection goes back to the pool at once.
        async with closing(client.chat_stream(request)) as chunks:
            async for chunk in chunks:
                message = assistant_message(chunk.message)
                # Ollama may put text in the final chunk too: with `tools`, 0.12's ChatHandler
                # holds back what its tool parser might still need and sends it there.
                if len(message) > 2 or message["content"]:  # skip chunks that carry nothing
                    yield {"message": message, "done": False}
                if chunk.done:
                    yield {
                        "done": True,
                        "model": chunk.model,
                        "done_reason": chunk.done_reason,
                        "usage": usage(chunk),
                        "timings": timings(chunk),
                    }
                    return
    except WorkerError as exc:
        if exc.code is ErrorCode.MODEL_NOT_FOUND:
            raise await client.model_not_found(request["model"]) from exc
        raise
    raise WorkerError(
        ErrorCode.OLLAMA_ERROR, "Ollama ended the stream without its final chunk; retry the job"
    )
