"""The real Ollama (CPU, Gemma 3 270M): what the deployed worker adds to real traffic.

`ollama serve` as `make ollama` provides it (tests/real_ollama.py starts it, with
`voice-assistant` built from the project's Modelfile on the real GGUF), each figure beside the
same request sent straight to it in the same run:

- time to first token and tokens per second of a streamed chat, straight from Ollama (httpx
  streaming /api/chat) and through the deployed worker (the SDK's production loop against the
  stand-in job API, 25 ms round trip per POST);
- the delivery ratio of that real stream, as deployed.py defines it: (the last item at the job
  API - Ollama writing its first token) / (Ollama's end of stream - its first token). Ollama's
  own times are read by a TCP relay in front of it (`Relay`), which stamps each NDJSON line as
  it leaves Ollama; both paths go through it;
- the cold start of `ollama_boot.sh` with the real `ollama` first on PATH to the first job
  done (a real model load), beside a bare `ollama serve` answering the same chat.

These are CPU figures of a 270M model on a shared machine: they measure our overhead on real
traffic, not GPU speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import report
from bench.common import MODEL, PROMPT, BenchError, Figure, progress, summary_ms
from bench.deployed import REALISTIC_RTT_S, DeployedProcess
from ollama_worker.chat import chat_request
from ollama_worker.schemas import ChatJob
from scripts.real_ollama import RealOllama, locate, wanted_version
from standins.runpod import FakeRunPod
from tests.harness import ROOT
from tests.real_ollama import RealOllamaServer, real_boot_env, real_ollama_with_model

LABEL = "Real Ollama (CPU, Gemma 3 270M)"
# Greedy and seeded: both paths get the same tokens, so they time the same work.
GREEDY = {"temperature": 0, "seed": 42}
BOOT_TIMEOUT_S = 120.0
ONE_SLOT = {"OLLAMA_NUM_PARALLEL": "1"}
COLD_START_TOKENS = 4


@dataclass(frozen=True)
class Sizes:
    """How much of the real measurements to run."""

    streams: int  # per path, after one warm-up stream each
    tokens: int  # num_predict of each stream (NOTES: at most 32 on the shared CPU)
    boots: int  # cold starts per variant


FULL = Sizes(streams=7, tokens=32, boots=3)
QUICK = Sizes(streams=1, tokens=4, boots=1)


def unavailable() -> str | None:
    """Why the real rows cannot run here (one line saying how to enable them), or None."""
    if locate() is None:
        return (
            f"no real Ollama {wanted_version()} provided: run `make ollama` (needs Go and gcc) "
            "or set OLLAMA_BIN"
        )
    return None


class Relay:
    """A loopback TCP relay in front of Ollama that stamps (time.monotonic()) each NDJSON line
    of its answers as it leaves Ollama: a token line (`"done":false`, text in it) or the end
    (`"done":true`). Bytes pass unchanged; stamping costs the relay microseconds per read."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.host_port = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host_port}"
        self._lock = threading.Lock()
        self._events: list[tuple[float, str]] = []
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, name="relay", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), 10)
            except OSError:
                return
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink, stamp in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(
                    target=self._pump, args=(source, sink, stamp), daemon=True, name="relay-pump"
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, stamp: bool) -> None:
        pending = b""
        try:
            while data := source.recv(65536):
                now = time.monotonic()
                if stamp:  # before forwarding, so a reader that got the bytes finds the stamp
                    *lines, pending = (pending + data).split(b"\n")
                    for line in lines:
                        if b'"done":true' in line:
                            self._record(now, "end")
                        elif b'"done":false' in line and b'"content":""' not in line:
                            self._record(now, "token")
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def _record(self, stamp: float, kind: str) -> None:
        with self._lock:
            self._events.append((stamp, kind))

    def take(self) -> tuple[float, float]:
        """The first token's and the end's stamps of the one stream since the last take()."""
        with self._lock:
            events, self._events = self._events, []
        tokens = [t for t, kind in events if kind == "token"]
        ends = [t for t, kind in events if kind == "end"]
        if not tokens or len(ends) != 1:
            raise BenchError(f"relay saw {len(tokens)} token lines and {len(ends)} ends")
        return tokens[0], ends[0]

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()


def job_input(tokens: int) -> dict[str, Any]:
    """The streamed chat both paths answer."""
    return {"prompt": PROMPT, "max_tokens": tokens, "stream": True, **GREEDY}


