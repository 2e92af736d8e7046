"""Memory: our worker's resident set idle, with 16 streams in flight, and after 1,000 jobs,
read from /proc (the worker and any children), since RunPod bills and kills by memory."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from bench.common import (
    PROMPT,
    SHORT_REPLY,
    BenchError,
    Figure,
    StandIn,
    completed_output,
    process_tree,
    progress,
    rss_mb,
)
from tests.harness import WorkerProcess

TARGET_MB = 150.0
GROWTH_MB = 5.0
STREAMS = 16
FAST = {"first_token_delay_s": 0.0, "token_delay_s": 0.0, "reply": SHORT_REPLY, "num_parallel": 16}
# Slow enough (2.5 s a stream) that all 16 are mid-reply together even on a busy machine.
SLOW_REPLY = " ".join(f"word{i}" for i in range(25))
SLOW = {"first_token_delay_s": 0.05, "token_delay_s": 0.1, "reply": SLOW_REPLY, "num_parallel": 16}


def _settled_rss(pid: int) -> float:
    """RSS once the worker has been idle for a moment (the lowest of a few readings)."""
    readings = []
    for _ in range(3):
        time.sleep(0.1)
        readings.append(rss_mb(pid))
    return min(readings)


async def _jobs(url: str, count: int, concurrency: int = 8) -> None:
    """Send `count` chat jobs, half of them streamed, `concurrency` at a time."""
    queue = iter(range(count))
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def loop() -> None:
            for index in queue:
                job = {"prompt": PROMPT, "stream": index % 2 == 1}
                answer = (await client.post("/runsync", json={"input": job})).json()
                completed_output(answer)

        await asyncio.gather(*(loop() for _ in range(concurrency)))


async def _rss_with_streams(url: str, stand_in: StandIn, pid: int) -> tuple[float, int]:
    """Peak RSS while STREAMS streamed jobs are all in flight, and the in-flight count seen."""
    limits = httpx.Limits(max_connections=STREAMS + 2)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        job = {"input": {"prompt": PROMPT, "stream": True}}
        tasks = [asyncio.create_task(client.post("/runsync", json=job)) for _ in range(STREAMS)]
        deadline, seen, peak = time.monotonic() + 10, 0, 0.0
        while time.monotonic() < deadline and seen < STREAMS:
            seen = await asyncio.to_thread(stand_in.in_flight)
            await asyncio.sleep(0.02)
        if seen < STREAMS:
            raise BenchError(f"only {seen} of {STREAMS} streams reached the stand-in")
        for _ in range(5):
            peak = max(peak, rss_mb(pid))
            await asyncio.sleep(0.1)
        for task in tasks:
            items = completed_output((await task).json())
            # The worker merges pieces that pile up (the last one rides with the summary).
            text = "".join(item.get("message", {}).get("content", "") for item in items)
            if text != SLOW_REPLY or not items[-1].get("done"):
                raise BenchError(f"a stream gave {text!r} in {len(items)} items")
        return peak, seen


def measure(
    stand_in: StandIn, ours: WorkerProcess, *, jobs: int, warmup_jobs: int
) -> tuple[dict[str, Any], list[Figure]]:
    """RSS idle, after `warmup_jobs` and after `jobs` jobs, and with 16 streams in flight."""
    if ours.process is None:
        raise BenchError("the worker is not running")
    pid = ours.process.pid
    stand_in.configure(**FAST)
    fresh = _settled_rss(pid)
    asyncio.run(_jobs(ours.url, 1, 1))
    idle = _settled_rss(pid)
    asyncio.run(_jobs(ours.url, warmup_jobs - 1))
    after_warmup = _settled_rss(pid)
    asyncio.run(_jobs(ours.url, jobs - warmup_jobs))
    after_all = _settled_rss(pid)
    progress(f"memory: idle {idle} MB, after {warmup_jobs} {after_warmup}, {jobs} {after_all}")
    stand_in.configure(**SLOW)
    streams_mb, seen = asyncio.run(_rss_with_streams(ours.url, stand_in, pid))
    peak = rss_mb(pid, "VmHWM")
    growth = round(after_all - after_warmup, 2)
    details = {
        "processes": len(process_tree(pid)),
        "rss_mb": {
            "fresh": fresh,
            "idle_after_first_job": idle,
            f"after_{warmup_jobs}_jobs": after_warmup,
            f"after_{jobs}_jobs": after_all,
            f"with_{STREAMS}_streams": streams_mb,
            "peak_vmhwm": peak,
        },
        "streams_in_flight_seen": seen,
    }
    figures = [
        Figure(
            "memory.idle_mb",
            "RSS idle (after one job)",
            idle,
            "MiB",
            f"< {TARGET_MB:g} MiB",
            idle < TARGET_MB,
        ),
        Figure(
            f"memory.streams_{STREAMS}_mb",
            f"RSS with {STREAMS} streams in flight",
            streams_mb,
            "MiB",
            f"< {TARGET_MB:g} MiB",
            streams_mb < TARGET_MB,
        ),
        Figure(
            f"memory.after_{jobs}_jobs_mb",
            f"RSS after {jobs} jobs",
            after_all,
            "MiB",
            f"< {TARGET_MB:g} MiB",
            after_all < TARGET_MB,
        ),
        Figure(
            "memory.growth_mb",
            f"RSS growth from job {warmup_jobs} to job {jobs}",
            growth,
            "MiB",
            f"< {GROWTH_MB:g} MiB",
            growth < GROWTH_MB,
        ),
    ]
    return details, figures
