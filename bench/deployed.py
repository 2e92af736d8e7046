"""The deployed worker: `python rp_handler.py` under RunPod's production job loop, fed by the
stand-in job API (standins.runpod, in this process), each figure beside the minimal
per-chunk handler (`reference_stream_handler.py`, the SDK's stock loop) in the same run.

Stream delivery at 0/25/50 ms round trip, job start, saturation of 8 Ollama slots and VAPI
events per second; the cold start is in deployed_cold_start.py. Every time is a
`time.monotonic()` stamp: the job API's (a job taken, an item or a job-done POST arriving)
and the stand-in Ollama's (each token written), one system-wide clock for both processes.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import httpx

from bench.common import MODEL, PROMPT, BenchError, Figure, StandIn, progress, summary_ms
from standins.ollama import FakeConfig
from standins.runpod import FakeRunPod, JobRecord
from tests.harness import ROOT, DeployedWorker

HERE = Path(__file__).resolve().parent
# Round trips to RunPod's job API: none (the condition), realistic, slow.
RTTS_S = (0.0, 0.025, 0.05)
REALISTIC_RTT_S = 0.025
JOB_TIMEOUT_S = 180.0

TOKEN_DELAY_S = 0.005
STREAM_TARGET = 1.15
START_TARGET_MS = 10.0
SLOTS = 8
REPLY_S = 0.3
SATURATION_TARGET = 0.9
VAPI_TARGET = 200.0
STATUS_UPDATE = {"type": "status-update", "status": "in-progress", "call": {"id": "c1"}}
VAPI_EVENT = {"type": "vapi_webhook", "payload": {"message": STATUS_UPDATE}}
# The stand-in settings these measurements change, put back to its defaults afterwards.
TOUCHED = ("first_token_delay_s", "token_delay_s", "reply", "num_parallel")


@dataclass(frozen=True)
class Sizes:
    """How much of each deployed measurement to run."""

    stream_tokens: int
    streams: int  # per round trip, ours
    reference_streams: int  # per round trip, the reference (one chunk per POST: slow)
    start_jobs: int  # per round trip and handler
    saturation_jobs: int
    vapi_events: int
    reference_vapi_events: int  # the stock loop takes ~8 jobs per second
    burst_warmup: bool  # one warm-up job per slot before each burst
    boots: int  # cold starts per variant


FULL = Sizes(200, 5, 3, 100, 48, 1000, 200, True, 3)
QUICK = Sizes(20, 1, 1, 3, 8, 40, 8, False, 1)


class DeployedProcess(DeployedWorker):
    """The tests' DeployedWorker running `script`, its failures BenchErrors, its jobs checked."""

    def __init__(
        self, fake: FakeRunPod, script: Path, env: dict[str, str], name: str, **options: Any
    ) -> None:
        """`options` go to DeployedWorker (`boot`, `startup_timeout_s`)."""
        worker_id = f"{name}-{uuid.uuid4().hex[:6]}"
        super().__init__(fake, env, worker_id=worker_id, script=str(script), **options)
        self.name = name

    def wait_ready(self, timeout: float | None = 60.0) -> float:
        """Return once it opened its first job-take poll (it takes jobs)."""
        try:
            return super().wait_ready(timeout)
        except RuntimeError as exc:
            raise BenchError(f"{self.name}: {exc}") from None

    def wait_done(self, job_id: str, timeout: float = JOB_TIMEOUT_S) -> JobRecord:
        """The job's record once its job-done POST arrived; BenchError unless it completed."""
        try:
            record = super().wait_done(job_id, timeout)
        except TimeoutError as exc:
            raise BenchError(f"{self.name}: {exc}") from None
        if record.status != "COMPLETED":
            raise BenchError(f"{self.name}: job {job_id} {record.status}: {record.result}")
        for item in record.stream_items:
            if isinstance(item, dict) and item.get("error"):
                raise BenchError(f"{self.name}: job {job_id} failed: {item['error']}")
        return record


def _text(items: list[Any]) -> str:
    """The reply a chat job's items add up to (merged or one per chunk)."""
    return "".join(
        item.get("message", {}).get("content", "") for item in items if isinstance(item, dict)
    )


def _stream_reply(tokens: int) -> str:
    """A reply the stand-in streams as `tokens` chunks (one word each)."""
    return " ".join(f"w{index}" for index in range(tokens))


