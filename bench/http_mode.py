"""HTTP mode (a RunPod load-balancing endpoint), each figure beside its reference in one run:
the queue worker at a 25 ms round trip per POST for streams and VAPI messages, a direct call
to Ollama for the added latency.

HTTP mode runs as deployed: `ollama_boot.sh` with WORKER_MODE=http and the stand-in `ollama`
(tests/http_worker.py), called over loopback by httpx from this process. The queue worker is
`rp_handler.py` under the SDK's production loop fed by the stand-in job API at 25 ms per POST
(bench/deployed.py's DeployedProcess), on the bench's stand-in. Times are `time.monotonic()`
stamps of this process and of the stand-in (one system-wide clock).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from typing import Any

import httpx

from bench.common import MODEL, PROMPT, BenchError, Figure, StandIn, progress, summary_ms
from bench.deployed import (
    REALISTIC_RTT_S,
    SLOTS,
    STATUS_UPDATE,
    TOKEN_DELAY_S,
    VAPI_EVENT,
    DeployedProcess,
    _burst,
    _restore,
    _stream_reply,
    _text,
)
from standins.runpod import FakeRunPod
from tests.harness import ROOT
from tests.http_worker import HttpWorker

RATIO_TARGET = 1.05
TTFT_TARGET_MS = 5.0
VAPI_TARGET = 200.0
ADDED_TARGET_MS = 5.0
VAPI_CLIENTS = 8


@dataclass(frozen=True)
class Sizes:
    """How much of each HTTP-mode measurement to run."""

    stream_tokens: int
    streams: int  # per path
    vapi_messages: int
    latency_requests: int  # per path


FULL = Sizes(200, 5, 1000, 200)
QUICK = Sizes(20, 1, 40, 5)


def _http_stream(worker: HttpWorker, reply: str) -> dict[str, float]:
    """One streamed chat over HTTP mode's /v1: first token and delivery, client side."""
    worker.stand_in.reset_stats()
    body = {"messages": [{"role": "user", "content": PROMPT}], "stream": True}
    arrivals, text = [], ""
    with worker.http.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.monotonic())
                text += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
    if text != reply:
        raise BenchError("http mode: streamed text differs from the stand-in's reply")
    written = worker.stand_in.last_token_times()
    first, last = written[0], written[-1]
    return {
        "ttft_ms": round((arrivals[0] - first) * 1000, 3),
        "ratio": round((arrivals[-1] - first) / (last - first), 4),
    }


def _queue_stream(worker: DeployedProcess, stand_in: StandIn, reply: str) -> dict[str, float]:
    """One streamed chat job on the queue worker: first item and last at the job API."""
    stand_in.reset_stats()
    record = worker.run({"prompt": PROMPT, "stream": True})
    if _text(record.stream_items) != reply:
        raise BenchError("queue worker: streamed text differs from the stand-in's reply")
    written = stand_in.last_token_times()
    first, last = written[0], written[-1]
    return {
        "ttft_ms": round((record.stream[0][0] - first) * 1000, 3),
        "ratio": round((record.stream[-1][0] - first) / (last - first), 4),
    }


def _medians(rows: list[dict[str, float]]) -> dict[str, Any]:
    return {
        "median_ttft_ms": round(statistics.median(r["ttft_ms"] for r in rows), 3),
        "median_ratio": round(statistics.median(r["ratio"] for r in rows), 4),
        "runs": rows,
    }


