"""Cold start of the deployed worker: `ollama_boot.sh` (no --rp_serve_api) under RunPod's
production job loop, from launch to the first job completed at the stand-in job API (the job
was queued before the launch, as on a worker scaled up for it).

Three ways to start, each timed the same way:

- ours: `ollama_boot.sh` as the container runs it (the SDK's checks skipped, as they must be
  without a GPU);
- ours with checks: the same with a 0.4 s fitness check registered
  (`tests/slow_checks_handler.py` linked as the WORKER_DIR's rp_handler.py), standing in for
  the GPU checks the SDK runs on a real worker (0.30-0.39 s on an H200): the checks run while
  Ollama starts, so the figure should stay that of `ours`, where a serial start would add
  0.4 s;
- the reference: the usual start script of a minimal worker: start `ollama serve`, wait until
  it answers (polled every 10 ms), then start `reference_stream_handler.py`, whose first job
  loads the model.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.cold_start import FLOOR_S, LOAD_DELAY_S, SLACK_S, START_DELAY_S, _boot_env, _listening
from bench.cold_start import _stop as stop_process
from bench.common import MODEL, PROMPT, BenchError, Figure, progress
from standins.ollama import FakeOllama
from standins.runpod import FakeRunPod, JobRecord
from tests.harness import ROOT, SDK_SAFETY, free_port

HERE = Path(__file__).resolve().parent
TIMEOUT_S = 60.0
CHECK_S = 0.4
# Checks that overlap Ollama's start add less than half of their own time.
CHECKS_SLACK_S = CHECK_S / 2
VARIANTS = ("ours", "ours_with_checks", "reference")


def _env(fake: FakeRunPod, worker_id: str, models: Path, ollama_port: int) -> dict[str, str]:
    env = {
        **_boot_env(models, ollama_port),  # drops every inherited RUNPOD_* variable
        **fake.worker_env(worker_id),
        **SDK_SAFETY,
    }
    env.pop("RUNPOD_AI_API_KEY", None)
    return env


def _launch(
    variant: str, tmp: Path, env: dict[str, str], log: Any, ollama_port: int
) -> list[subprocess.Popen[bytes]]:
    """Start one variant; its processes (the reference's handler joins once Ollama answers)."""

    def popen(command: list[str], extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            command,
            cwd=tmp,
            env={**env, **(extra or {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    if variant == "ours":
        return [popen([str(ROOT / "ollama_boot.sh")])]
    if variant == "ours_with_checks":
        worker_dir = tmp / "worker"
        worker_dir.mkdir()
        (worker_dir / "rp_handler.py").symlink_to(ROOT / "tests" / "slow_checks_handler.py")
        # ollama_boot.sh runs $WORKER_DIR/rp_handler.py; the boot helper comes from ROOT.
        extra = {
            "WORKER_DIR": str(worker_dir),
            "PYTHONPATH": str(ROOT),
            "SLOW_CHECK_S": str(CHECK_S),
        }
        return [popen([str(ROOT / "ollama_boot.sh")], extra)]
    ollama = popen(["ollama", "serve"])
    deadline = time.monotonic() + TIMEOUT_S
    while not _listening(ollama_port):
        if ollama.poll() is not None or time.monotonic() > deadline:
            stop_process(ollama)
            raise BenchError(f"the stand-in ollama did not listen (exit {ollama.poll()})")
        time.sleep(0.01)
    return [ollama, popen([sys.executable, str(HERE / "reference_stream_handler.py")])]


def boot_once(fake: FakeRunPod, variant: str) -> dict[str, float]:
    """One cold start of `variant`: seconds from launch to Ollama listening, the first job-take
    poll, the job taken, and the job done."""
    worker_id = f"{variant}-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="bench-deployed-boot-") as tmp_name:
        tmp = Path(tmp_name)
        models = tmp / "models"
        seed = FakeOllama(state_file=str(models / "fake-ollama-models.json"), models=[])
        seed.configure(models=[f"{MODEL}:latest"])  # writes the model store
        ollama_port = free_port()
        env = _env(fake, worker_id, models, ollama_port)
        job_id = fake.submit({"prompt": PROMPT}, worker_id=worker_id)
        log_path = tmp / "boot.log"
        marks: dict[str, float] = {}
        processes: list[subprocess.Popen[bytes]] = []
        with log_path.open("wb") as log:
            started = time.monotonic()

            def watch() -> None:
                while time.monotonic() - started < TIMEOUT_S and "ollama_listening_s" not in marks:
                    if _listening(ollama_port):
                        marks["ollama_listening_s"] = time.monotonic() - started
                    time.sleep(0.01)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            try:
                processes = _launch(variant, tmp, env, log, ollama_port)
                record = _wait_done(fake, job_id, processes)
            except (BenchError, TimeoutError) as exc:
                text = log_path.read_text(errors="replace")[-3000:]
                raise BenchError(f"{variant} cold start: {exc}:\n{text}") from None
            finally:
                for process in reversed(processes):
                    stop_process(process)
                watcher.join(1)
        if variant == "ours_with_checks" and "Running 1 fitness check" not in log_path.read_text(
            errors="replace"
        ):
            raise BenchError("the 0.4 s fitness check did not run")
        assert record.taken_at is not None
        assert record.done_at is not None
        polls = [take.at for take in fake.takes(worker_id)]
        marks["first_poll_s"] = min(polls) - started
        marks["job_taken_s"] = record.taken_at - started
        marks["first_job_done_s"] = record.done_at - started
        return {key: round(value, 3) for key, value in marks.items()}


def _wait_done(
    fake: FakeRunPod, job_id: str, processes: list[subprocess.Popen[bytes]]
) -> JobRecord:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            record = fake.wait_done(job_id, 0.1)
            break
        except TimeoutError:
            pass
        for process in processes:
            if process.poll() is not None:
                raise BenchError(f"{process.args} exited {process.returncode}")
        if time.monotonic() > deadline:
            raise BenchError(f"no job done within {TIMEOUT_S} s")
    if record.status != "COMPLETED":
        raise BenchError(f"the first job {record.status}: {record.result}")
    return record


def measure(
    *, boots: int, import_s: float, parallel: bool = False
) -> tuple[dict[str, Any], list[Figure]]:
    """Median of `boots` cold starts per variant (interleaved; all at once when `parallel`,
    for the quick run, whose numbers are not read)."""
    runs: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    with FakeRunPod() as fake:
        for index in range(boots):
            if parallel:
                with ThreadPoolExecutor(len(VARIANTS)) as pool:
                    booted = list(pool.map(lambda v: boot_once(fake, v), VARIANTS))
                for variant, marks in zip(VARIANTS, booted, strict=True):
                    runs[variant].append(marks)
            else:
                for variant in VARIANTS:
                    runs[variant].append(boot_once(fake, variant))
            progress(
                f"deployed cold start {index + 1}/{boots}: "
                + ", ".join(f"{v} {runs[v][-1]['first_job_done_s']} s" for v in VARIANTS)
            )
    first = {v: statistics.median(r["first_job_done_s"] for r in runs[v]) for v in VARIANTS}
    target_s = max(FLOOR_S, import_s) + SLACK_S
    added = first["ours_with_checks"] - first["ours"]
    details = {
        "stand_in": {"start_delay_s": START_DELAY_S, "load_delay_s": LOAD_DELAY_S},
        "check_s": CHECK_S,
        "import_s": import_s,
        "median_first_job_done_s": {v: round(first[v], 3) for v in VARIANTS},
        "runs": runs,
    }
    figures = [
        Figure(
            "deployed_cold_start.first_job_done_s",
            "Cold start: ollama_boot.sh to the first job done",
            round(first["ours"], 3),
            "s",
            f"<= {target_s:.2f} s (max({FLOOR_S:g} s, import) + {SLACK_S:g} s)",
            first["ours"] <= target_s,
        ),
        Figure(
            "deployed_cold_start.with_checks_first_job_done_s",
            f"Cold start with a {CHECK_S:g} s fitness check",
            round(first["ours_with_checks"], 3),
            "s",
        ),
        Figure(
            "deployed_cold_start.checks_added_s",
            f"Time the {CHECK_S:g} s fitness check adds to the cold start",
            round(added, 3),
            "s",
            f"< {CHECKS_SLACK_S:g} s (it overlaps Ollama's start)",
            added < CHECKS_SLACK_S,
        ),
        Figure(
            "deployed_cold_start.reference_first_job_done_s",
            "Reference (Ollama, wait, then the handler): cold start",
            round(first["reference"], 3),
            "s",
        ),
    ]
    return details, figures