def _streams(
    worker: DeployedProcess, fake: FakeRunPod, stand_in: StandIn, count: int, reply: str
) -> list[dict[str, float]]:
    """`count` sequential streamed chats: delivery ratio and POSTs of each."""
    rows = []
    for _ in range(count):
        stand_in.reset_stats()
        record = worker.run({"prompt": PROMPT, "stream": True})
        if _text(record.stream_items) != reply:
            raise BenchError(f"{worker.name}: streamed text differs from the stand-in's reply")
        written = stand_in.token_times()
        if len(written) != 1:
            raise BenchError(f"expected one stream at the stand-in, saw {len(written)}")
        first, last = written[0][0], written[0][-1]
        arrived = record.stream[-1][0]
        rows.append(
            {
                "ratio": round((arrived - first) / (last - first), 4),
                "posts": len(record.stream),
                "generation_s": round(last - first, 4),
                "last_item_after_last_token_ms": round((arrived - last) * 1000, 2),
            }
        )
    return rows


def _stream_summary(rows: list[dict[str, float]]) -> dict[str, Any]:
    return {
        "median_ratio": round(statistics.median(r["ratio"] for r in rows), 4),
        "median_posts": statistics.median(r["posts"] for r in rows),
        "median_generation_s": round(statistics.median(r["generation_s"] for r in rows), 4),
        "runs": rows,
    }


def _job_starts(worker: DeployedProcess, rtt_s: float, count: int) -> dict[str, float]:
    """Sequential non-stream chats, Ollama answering at once: job taken -> first item.

    Between jobs: the job-done round trip, then a random pause of up to 100 ms, so that jobs
    arrive at any phase of a loop that looks for work every 100 ms (the SDK's stock loop).
    """
    pauses = random.Random(8)
    samples = []
    for _ in range(count + 2):
        record = worker.run({"prompt": PROMPT})
        assert record.taken_at is not None
        samples.append(record.stream[0][0] - record.taken_at)
        time.sleep(rtt_s + 0.005 + pauses.uniform(0, 0.1))
    return summary_ms(samples[2:])  # two warm-up jobs


def _burst(
    worker: DeployedProcess,
    fake: FakeRunPod,
    rtt_s: float,
    job_input: Any,
    count: int,
    warmup: bool,
) -> dict[str, Any]:
    """`count` jobs submitted at once: wall time from submit to the last job-done.

    After a warm-up burst of one job per slot (the first burst opens the worker's
    connections to the stand-in and runs paths no later job runs again: ~80 ms more).
    """
    fake.configure(rtt_s=rtt_s)
    for job_id in fake.submit_many([job_input] * SLOTS * warmup, worker_id=worker.worker_id):
        worker.wait_done(job_id)
    fake.reset()
    fake.configure(rtt_s=rtt_s)
    ids = fake.submit_many([job_input] * count, worker_id=worker.worker_id)
    records = [worker.wait_done(job_id) for job_id in ids]
    submitted = min(r.submitted_at for r in records if r.submitted_at is not None)
    last_done = max(r.done_at for r in records if r.done_at is not None)
    return {
        "jobs": count,
        "wall_s": round(last_done - submitted, 4),
        "max_unfinished": fake.peak_unfinished(),
        "stream_posts_per_job": statistics.median(len(r.stream) for r in records),
    }


def _direct_reply_s(stand_in: StandIn) -> float:
    """Median wall time of a non-stream /api/chat straight to the stand-in (3 requests)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": False}
    times = []
    with httpx.Client(base_url=stand_in.url, timeout=30) as client:
        for _ in range(3):
            sent = time.monotonic()
            client.post("/api/chat", json=body).raise_for_status()
            times.append(time.monotonic() - sent)
    return statistics.median(times)


def _restore(stand_in: StandIn) -> None:
    defaults = {f.name: f.default for f in fields(FakeConfig) if f.name in TOUCHED}
    stand_in.configure(**defaults)


def measure(stand_in: StandIn, sizes: Sizes) -> tuple[dict[str, Any], list[Figure]]:
    """Every steady-state deployed figure, ours and the reference's, interleaved per setting."""
    env = {
        "OLLAMA_HOST": stand_in.host_port,
        "OLLAMA_NUM_PARALLEL": str(SLOTS),
        "MAX_CONCURRENCY": str(SLOTS),
        "OLLAMA_RETRY_DEADLINE_S": "10",
    }
    details: dict[str, Any] = {}
    with FakeRunPod() as fake:
        workers = {
            "ours": DeployedProcess(fake, ROOT / "rp_handler.py", env, "ours"),
            "reference": DeployedProcess(
                fake, HERE / "reference_stream_handler.py", env, "reference"
            ),
        }
        failed = True
        try:
            for worker in workers.values():
                worker.launch()
            for worker in workers.values():
                worker.wait_ready()
            details = _measure(stand_in, fake, workers, sizes)
            failed = False
        finally:
            if failed:
                kept = " ".join(str(worker.log_path) for worker in workers.values())
                progress(f"deployed worker logs kept: {kept}")
            for worker in workers.values():
                worker.stop(keep_log=failed)
            _restore(stand_in)
    return details, _figures(details)


