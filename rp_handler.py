"""RunPod entry point: `python rp_handler.py [--rp_serve_api ...]` starts the worker.

Importing this module is cheap and offline; the RunPod SDK and Ollama are touched only
when the worker starts or a job runs.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from ollama_worker.config import ConfigError, get_settings
from ollama_worker.jobs import run_job


async def handler(job: dict[str, Any]) -> AsyncIterator[Any]:
    """Answer one job; an async generator so RunPod can stream what it yields."""
    async for item in run_job(job):
        yield item


def main() -> None:
    """Check the settings, wait for Ollama when the boot script asks us to, then serve jobs."""
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = get_settings()
    except ConfigError as exc:
        sys.exit(f"rp_handler: bad configuration: {exc}")

    # About 1.5 s of imports, paid only when the worker really starts, and before the
    # wait below so that it overlaps Ollama's own start-up.
    import runpod

    if "--rp_serve_api" in sys.argv:
        # The local API's FastAPI and uvicorn (0.5 s more), which start() would import late.
        import runpod.serverless.modules.rp_fastapi

    wait_s = os.environ.get("WORKER_WAIT_FOR_OLLAMA_S")
    if wait_s:
        from ollama_worker.boot import BootError, wait_for_ollama

        try:
            wait_for_ollama(settings.ollama_url, timeout_s=float(wait_s))
        except (BootError, ValueError) as exc:
            sys.exit(f"rp_handler: {exc}")

    runpod.serverless.start(
        {
            "handler": handler,
            "return_aggregate_stream": True,
            "concurrency_modifier": lambda _current: settings.max_concurrency,
        }
    )


if __name__ == "__main__":
    main()
