"""Time to first token: how long after the stand-in writes a token the handler yields it,
with the handler called in-process, and a raw httpx stream as the floor to compare with."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import statistics
import time
from typing import Any

import httpx

import rp_handler
from bench.common import MODEL, PROMPT, BenchError, Figure, StandIn, progress, summary_ms
from ollama_worker.config import get_settings
from ollama_worker.ollama_client import get_client

# 16 tokens: 50 ms to the first, 20 ms between the others.
REPLY = "One two three four five six seven eight nine ten eleven twelve thirteen fourteen a b"
TOKENS = len(REPLY.split())
TOKEN_S = 0.02
STAND_IN = {"first_token_delay_s": 0.05, "token_delay_s": TOKEN_S, "reply": REPLY}
TARGET_MS = 5.0


async def _via_handler(_client: httpx.AsyncClient) -> list[float]:
    """Monotonic arrival time of each token the handler yields."""
    arrivals: list[float] = []
    job = {"id": "bench-ttft", "input": {"prompt": PROMPT, "stream": True}}
    async for item in rp_handler.handler(job):
        now = time.monotonic()
        if "error" in item:
            raise BenchError(f"handler failed: {item['error']}")
        # The last token rides with the final summary (one POST fewer when deployed).
        if item.get("message", {}).get("content"):
            arrivals.append(now)
    return arrivals


async def _via_httpx(client: httpx.AsyncClient) -> list[float]:
    """Monotonic arrival time of each token line on a bare httpx stream (the floor)."""
    arrivals: list[float] = []
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": True}
    async with client.stream("POST", "/api/chat", json=body) as response:
        async for line in response.aiter_lines():
            now = time.monotonic()
            if line.strip() and not json.loads(line).get("done"):
                arrivals.append(now)
    return arrivals


async def _run(stand_in: StandIn, streams: int, warmup: int) -> dict[str, dict[str, list[float]]]:
    """Lags (arrival minus the stand-in's write) and gaps, per path, over `streams` streams."""
    out: dict[str, dict[str, list[float]]] = {}
    async with httpx.AsyncClient(base_url=stand_in.url, timeout=30) as client:
        for name, stream in (("handler", _via_handler), ("httpx", _via_httpx)):
            first, lags, gaps = [], [], []
            for index in range(warmup + streams):
                stand_in.reset_stats()
                arrivals = await stream(client)
                written = stand_in.last_token_times()
                if len(arrivals) != TOKENS or len(written) != TOKENS:
                    raise BenchError(f"{name}: {len(arrivals)} tokens, stand-in {len(written)}")
                if index < warmup:
                    continue
                first.append(arrivals[0] - written[0])
                lags.extend(a - w for a, w in zip(arrivals, written, strict=True))
                gaps.extend(b - a for a, b in itertools.pairwise(arrivals))
            out[name] = {"first": first, "lags": lags, "gaps": gaps}
    await get_client().aclose()
    return out


def measure(stand_in: StandIn, *, streams: int, warmup: int) -> tuple[dict[str, Any], list[Figure]]:
    """Median first-token overhead, worst per-token lag and token spacing at the handler."""
    stand_in.configure(**STAND_IN)
    saved = os.environ.get("OLLAMA_HOST")
    os.environ["OLLAMA_HOST"] = stand_in.host_port
    get_settings.cache_clear()
    try:
        with asyncio.Runner() as runner:
            runs = runner.run(_run(stand_in, streams, warmup))
    finally:
        if saved is None:
            os.environ.pop("OLLAMA_HOST", None)
        else:
            os.environ["OLLAMA_HOST"] = saved
        get_settings.cache_clear()
    stats = {
        name: {key: summary_ms(values) for key, values in run.items()} for name, run in runs.items()
    }
    handler = stats["handler"]
    ttft_ms = handler["first"]["median_ms"]
    gap_ms = statistics.median(runs["handler"]["gaps"]) * 1000
    min_gap_ms = handler["gaps"]["min_ms"]
    # Tokens arrive as written when none waits for a later one: every gap is most of the
    # stand-in's 20 ms (a batch would show gaps near 0) and the spacing keeps its median.
    spaced = min_gap_ms >= TOKEN_S * 1000 / 2 and abs(gap_ms - TOKEN_S * 1000) <= 2.0
    progress(f"ttft: handler +{ttft_ms:.2f} ms, httpx +{stats['httpx']['first']['median_ms']:.2f}")
    details = {"stand_in": STAND_IN, "streams": streams, "tokens_per_stream": TOKENS, **stats}
    figures = [
        Figure(
            "ttft.handler_overhead_median_ms",
            "First token: handler yield minus stand-in write, median",
            ttft_ms,
            "ms",
            f"< {TARGET_MS:g} ms",
            ttft_ms < TARGET_MS,
        ),
        Figure(
            "ttft.handler_overhead_p95_ms",
            "First token overhead, p95",
            handler["first"]["p95_ms"],
            "ms",
        ),
        Figure(
            "ttft.httpx_overhead_median_ms",
            "First token via bare httpx, median",
            stats["httpx"]["first"]["median_ms"],
            "ms",
        ),
        Figure(
            "ttft.token_lag_max_ms",
            "Any token: handler yield minus stand-in write, max",
            handler["lags"]["max_ms"],
            "ms",
        ),
        Figure(
            "ttft.token_gap_median_ms",
            "Gap between tokens at the handler, median (min)",
            round(gap_ms, 3),
            "ms",
            f"~{TOKEN_S * 1000:g} ms, min >= {TOKEN_S * 500:g} ms (min {min_gap_ms:.1f})",
            spaced,
        ),
    ]
    return details, figures