def _measure(
    stand_in: StandIn, fake: FakeRunPod, workers: dict[str, DeployedProcess], sizes: Sizes
) -> dict[str, Any]:
    reply = _stream_reply(sizes.stream_tokens)
    details: dict[str, Any] = {"rtts_s": list(RTTS_S), "slots": SLOTS}

    # 1. Stream delivery.
    stand_in.configure(first_token_delay_s=0.0, token_delay_s=TOKEN_DELAY_S, reply=reply)
    stream: dict[str, Any] = {"tokens": sizes.stream_tokens, "token_delay_s": TOKEN_DELAY_S}
    for rtt in RTTS_S:
        fake.configure(rtt_s=rtt)
        row = {}
        for name, worker in workers.items():
            count = sizes.streams if name == "ours" else sizes.reference_streams
            row[name] = _stream_summary(_streams(worker, fake, stand_in, count, reply))
        stream[f"rtt_{rtt * 1000:g}ms"] = row
        progress(
            f"deployed stream at {rtt * 1000:g} ms RTT: ratio ours {row['ours']['median_ratio']}"
            f" ({row['ours']['median_posts']} POSTs), reference "
            f"{row['reference']['median_ratio']} ({row['reference']['median_posts']} POSTs)"
        )
    details["stream"] = stream

    # 2. Job start.
    stand_in.configure(first_token_delay_s=0.0, token_delay_s=0.0, reply=None)
    start: dict[str, Any] = {}
    for rtt in (0.0, REALISTIC_RTT_S):
        fake.configure(rtt_s=rtt)
        start[f"rtt_{rtt * 1000:g}ms"] = row = {
            name: _job_starts(worker, rtt, sizes.start_jobs) for name, worker in workers.items()
        }
        progress(
            f"deployed job start at {rtt * 1000:g} ms RTT: p50/p95 ours "
            f"{row['ours']['median_ms']}/{row['ours']['p95_ms']} ms, reference "
            f"{row['reference']['median_ms']}/{row['reference']['p95_ms']} ms"
        )
    details["job_start"] = start

    # 3. Saturation of 8 slots by 300 ms jobs.
    stand_in.configure(
        first_token_delay_s=REPLY_S, token_delay_s=0.0, reply="Sure.", num_parallel=SLOTS
    )
    direct_s = _direct_reply_s(stand_in)
    saturation: dict[str, Any] = {
        "jobs": sizes.saturation_jobs,
        "reply_s": REPLY_S,
        "direct_reply_s": round(direct_s, 4),
    }
    for rtt in (0.0, REALISTIC_RTT_S):
        ideal_s = sizes.saturation_jobs / SLOTS * (REPLY_S + 2 * rtt)
        row = {"ideal_s": round(ideal_s, 4)}
        for name, worker in workers.items():
            burst = _burst(
                worker, fake, rtt, {"prompt": PROMPT}, sizes.saturation_jobs, sizes.burst_warmup
            )
            burst["fraction_of_ideal"] = round(ideal_s / burst["wall_s"], 4)
            row[name] = burst
        saturation[f"rtt_{rtt * 1000:g}ms"] = row
        progress(
            f"deployed saturation at {rtt * 1000:g} ms RTT (ideal {ideal_s:.2f} s): ours "
            f"{row['ours']['wall_s']} s ({row['ours']['fraction_of_ideal']}, max unfinished "
            f"{row['ours']['max_unfinished']}), reference {row['reference']['wall_s']} s "
            f"({row['reference']['fraction_of_ideal']})"
        )
    details["saturation"] = saturation

    # 4. VAPI events per second.
    vapi: dict[str, Any] = {"event": VAPI_EVENT}
    for rtt in (0.0, REALISTIC_RTT_S):
        row = {"bound_per_s": round(SLOTS / (2 * rtt), 1) if rtt else None}
        for name, worker in workers.items():
            count = sizes.vapi_events if name == "ours" else sizes.reference_vapi_events
            burst = _burst(worker, fake, rtt, VAPI_EVENT, count, sizes.burst_warmup)
            burst["events_per_s"] = round(count / burst["wall_s"], 1)
            row[name] = burst
        vapi[f"rtt_{rtt * 1000:g}ms"] = row
        progress(
            f"deployed VAPI events at {rtt * 1000:g} ms RTT: ours {row['ours']['events_per_s']}"
            f"/s, reference {row['reference']['events_per_s']}/s"
        )
    details["vapi"] = vapi
    return details