def ollama_body(job: dict[str, Any]) -> dict[str, Any]:
    """The /api/chat body the worker sends Ollama for `job` (built by the worker's own code)."""
    return {**chat_request(ChatJob.model_validate(job), MODEL), "stream": job["stream"]}


def _direct(client: httpx.Client, relay: Relay, body: dict[str, Any]) -> dict[str, Any]:
    """One streamed /api/chat straight to Ollama (through the relay)."""
    text, first, final, end = "", None, None, 0.0
    sent = time.monotonic()
    with client.stream("POST", "/api/chat", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            now = time.monotonic()
            chunk = json.loads(line)
            if chunk.get("done"):
                final, end = chunk, now
            elif content := chunk.get("message", {}).get("content"):
                first = first or now
                text += content
    if final is None or first is None:
        raise BenchError(f"the direct stream ended without tokens or its done record: {text!r}")
    produced_first, produced_end = relay.take()
    eval_count, eval_ns = final.get("eval_count", 0), final.get("eval_duration", 0)
    before_first_ns = final.get("load_duration", 0) + final.get("prompt_eval_duration", 0)
    return _row(
        text=text,
        ttft_s=first - sent,
        ollama_before_first_ms=before_first_ns / 1e6,
        first=first,
        end=end,
        tokens=eval_count,
        ollama_tokens_per_s=eval_count / (eval_ns / 1e9) if eval_ns else 0.0,
        produced=(produced_first, produced_end),
    )


def _through_worker(worker: DeployedProcess, relay: Relay, job: dict[str, Any]) -> dict[str, Any]:
    """The same chat as a job of the deployed worker: times at the stand-in job API."""
    record = worker.run(job, timeout=120)
    items = record.stream_items
    final = items[-1] if items else {}
    if record.taken_at is None or not items or final.get("done") is not True:
        raise BenchError(f"the worker's stream ended without its summary: {items!r}")
    produced_first, produced_end = relay.take()
    return _row(
        text="".join(item.get("message", {}).get("content", "") for item in items),
        ttft_s=record.stream[0][0] - record.taken_at,
        ollama_before_first_ms=final["timings"]["load_ms"] + final["timings"]["prompt_eval_ms"],
        first=record.stream[0][0],
        end=record.stream[-1][0],
        tokens=final["usage"]["completion_tokens"],
        ollama_tokens_per_s=final["timings"]["tokens_per_second"],
        produced=(produced_first, produced_end),
        posts=len(record.stream),
    )


def _row(
    *,
    text: str,
    ttft_s: float,
    ollama_before_first_ms: float,
    first: float,
    end: float,
    tokens: int,
    ollama_tokens_per_s: float,
    produced: tuple[float, float],
    posts: int | None = None,
) -> dict[str, Any]:
    """One stream's figures; rates count the tokens after the first over first-to-end.

    On a shared CPU Ollama's own speed moves from stream to stream, so each stream is also
    held to Ollama's work in it: the first-token time beyond Ollama's load and prompt
    evaluation, and the rate at the receiver as a share of Ollama's eval rate."""
    produced_first, produced_end = produced
    rate = (tokens - 1) / (end - first) if end > first else 0.0
    share = rate / ollama_tokens_per_s if ollama_tokens_per_s else 0.0
    row = {
        "text": text,
        "ttft_ms": round(ttft_s * 1000, 2),
        "ttft_beyond_ollama_ms": round(ttft_s * 1000 - ollama_before_first_ms, 2),
        "tokens": tokens,
        "tokens_per_s": round(rate, 2),
        "ollama_tokens_per_s": round(ollama_tokens_per_s, 2),
        "share_of_ollama_rate": round(share, 4),
        "generation_s": round(produced_end - produced_first, 4),
        "ratio": round((end - produced_first) / (produced_end - produced_first), 4),
        "last_after_end_ms": round((end - produced_end) * 1000, 2),
    }
    if posts is not None:
        row["posts"] = posts
    return row


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "ttft": summary_ms([row["ttft_ms"] / 1000 for row in rows]),
        **{
            f"median_{key}": round(statistics.median(row[key] for row in rows), 4)
            for key in (
                "tokens_per_s",
                "ollama_tokens_per_s",
                "share_of_ollama_rate",
                "ttft_beyond_ollama_ms",
                "ratio",
                "tokens",
            )
            + (("posts",) if "posts" in rows[0] else ())
        },
        "runs": rows,
    }


