"""The least a RunPod handler can do for a chat: one POST to Ollama, nothing else (the baseline).

`python bench/reference_handler.py --rp_serve_api ...` serves it like rp_handler.py.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import runpod

_host = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434")
_client = httpx.AsyncClient(
    base_url=_host if "://" in _host else f"http://{_host}", timeout=httpx.Timeout(300.0)
)


async def handler(job: dict[str, Any]) -> AsyncIterator[Any]:
    """Send the prompt to /api/chat and yield Ollama's answer as it is."""
    body = {
        "model": os.environ.get("DEFAULT_MODEL", "voice-assistant"),
        "messages": [{"role": "user", "content": job["input"]["prompt"]}],
        "stream": False,
    }
    response = await _client.post("/api/chat", json=body)
    yield response.json()


if __name__ == "__main__":
    runpod.serverless.start({"handler": handler, "return_aggregate_stream": True})