def _figures(details: dict[str, Any]) -> list[Figure]:
    figures = []
    for rtt in RTTS_S:
        key = f"rtt_{rtt * 1000:g}ms"
        row = details["stream"][key]
        judged = rtt > 0
        ratio = row["ours"]["median_ratio"]
        figures += [
            Figure(
                f"deployed_stream.ratio_{key}",
                f"Stream delivery ratio at {rtt * 1000:g} ms RTT",
                ratio,
                "x",
                f"<= {STREAM_TARGET}" if judged else "",
                ratio <= STREAM_TARGET if judged else None,
            ),
            Figure(
                f"deployed_stream.reference_ratio_{key}",
                f"Reference: stream delivery ratio at {rtt * 1000:g} ms RTT",
                row["reference"]["median_ratio"],
                "x",
            ),
            Figure(
                f"deployed_stream.posts_{key}",
                f"POSTs per stream at {rtt * 1000:g} ms RTT",
                row["ours"]["median_posts"],
                "POSTs",
            ),
            Figure(
                f"deployed_stream.reference_posts_{key}",
                f"Reference: POSTs per stream at {rtt * 1000:g} ms RTT",
                row["reference"]["median_posts"],
                "POSTs",
            ),
        ]
    for rtt in (0.0, REALISTIC_RTT_S):
        key = f"rtt_{rtt * 1000:g}ms"
        row = details["job_start"][key]
        judged = rtt == REALISTIC_RTT_S
        p95 = row["ours"]["p95_ms"]
        figures += [
            Figure(
                f"deployed_start.p50_{key}",
                f"Job start p50 at {rtt * 1000:g} ms RTT",
                row["ours"]["median_ms"],
                "ms",
            ),
            Figure(
                f"deployed_start.p95_{key}",
                f"Job start p95 at {rtt * 1000:g} ms RTT",
                p95,
                "ms",
                f"<= {START_TARGET_MS:g} ms" if judged else "",
                p95 <= START_TARGET_MS if judged else None,
            ),
            Figure(
                f"deployed_start.reference_p50_{key}",
                f"Reference: job start p50 at {rtt * 1000:g} ms RTT",
                row["reference"]["median_ms"],
                "ms",
            ),
            Figure(
                f"deployed_start.reference_p95_{key}",
                f"Reference: job start p95 at {rtt * 1000:g} ms RTT",
                row["reference"]["p95_ms"],
                "ms",
            ),
        ]
    for rtt in (0.0, REALISTIC_RTT_S):
        key = f"rtt_{rtt * 1000:g}ms"
        row = details["saturation"][key]
        judged = rtt == 0
        fraction = row["ours"]["fraction_of_ideal"]
        peak = row["ours"]["max_unfinished"]
        figures += [
            Figure(
                f"deployed_saturation.fraction_{key}",
                f"Saturation at {rtt * 1000:g} ms RTT (fraction of ideal {row['ideal_s']:g} s)",
                fraction,
                "",
                f">= {SATURATION_TARGET}" if judged else "",
                fraction >= SATURATION_TARGET if judged else None,
            ),
            Figure(
                f"deployed_saturation.max_unfinished_{key}",
                f"Jobs taken and unfinished at most, at {rtt * 1000:g} ms RTT",
                peak,
                "jobs",
                f"<= {SLOTS}",
                peak <= SLOTS,
            ),
            Figure(
                f"deployed_saturation.reference_fraction_{key}",
                f"Reference: saturation at {rtt * 1000:g} ms RTT",
                row["reference"]["fraction_of_ideal"],
                "",
            ),
        ]
    for rtt in (0.0, REALISTIC_RTT_S):
        key = f"rtt_{rtt * 1000:g}ms"
        row = details["vapi"][key]
        judged = rtt == 0
        rate = row["ours"]["events_per_s"]
        bound = f" (bound {row['bound_per_s']:g}/s)" if row["bound_per_s"] else ""
        figures += [
            Figure(
                f"deployed_vapi.events_per_s_{key}",
                f"VAPI events/s at {rtt * 1000:g} ms RTT{bound}",
                rate,
                "events/s",
                f">= {VAPI_TARGET:g}" if judged else "",
                rate >= VAPI_TARGET if judged else None,
            ),
            Figure(
                f"deployed_vapi.reference_events_per_s_{key}",
                f"Reference: VAPI events/s at {rtt * 1000:g} ms RTT",
                row["reference"]["events_per_s"],
                "events/s",
            ),
        ]
    return figures