def _streams(server: RealOllamaServer, sizes: Sizes) -> dict[str, Any]:
    """Streams through both paths, interleaved, after one warm-up stream each."""
    job = job_input(sizes.tokens)
    body = ollama_body(job)
    relay = Relay(server.port)
    rows: dict[str, list[dict[str, Any]]] = {"direct": [], "worker": []}
    env = {
        "OLLAMA_HOST": relay.host_port,
        "MAX_CONCURRENCY": "1",
        "OLLAMA_RETRY_DEADLINE_S": "30",
    }
    try:
        with (
            FakeRunPod() as fake,
            httpx.Client(base_url=relay.url, timeout=120) as client,
        ):
            fake.configure(rtt_s=REALISTIC_RTT_S)
            worker = DeployedProcess(fake, ROOT / "rp_handler.py", env, "real")
            failed = True
            try:
                worker.launch()
                worker.wait_ready()
                for index in range(sizes.streams + 1):
                    direct = _direct(client, relay, body)
                    through = _through_worker(worker, relay, job)
                    if index:  # the first of each warms Ollama's prompt cache and the pools
                        rows["direct"].append(direct)
                        rows["worker"].append(through)
                failed = False
            finally:
                if failed:
                    progress(f"real-Ollama worker log kept: {worker.log_path}")
                worker.stop(keep_log=failed)
    finally:
        relay.close()
    texts = {row["text"] for path in rows.values() for row in path}
    return {
        "job": job,
        "rtt_s": REALISTIC_RTT_S,
        "same_text_both_paths": len(texts) == 1,
        "direct": _summary(rows["direct"]),
        "worker": _summary(rows["worker"]),
    }


BOOT_MARKS = {
    "ollama_answered_s": re.compile(r"boot: Ollama \S+ answered after ([\d.]+) s"),
    "model_loaded_s": re.compile(r"boot: \S+ loaded in ([\d.]+) s"),
}


def _boot_ours(fake: FakeRunPod, server: RealOllamaServer, job: dict[str, Any]) -> dict[str, float]:
    """`ollama_boot.sh`, the real `ollama` first on PATH: launch to the first job done (the
    job was queued before the launch, as on a worker scaled up for it)."""
    env = {**real_boot_env(server), **ONE_SLOT, "MAX_CONCURRENCY": "1"}
    env["OLLAMA_BOOT_TIMEOUT_S"] = str(int(BOOT_TIMEOUT_S))
    worker = DeployedProcess(
        fake, ROOT / "rp_handler.py", env, "real-boot", boot=True, startup_timeout_s=BOOT_TIMEOUT_S
    )
    failed = True
    try:
        job_id = worker.submit(job)
        worker.launch()
        record = worker.wait_done(job_id, BOOT_TIMEOUT_S)
        assert record.taken_at is not None
        assert record.done_at is not None
        marks = {
            "job_taken_s": record.taken_at - worker.started_at,
            "first_job_done_s": record.done_at - worker.started_at,
        }
        log = worker.log()
        for key, pattern in BOOT_MARKS.items():
            if found := pattern.search(log):
                marks[key] = float(found.group(1))
        failed = False
    finally:
        if failed:
            progress(f"real boot log kept: {worker.log_path}")
        worker.stop(keep_log=failed)
    return {key: round(value, 3) for key, value in marks.items()}


def _boot_reference(real: RealOllama, server: RealOllamaServer, job: dict[str, Any]) -> float:
    """The floor: a bare `ollama serve` on the same store, polled until it answers (every
    50 ms), then the same chat (not streamed) straight to it: seconds to its answer."""
    home = {"HOME": str(server.home)}
    bare = RealOllamaServer(real, server.models_dir, {**ONE_SLOT, **home})
    started = time.monotonic()
    try:
        bare.start(timeout_s=BOOT_TIMEOUT_S)
        answer = bare.api("POST", "/api/chat", {**ollama_body(job), "stream": False})
        if not answer.get("message", {}).get("content"):
            raise BenchError(f"the bare Ollama answered no text: {answer!r}")
        return round(time.monotonic() - started, 3)
    finally:
        bare.stop()
        shutil.rmtree(bare.home, ignore_errors=True)


def _cold_starts(real: RealOllama, server: RealOllamaServer, sizes: Sizes) -> dict[str, Any]:
    # A short reply, so that the start and the model load make the figure, not the CPU's
    # generation speed of the moment.
    job = {**job_input(COLD_START_TOKENS), "stream": False}
    ours: list[dict[str, float]] = []
    reference: list[float] = []
    with FakeRunPod() as fake:
        fake.configure(rtt_s=REALISTIC_RTT_S)
        for index in range(sizes.boots):
            ours.append(_boot_ours(fake, server, job))
            reference.append(_boot_reference(real, server, job))
            progress(
                f"real cold start {index + 1}/{sizes.boots}: ours "
                f"{ours[-1]['first_job_done_s']} s, bare ollama serve {reference[-1]} s"
            )
    return {
        "job": job,
        "rtt_s": REALISTIC_RTT_S,
        "median_first_job_done_s": round(statistics.median(r["first_job_done_s"] for r in ours), 3),
        "median_reference_s": round(statistics.median(reference), 3),
        "runs": ours,
        "reference_runs": reference,
    }