async def _vapi_burst(url: str, count: int) -> float:
    """`count` status-update messages POSTed to /vapi by VAPI_CLIENTS clients: messages/s."""
    body = {"message": STATUS_UPDATE}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)
    limits = httpx.Limits(max_connections=VAPI_CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def sender() -> None:
            while not queue.empty():
                queue.get_nowait()
                answer = await client.post("/vapi", json=body)
                if answer.status_code != 200 or answer.json() != {}:
                    raise BenchError(f"http mode /vapi answered {answer.status_code}")

        await asyncio.gather(*(sender() for _ in range(VAPI_CLIENTS)))  # warm connections
        for index in range(count):
            queue.put_nowait(index)
        started = time.monotonic()
        await asyncio.gather(*(sender() for _ in range(VAPI_CLIENTS)))
        return count / (time.monotonic() - started)


def _latencies(worker: HttpWorker, requests: int) -> dict[str, Any]:
    """Sequential non-stream chat completions, interleaved: through HTTP mode and straight to
    its Ollama's own /v1 (the same body, the model named, as the worker sends it)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
    paths = {"http_mode": worker.url, "direct": worker.ollama_url}
    samples: dict[str, list[float]] = {name: [] for name in paths}
    with httpx.Client(timeout=30) as client:
        for index in range(requests + 3):
            for name, url in paths.items():
                sent = time.monotonic()
                client.post(f"{url}/v1/chat/completions", json=body).raise_for_status()
                if index >= 3:  # warm-up
                    samples[name].append(time.monotonic() - sent)
    return {name: summary_ms(values) for name, values in samples.items()}


def measure(stand_in: StandIn, sizes: Sizes) -> tuple[dict[str, Any], list[Figure]]:
    """Streams and VAPI messages beside the queue worker, latency beside direct Ollama."""
    reply = _stream_reply(sizes.stream_tokens)
    stream_config = {"first_token_delay_s": 0.0, "token_delay_s": TOKEN_DELAY_S, "reply": reply}
    env = {"OLLAMA_NUM_PARALLEL": str(SLOTS), "MAX_CONCURRENCY": str(SLOTS)}
    http = HttpWorker(env)
    details: dict[str, Any] = {"rtt_s": REALISTIC_RTT_S, "tokens": sizes.stream_tokens}
    with FakeRunPod() as fake:
        queue_env = {**env, "OLLAMA_HOST": stand_in.host_port, "OLLAMA_RETRY_DEADLINE_S": "10"}
        queue = DeployedProcess(fake, ROOT / "rp_handler.py", queue_env, "queue")
        failed = True
        try:
            http.launch()
            queue.launch()
            http.wait_ready()
            queue.wait_ready()
            fake.configure(rtt_s=REALISTIC_RTT_S)
            http.configure_ollama(**stream_config)
            stand_in.configure(**stream_config)
            details["stream"] = {
                "http_mode": _medians([_http_stream(http, reply) for _ in range(sizes.streams)]),
                "queue": _medians(
                    [_queue_stream(queue, stand_in, reply) for _ in range(sizes.streams)]
                ),
            }
            http.configure_ollama(token_delay_s=0.0, reply=None)
            details["vapi"] = {
                "http_mode_per_s": round(
                    asyncio.run(_vapi_burst(http.url, sizes.vapi_messages)), 1
                ),
                "queue_per_s": round(
                    sizes.vapi_messages
                    / _burst(queue, fake, REALISTIC_RTT_S, VAPI_EVENT, sizes.vapi_messages, True)[
                        "wall_s"
                    ],
                    1,
                ),
                "clients": VAPI_CLIENTS,
            }
            details["latency"] = _latencies(http, sizes.latency_requests)
            failed = False
        finally:
            if failed:
                progress(f"http mode logs kept: {http.log_path} {queue.log_path}")
            http.stop(keep_log=failed)
            queue.stop(keep_log=failed)
            _restore(stand_in)
    stream, vapi, latency = details["stream"], details["vapi"], details["latency"]
    added = round(latency["http_mode"]["median_ms"] - latency["direct"]["median_ms"], 3)
    details["latency"]["added_median_ms"] = added
    progress(
        f"http mode: stream ttft {stream['http_mode']['median_ttft_ms']} ms ratio "
        f"{stream['http_mode']['median_ratio']} (queue at 25 ms: "
        f"{stream['queue']['median_ttft_ms']} ms, {stream['queue']['median_ratio']}); VAPI "
        f"{vapi['http_mode_per_s']}/s (queue {vapi['queue_per_s']}/s); added {added} ms"
    )
    return details, _figures(details)


def _figures(details: dict[str, Any]) -> list[Figure]:
    stream, vapi, latency = details["stream"], details["vapi"], details["latency"]
    ours, queue = stream["http_mode"], stream["queue"]
    tokens = details["tokens"]
    return [
        Figure(
            "http_mode.stream_ttft_ms",
            f"HTTP mode: first token of a {tokens}-token stream, client minus stand-in, median",
            ours["median_ttft_ms"],
            "ms",
            f"< {TTFT_TARGET_MS:g} ms",
            ours["median_ttft_ms"] < TTFT_TARGET_MS,
        ),
        Figure(
            "http_mode.queue_stream_ttft_ms",
            "Reference: queue worker's first item at the job API, 25 ms RTT, median",
            queue["median_ttft_ms"],
            "ms",
        ),
        Figure(
            "http_mode.stream_ratio",
            f"HTTP mode: delivery ratio of a {tokens}-token stream",
            ours["median_ratio"],
            "x",
            f"<= {RATIO_TARGET}",
            ours["median_ratio"] <= RATIO_TARGET,
        ),
        Figure(
            "http_mode.queue_stream_ratio",
            "Reference: queue worker's delivery ratio at 25 ms RTT",
            queue["median_ratio"],
            "x",
        ),
        Figure(
            "http_mode.vapi_per_s",
            f"HTTP mode: VAPI server messages/s ({vapi['clients']} clients)",
            vapi["http_mode_per_s"],
            "messages/s",
            f">= {VAPI_TARGET:g}",
            vapi["http_mode_per_s"] >= VAPI_TARGET,
        ),
        Figure(
            "http_mode.queue_vapi_per_s",
            "Reference: queue worker's VAPI events/s at 25 ms RTT",
            vapi["queue_per_s"],
            "messages/s",
        ),
        Figure(
            "http_mode.added_latency_ms",
            "HTTP mode: added latency of a chat completion over direct Ollama, median",
            latency["added_median_ms"],
            "ms",
            f"<= {ADDED_TARGET_MS:g} ms",
            latency["added_median_ms"] <= ADDED_TARGET_MS,
        ),
        Figure(
            "http_mode.direct_latency_ms",
            "Reference: the same chat completion straight to Ollama, median",
            latency["direct"]["median_ms"],
            "ms",
        ),
    ]
