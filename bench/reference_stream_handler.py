"""The least a streaming RunPod handler can do: relay Ollama's /api/chat chunk by chunk.

The deployed figures' baseline. Started with the SDK's stock `runpod.serverless.start`, so
RunPod's production job loop runs it as it ships: one job-stream POST per yielded item, each
awaited before the next. A chat job (`{"prompt", "stream"}`) yields every Ollama chunk as it
arrives (or the one reply when not streamed); a `vapi_webhook` job yields one empty answer
without touching Ollama (the cheapest job there is). MAX_CONCURRENCY jobs run at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import runpod

_host = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434")
_client = httpx.AsyncClient(
    base_url=_host if "://" in _host else f"http://{_host}", timeout=httpx.Timeout(300.0)
)
_concurrency = int(os.environ.get("MAX_CONCURRENCY") or 1)


async def handler(job: dict[str, Any]) -> AsyncIterator[Any]:
    """Yield each /api/chat chunk as Ollama writes it."""
    job_input = job["input"]
    if job_input.get("type") == "vapi_webhook":
        yield {"response": {}}
        return
    body = {
        "model": os.environ.get("DEFAULT_MODEL", "voice-assistant"),
        "messages": [{"role": "user", "content": job_input["prompt"]}],
        "stream": bool(job_input.get("stream")),
    }
    if not body["stream"]:
        response = await _client.post("/api/chat", json=body)
        yield response.json()
        return
    async with _client.stream("POST", "/api/chat", json=body) as response:
        async for line in response.aiter_lines():
            if line:
                yield json.loads(line)


if __name__ == "__main__":
    runpod.serverless.start(
        {
            "handler": handler,
            "return_aggregate_stream": True,
            "concurrency_modifier": lambda _current: _concurrency,
        }
    )