@contextlib.contextmanager
def _server(real: RealOllama) -> Iterator[RealOllamaServer]:
    """A real server with `voice-assistant` loaded; its store and HOME removed afterwards."""
    models = Path(tempfile.mkdtemp(prefix="bench-real-models-"))
    try:
        with real_ollama_with_model(models, env=ONE_SLOT, real=real) as server:
            try:
                yield server
            finally:
                shutil.rmtree(server.home, ignore_errors=True)
    finally:
        shutil.rmtree(models, ignore_errors=True)


def measure(sizes: Sizes) -> tuple[dict[str, Any], list[Figure]]:
    """The real rows: streams through both paths, then cold starts (the stream server stopped
    first, so a second copy of the model never shares the two cores)."""
    real = locate()
    if real is None:
        raise BenchError(unavailable() or "no real Ollama")
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    with _server(real) as server:
        progress(f"real Ollama {real.version}: {sizes.streams} streams of {sizes.tokens} tokens")
        streams = _streams(server, sizes)
        server.stop()
        progress(f"real Ollama {real.version}: {sizes.boots} cold starts per variant")
        cold = _cold_starts(real, server, sizes)
    details = {
        "ollama_version": real.version,
        "model": "Gemma 3 270M Q4_K_M (voice-assistant from the Modelfile)",
        "cpu_only": True,
        "date": report.now(),
        "seconds": round(time.monotonic() - started, 1),
        "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
        "streams": streams,
        "cold_start": cold,
    }
    return details, figures(details)


def figures(details: dict[str, Any]) -> list[Figure]:
    """The published real rows (context, no targets: a shared CPU is no place for them)."""
    streams, cold = details["streams"], details["cold_start"]
    direct, worker = streams["direct"], streams["worker"]
    rtt = f"{streams['rtt_s'] * 1000:g} ms RTT"
    tokens = streams["job"]["max_tokens"]

    rows = [
        ("ttft_p50_ms", f"time to first token at RunPod, deployed worker, {rtt}",
         worker["ttft"]["median_ms"], "ms"),
        ("direct_ttft_p50_ms", "reference: time to first token straight from Ollama",
         direct["ttft"]["median_ms"], "ms"),
        ("ttft_beyond_ollama_ms", "time to first token beyond Ollama's load and prompt "
         "evaluation, deployed worker", worker["median_ttft_beyond_ollama_ms"], "ms"),
        ("direct_ttft_beyond_ollama_ms", "reference: the same, straight from Ollama",
         direct["median_ttft_beyond_ollama_ms"], "ms"),
        ("tokens_per_s", f"tokens/s reaching RunPod, deployed worker, {rtt}",
         worker["median_tokens_per_s"], "tokens/s"),
        ("direct_tokens_per_s", "reference: tokens/s reaching a client straight from Ollama",
         direct["median_tokens_per_s"], "tokens/s"),
        ("share_of_ollama_rate", "tokens/s reaching RunPod over Ollama's eval rate in the "
         "same stream, deployed worker", worker["median_share_of_ollama_rate"], "x"),
        ("direct_share_of_ollama_rate", "reference: the same, straight from Ollama",
         direct["median_share_of_ollama_rate"], "x"),
        ("ollama_tokens_per_s", "Ollama's own eval rate during the worker's streams",
         worker["median_ollama_tokens_per_s"], "tokens/s"),
        ("stream_ratio", f"delivery ratio of a real {tokens}-token stream, {rtt}",
         worker["median_ratio"], "x"),
        ("direct_stream_ratio", "reference: delivery ratio straight from Ollama",
         direct["median_ratio"], "x"),
        ("cold_start_s", "cold start, ollama_boot.sh to the first job done (real load)",
         cold["median_first_job_done_s"], "s"),
        ("reference_cold_start_s", "reference: bare ollama serve to the same chat answered",
         cold["median_reference_s"], "s"),
    ]  # fmt: skip
    return [Figure(f"real.{key}", f"{LABEL}: {label}", *rest) for key, label, *rest in rows]
