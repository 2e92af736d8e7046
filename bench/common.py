"""Shared pieces of the bench: the stand-in as a process, workers, figures, progress, stats."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from ollama_worker.config import DEFAULTS
from standins.ollama import RemoteOllama
from tests.harness import ROOT, free_port

# The chat every measurement sends: what a voice turn looks like, small on the wire.
PROMPT = "Hi, what can you do?"
MODEL = DEFAULTS.default_model
# A short reply of 7 tokens: ~50 ms to the first, 20 ms for each of the 6 others.
SHORT_REPLY = "Hello! How can I help you today?"

_STARTED = time.monotonic()


def progress(message: str) -> None:
    """One line of progress on stderr, stamped with the time since the bench started."""
    print(f"[bench {time.monotonic() - _STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """A measurement could not be made (not a missed target)."""


@dataclass(frozen=True)
class Figure:
    """One published number, with the target it is held to (None: shown for context)."""

    key: str
    label: str
    value: float
    unit: str
    target: str = ""
    passed: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        """The figure as results.json stores it."""
        return asdict(self)


def summary_ms(samples_s: list[float]) -> dict[str, float]:
    """Median, p95, min, max and count of durations in seconds, as milliseconds."""
    if not samples_s:
        raise BenchError("no samples")
    ordered = sorted(samples_s)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 3),
        "p95_ms": round(p95 * 1000, 3),
        "min_ms": round(ordered[0] * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
        "n": len(ordered),
    }


class StandIn(RemoteOllama):
    """`python -m standins.ollama` in its own process, so its work never shares our GIL.

    Starting returns at once; call `wait_ready()` before the first request.
    """

    def __init__(self, **config: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.host_port = f"127.0.0.1:{self.port}"
        self._log = tempfile.NamedTemporaryFile(prefix="bench-fake-", suffix=".log", delete=False)  # noqa: SIM115
        flags = [f"--{name.replace('_', '-')}={value}" for name, value in config.items()]
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "standins.ollama",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *flags,
            ],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        super().__init__(self.url, timeout=30)

    def wait_ready(self) -> StandIn:
        """Return once it answers (its Python start takes ~0.5 s)."""
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise BenchError(f"the stand-in exited {self.process.returncode}: {self.log()}")
            try:
                if self.http.get("/").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise BenchError("the stand-in did not listen within 30 s")
            time.sleep(0.05)

    def log(self) -> str:
        """What it printed."""
        return Path(self._log.name).read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after 5 s)."""
        self.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        os.unlink(self._log.name)


def worker_env(stand_in: StandIn) -> dict[str, str]:
    """The environment of our worker (and the reference) for the measurements."""
    return {
        "OLLAMA_HOST": stand_in.host_port,
        "OLLAMA_NUM_PARALLEL": "8",
        "MAX_CONCURRENCY": "8",
        "OLLAMA_RETRY_DEADLINE_S": "10",
    }


def completed_output(answer: dict[str, Any]) -> list[Any]:
    """The output of a /runsync answer; raises BenchError unless the job completed cleanly."""
    output = answer.get("output")
    if answer.get("status") != "COMPLETED" or not output:
        raise BenchError(f"job did not complete: {str(answer)[:500]}")
    items = output if isinstance(output, list) else [output]
    for item in items:
        if isinstance(item, dict) and item.get("error"):
            raise BenchError(f"job failed: {item['error']}")
    return items


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(child) for child in children.read_text().split())
            except OSError:
                continue
    return pids


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return 0  # a child that just exited
    return 0


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process and its children, in MiB."""
    return round(sum(_status_kb(p, field) for p in process_tree(pid)) / 1024, 2)
