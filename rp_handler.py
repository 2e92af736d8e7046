"""RunPod entry point: `python rp_handler.py [--rp_serve_api ...]` starts the worker.

Importing this module is cheap and offline; the RunPod SDK and Ollama are touched only
when the worker starts or a job runs.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

from ollama_worker.config import ConfigError, Settings, get_settings
from ollama_worker.jobs import run_job
from ollama_worker.log_setup import configure_logging


async def handler(job: dict[str, Any]) -> AsyncIterator[Any]:
    """Answer one job; an async generator so RunPod can stream what it yields."""
    async for item in run_job(job):
        yield item


def deployed() -> bool:
    """Whether the SDK will run its production job loop rather than a local API or test job."""
    local_flags = ("--rp_serve_api", "--test_input")
    if any(arg.split("=")[0] in local_flags for arg in sys.argv[1:]):
        return False
    return bool(os.environ.get("RUNPOD_WEBHOOK_GET_JOB")) and not os.environ.get(
        "RUNPOD_REALTIME_PORT"
    )


def wait_for_ollama_in_background(
    settings: Settings, timeout_s: float
) -> concurrent.futures.Future[None]:
    """Wait for Ollama on a thread of its own, so the SDK's imports and checks overlap it."""
    from ollama_worker.boot import wait_for_ollama

    ready: concurrent.futures.Future[None] = concurrent.futures.Future()

    def wait() -> None:
        try:
            wait_for_ollama(settings.ollama_url, timeout_s=timeout_s)
        except Exception as exc:
            ready.set_exception(exc)
        else:
            ready.set_result(None)

    # A daemon, so that a stop during boot does not wait for it.
    threading.Thread(target=wait, name="wait-for-ollama", daemon=True).start()
    return ready


def main() -> None:
    """Check the settings, wait for Ollama when the boot script asks us to, then serve jobs."""
    try:
        configure_logging()
        settings = get_settings()
        wait_s = settings.wait_for_ollama_s
    except ConfigError as exc:
        sys.exit(f"rp_handler: bad configuration: {exc}")

    ready = wait_for_ollama_in_background(settings, wait_s) if wait_s else None
    # About 1.5 s of imports, paid only when the worker really starts, while Ollama starts.
    import runpod

    if deployed():
        from ollama_worker import job_loop
        from ollama_worker.ollama_client import warm_up

        job_loop.install(ready=ready, stop_grace_s=settings.stop_grace_s, warm_up=warm_up)
    else:
        if "--rp_serve_api" in sys.argv:
            # The local API's FastAPI and uvicorn (0.5 s more), which start() would import late.
            import runpod.serverless.modules.rp_fastapi
        if ready is not None:
            try:
                ready.result()
            except Exception as exc:
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
