"""The `health` job: what Ollama runs and holds, so a caller can check a worker in one call."""

from __future__ import annotations

import asyncio
from typing import Any

from ollama_worker import __version__
from ollama_worker.config import Settings
from ollama_worker.errors import WorkerError
from ollama_worker.ollama_client import OllamaClient


async def run_health(client: OllamaClient, settings: Settings) -> dict[str, Any]:
    """Ollama's version, installed and loaded models (with each one's share in GPU memory),
    and ours, asked for all at once."""
    # A task group, unlike gather, cancels the other calls as soon as one fails.
    try:
        async with asyncio.TaskGroup() as group:
            version = group.create_task(client.version())
            installed = group.create_task(client.installed_models())
            # One /api/ps answers both which models are loaded and how much sits on the GPU.
            loaded = group.create_task(client.gpu_shares())
    except* WorkerError as failed:
        raise failed.exceptions[0] from None
    return {
        "ollama_version": version.result(),
        "models": installed.result(),
        "loaded": list(loaded.result()),
        "gpu_fraction": loaded.result(),
        "default_model": settings.default_model,
        "worker_version": __version__,
    }
