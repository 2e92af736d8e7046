"""Overhead: sequential non-stream chat latency, straight to the stand-in, via a minimal
RunPod handler, and via our worker, so the gap between the last two is what the worker costs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from bench.common import (
    MODEL,
    PROMPT,
    SHORT_REPLY,
    BenchError,
    Figure,
    StandIn,
    completed_output,
    progress,
    summary_ms,
)
from tests.harness import WorkerProcess

STAND_IN = {"first_token_delay_s": 0.05, "token_delay_s": 0.02, "reply": SHORT_REPLY}
TARGET_PCT = 15.0


def _direct(client: httpx.Client) -> Callable[[], None]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": False}

    def call() -> None:
        reply = client.post("/api/chat", json=body).json()
        if reply.get("message", {}).get("content") != SHORT_REPLY:
            raise BenchError(f"unexpected stand-in reply: {reply}")

    return call


def _via(worker: WorkerProcess, content: Callable[[Any], str]) -> Callable[[], None]:
    def call() -> None:
        items = completed_output(worker.runsync({"prompt": PROMPT}))
        if content(items[0]) != SHORT_REPLY:
            raise BenchError(f"unexpected worker reply: {items}")

    return call


def measure(
    stand_in: StandIn, ours: WorkerProcess, reference: WorkerProcess, *, requests: int, warmup: int
) -> tuple[dict[str, Any], list[Figure]]:
    """Time `requests` sequential jobs per path, interleaved so drift hits all three alike."""
    stand_in.configure(**STAND_IN)
    with httpx.Client(base_url=stand_in.url, timeout=30) as client:
        calls = {
            "stand_in": _direct(client),
            "reference": _via(reference, lambda item: item["message"]["content"]),
            "ours": _via(ours, lambda item: item["message"]["content"]),
        }
        samples: dict[str, list[float]] = {name: [] for name in calls}
        for round_ in range(warmup + requests):
            for name, call in calls.items():
                started = time.perf_counter()
                call()
                if round_ >= warmup:
                    samples[name].append(time.perf_counter() - started)
            if round_ and round_ % 50 == 0:
                progress(f"overhead: {round_}/{warmup + requests} rounds")
    stats = {name: summary_ms(values) for name, values in samples.items()}
    ours_ms, ref_ms = stats["ours"]["median_ms"], stats["reference"]["median_ms"]
    excess_pct = (ours_ms / ref_ms - 1) * 100
    details = {"stand_in": STAND_IN, "requests": requests, "warmup": warmup, "latency": stats}
    figures = [
        Figure(
            "overhead.stand_in_median_ms",
            "Stand-in alone, median",
            stats["stand_in"]["median_ms"],
            "ms",
        ),
        Figure("overhead.reference_median_ms", "Minimal handler, median", ref_ms, "ms"),
        Figure("overhead.ours_median_ms", "Our worker, median", ours_ms, "ms"),
        Figure("overhead.ours_p95_ms", "Our worker, p95", stats["ours"]["p95_ms"], "ms"),
        Figure(
            "overhead.ours_vs_reference_pct",
            "Our median over the minimal handler's",
            round(excess_pct, 2),
            "%",
            f"<= {TARGET_PCT:g} %",
            excess_pct <= TARGET_PCT,
        ),
        Figure(
            "overhead.ours_minus_reference_ms",
            "Our median minus the minimal handler's",
            round(ours_ms - ref_ms, 3),
            "ms",
        ),
    ]
    return details, figures
