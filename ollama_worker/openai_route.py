"""RunPod's OpenAI-compatible route, answered by Ollama's own `/v1` API and passed through."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from ollama_worker.config import Settings
from ollama_worker.errors import ErrorCode, WorkerError
from ollama_worker.ollama_client import OllamaClient
from ollama_worker.schemas import check_input_chars
from ollama_worker.streaming import closing

SSE_ERROR_PREFIX = 'data: {"error"'
# Ollama 0.12.10 turns an error after a /v1 stream began into one empty chunk whose model is
# "" and ends the stream without [DONE] (middleware/openai.go): both mean a cut-off reply.
EMPTY_MODEL = ('"model":""', '"model": ""')
TRUNCATED = "Ollama's reply broke off mid-stream"


def stream_failure(line: str) -> str | None:
    """Why an SSE `data:` line shows that Ollama failed mid-stream, or None if it does not."""
    if line.startswith(SSE_ERROR_PREFIX):
        return f"Ollama failed mid-stream: {line[6:]}"
    if any(marker in line for marker in EMPTY_MODEL):
        with contextlib.suppress(ValueError):
            chunk = json.loads(line[5:])
            if isinstance(chunk, dict) and chunk.get("model") == "":
                return f"{TRUNCATED} (an empty chunk with no model; Ollama's log says why)"
    return None


def _content_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):  # content parts: count their text
        return sum(len(part.get("text") or "") for part in content if isinstance(part, dict))
    return 0


def text_chars(body: dict[str, Any]) -> int:
    """Characters of prompt and message text in an OpenAI-style body, for the input size cap."""
    messages = body.get("messages")
    chars = sum(
        _content_chars(message.get("content"))
        for message in (messages if isinstance(messages, list) else [])
        if isinstance(message, dict)
    )
    prompt = body.get("prompt")
    prompts = prompt if isinstance(prompt, list) else [prompt]
    return chars + sum(len(p) for p in prompts if isinstance(p, str))


# Ollama's /v1 puts 1.0 for each of these a request leaves out, over the model's PARAMETERs.
MODEL_SAMPLING = ("temperature", "top_p")
SAMPLING_ROUTES = ("/v1/chat/completions", "/v1/completions")


async def with_model_sampling(
    route: str, body: dict[str, Any], client: OllamaClient
) -> dict[str, Any]:
    """`body` with the model's own temperature and top_p where the request names none."""
    missing = [key for key in MODEL_SAMPLING if body.get(key) is None]
    if route not in SAMPLING_ROUTES or not missing:
        return body
    try:
        parameters = await client.model_parameters(str(body["model"]))
    except WorkerError as exc:
        if exc.code in (ErrorCode.OLLAMA_UNAVAILABLE, ErrorCode.TIMEOUT):
            raise
        return body  # e.g. an unknown model: the request itself then says which ones exist
    return {**body, **{key: parameters[key] for key in missing if key in parameters}}


async def run_openai(
    route: str, body: dict[str, Any] | None, client: OllamaClient, settings: Settings
) -> AsyncIterator[Any]:
    """Answer one OpenAI-style request: the JSON body, or SSE events one per yield."""
    if route == "/v1/models":
        yield await client.raw_json("GET", route)
        return
    body = dict(body or {})
    body["model"] = body.get("model") or settings.default_model
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is not None:
        # Ollama 0.12.10 reads only max_tokens: sent as is, the newer name would limit nothing.
        body["max_tokens"] = body.pop("max_completion_tokens")
    check_input_chars(text_chars(body), settings.max_input_chars)
    body = await with_model_sampling(route, body, client)
    try:
        if body.get("stream") is not True:
            yield await client.raw_json("POST", route, body)
            return
        finished = False
        async with closing(client.raw_lines(route, body)) as lines:
            async for line in lines:
                if not line.startswith("data:"):
                    continue  # event separators, comments, keep-alives
                if failure := stream_failure(line):
                    raise WorkerError(ErrorCode.OLLAMA_ERROR, f"{failure}; retry the job")
                finished = line[5:].strip() == "[DONE]"
                yield line + "\n\n"
        if not finished:
            raise WorkerError(
                ErrorCode.OLLAMA_ERROR, f"{TRUNCATED} (no data: [DONE]); retry the job"
            )
    except WorkerError as exc:
        if exc.code is ErrorCode.MODEL_NOT_FOUND:
            raise await client.model_not_found(str(body["model"])) from exc
        raise
