"""Concurrency: jobs per second at 1..16 concurrent jobs, against a stand-in taking 200 ms per
reply with 8 slots (ideal: min(jobs, 8) / 0.2 s), through our worker, through the minimal
handler and straight to the stand-in, so a shortfall can be put where it belongs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from bench.common import (
    MODEL,
    PROMPT,
    BenchError,
    Figure,
    StandIn,
    completed_output,
    progress,
    summary_ms,
)
from tests.harness import WorkerProcess

REPLY_S = 0.2
SLOTS = 8
LEVELS = (1, 2, 4, 8, 16)
REPLY = "Sure."
STAND_IN = {
    "first_token_delay_s": REPLY_S,
    "token_delay_s": 0.0,
    "reply": REPLY,
    "num_parallel": SLOTS,
}
TARGET_FRACTION = 0.9
RUNSYNC = ("/runsync", {"input": {"prompt": PROMPT}})
DIRECT = (
    "/api/chat",
    {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": False},
)


def ideal(jobs: int) -> float:
    """Jobs per second if nothing but the stand-in took time: each slot ends one per 200 ms."""
    return min(jobs, SLOTS) / REPLY_S


def _check_runsync(answer: Any) -> None:
    completed_output(answer)


def _check_direct(answer: Any) -> None:
    if answer.get("message", {}).get("content") != REPLY:
        raise BenchError(f"unexpected stand-in reply: {answer}")


async def _level(
    url: str,
    route: tuple[str, dict[str, Any]],
    check: Callable[[Any], None],
    jobs: int,
    duration_s: float,
) -> tuple[int, float, list[float]]:
    """`jobs` clients sending jobs back to back for `duration_s`: (done, seconds, latencies).

    aiohttp, the lighter client, so that the two cores go to the server side.
    """
    path, body = route
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=jobs)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        stop_at = started + duration_s

        async def client_loop() -> None:
            while time.perf_counter() < stop_at:
                sent = time.perf_counter()
                async with session.post(path, json=body) as response:
                    check(await response.json())
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(client_loop() for _ in range(jobs)))
        return len(latencies), time.perf_counter() - started, latencies


def measure(
    stand_in: StandIn,
    ours: WorkerProcess,
    reference: WorkerProcess,
    *,
    duration_s: float,
    warmup_s: float,
) -> tuple[dict[str, Any], list[Figure]]:
    """Throughput per path and level, and the stand-in's peak in-flight count through ours."""
    stand_in.configure(**STAND_IN)
    paths = {
        "stand_in": (stand_in.url, DIRECT, _check_direct),
        "reference": (reference.url, RUNSYNC, _check_runsync),
        "ours": (ours.url, RUNSYNC, _check_runsync),
    }
    rows: list[dict[str, Any]] = []
    for jobs in LEVELS:
        row: dict[str, Any] = {"concurrency": jobs, "ideal_jobs_per_s": ideal(jobs)}
        for name, (url, route, check) in paths.items():
            if warmup_s:
                asyncio.run(_level(url, route, check, jobs, warmup_s))
            stand_in.reset_stats()
            done, elapsed, latencies = asyncio.run(_level(url, route, check, jobs, duration_s))
            row[name] = {
                "jobs": done,
                "seconds": round(elapsed, 3),
                "jobs_per_s": round(done / elapsed, 2),
                "stand_in_max_in_flight": stand_in.peak_in_flight(),
                "latency": summary_ms(latencies),
            }
        rows.append(row)
        progress(
            f"concurrency {jobs:2d}: ours {row['ours']['jobs_per_s']:5.1f} jobs/s, minimal "
            f"{row['reference']['jobs_per_s']:5.1f}, stand-in {row['stand_in']['jobs_per_s']:5.1f}"
            f" (ideal {ideal(jobs):g})"
        )
    at8 = next(row for row in rows if row["concurrency"] == SLOTS)
    rate, peak = at8["ours"]["jobs_per_s"], at8["ours"]["stand_in_max_in_flight"]
    figures = [
        Figure(
            f"concurrency.jobs_per_s_at_{row['concurrency']}",
            f"Jobs/s at {row['concurrency']} concurrent",
            row["ours"]["jobs_per_s"],
            "jobs/s",
        )
        for row in rows
        if row["concurrency"] != SLOTS
    ]
    figures[3:3] = [
        Figure(
            "concurrency.jobs_per_s_at_8",
            "Jobs/s at 8 concurrent (ideal 40)",
            rate,
            "jobs/s",
            f">= {TARGET_FRACTION * ideal(SLOTS):g}",
            rate >= TARGET_FRACTION * ideal(SLOTS),
        ),
        Figure(
            "concurrency.reference_jobs_per_s_at_8",
            "Minimal handler: jobs/s at 8 concurrent",
            at8["reference"]["jobs_per_s"],
            "jobs/s",
        ),
        Figure(
            "concurrency.stand_in_jobs_per_s_at_8",
            "Stand-in alone: jobs/s at 8 concurrent",
            at8["stand_in"]["jobs_per_s"],
            "jobs/s",
        ),
        Figure(
            "concurrency.stand_in_in_flight_at_8",
            "Stand-in's peak in-flight at 8 concurrent",
            peak,
            "requests",
            f"= {SLOTS}",
            peak == SLOTS,
        ),
    ]
    details = {"stand_in": STAND_IN, "duration_s": duration_s, "levels": rows}
    return details, figures
