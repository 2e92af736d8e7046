"""Cold start: from launching ollama_boot.sh (with the stand-in `ollama`) to the first answered
job, against the handler's own import time, because that is the wait of a scaled-up worker."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import MODEL, PROMPT, BenchError, Figure, completed_output, process_tree, progress
from standins.ollama import FakeOllama
from tests.harness import ROOT, free_port

START_DELAY_S = 1.5
LOAD_DELAY_S = 1.5
FLOOR_S = 3.0
SLACK_S = 0.5
TIMEOUT_S = 60.0


def import_time_s() -> float:
    """Wall time of `python -c "import runpod; import rp_handler"` (a fresh interpreter)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import runpod; import rp_handler"], cwd=ROOT, check=True)
    return time.perf_counter() - started


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _boot_env(models_dir: Path, ollama_port: int) -> dict[str, str]:
    """A clean environment: the stand-in first on PATH, its delays, a seeded model store."""
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FAKE_OLLAMA_", "OLLAMA_", "VAPI_", "WORKER_", "RUNPOD_", "HF_"))
        and k not in {"DEFAULT_MODEL", "PULL_MODELS", "MAX_CONCURRENCY", "MODELFILE"}
        and k != "MODELFILE_TUNING"
    }
    venv_bin = str(Path(sys.executable).parent)
    return {
        **keep,
        "PATH": f"{ROOT / 'tests' / 'bin'}:{venv_bin}:{keep.get('PATH', '/usr/bin:/bin')}",
        "PYTHON": sys.executable,
        "PYTHONUNBUFFERED": "1",
        "OLLAMA_HOST": f"127.0.0.1:{ollama_port}",
        "OLLAMA_MODELS": str(models_dir),
        "OLLAMA_BOOT_TIMEOUT_S": str(TIMEOUT_S),
        "FAKE_OLLAMA_START_DELAY": str(START_DELAY_S),
        "FAKE_OLLAMA_LOAD_DELAY": str(LOAD_DELAY_S),
    }


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the boot script (it stops Ollama and the handler); kill what is left by pid."""
    tree = process_tree(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pid in tree[1:]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def boot_once() -> dict[str, float]:
    """One cold start: seconds from launch to Ollama listening, the API up, the first answer."""
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp:
        models = Path(tmp) / "models"
        seed = FakeOllama(state_file=str(models / "fake-ollama-models.json"), models=[])
        seed.configure(models=[f"{MODEL}:latest"])  # writes the model store
        ollama_port = free_port()
        return time_boot(_boot_env(models, ollama_port), Path(tmp), ollama_port)


def time_boot(
    env: dict[str, str],
    tmp: Path,
    ollama_port: int,
    job_input: dict[str, Any] | None = None,
    timeout_s: float = TIMEOUT_S,
) -> dict[str, float]:
    """Launch ollama_boot.sh under the local API with `env` (whose OLLAMA_HOST is on
    `ollama_port`) and post a job every 20 ms until one is answered; seconds from the launch
    to Ollama listening, the API up and that answer. Stops everything it started."""
    api_port = free_port()
    log_path = tmp / f"boot-{api_port}.log"
    marks: dict[str, float] = {}
    with log_path.open("wb") as log:
        started = time.monotonic()
        process = subprocess.Popen(
            [
                str(ROOT / "ollama_boot.sh"),
                "--rp_serve_api",
                "--rp_api_host",
                "127.0.0.1",
                "--rp_api_port",
                str(api_port),
            ],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def watch(name: str, port: int) -> None:
        while name not in marks and time.monotonic() - started < timeout_s:
            if _listening(port):
                marks[name] = time.monotonic() - started
            time.sleep(0.01)

    watchers = [
        threading.Thread(target=watch, args=args, daemon=True)
        for args in (("ollama_listening_s", ollama_port), ("api_listening_s", api_port))
    ]
    for watcher in watchers:
        watcher.start()
    try:
        while True:
            if process.poll() is not None:
                raise BenchError(f"ollama_boot.sh exited {process.returncode}")
            if time.monotonic() - started > timeout_s:
                raise BenchError(f"no answer within {timeout_s} s")
            try:
                answer = httpx.post(
                    f"http://127.0.0.1:{api_port}/runsync",
                    json={"input": job_input or {"prompt": PROMPT}},
                    timeout=timeout_s,
                ).json()
            except httpx.TransportError:
                time.sleep(0.02)
                continue
            marks["first_answer_s"] = time.monotonic() - started
            completed_output(answer)
            break
    except BenchError as exc:
        raise BenchError(f"{exc}:\n{log_path.read_text(errors='replace')[-3000:]}") from None
    finally:
        _stop(process)
        for watcher in watchers:
            watcher.join(1)
    return {key: round(value, 3) for key, value in marks.items()}


def measure(*, boots: int, imports: int) -> tuple[dict[str, Any], list[Figure]]:
    """Median import time and median cold start over `boots` launches."""
    import_s = statistics.median(import_time_s() for _ in range(imports))
    progress(f"cold start: handler import {import_s:.2f} s")
    runs = []
    for index in range(boots):
        runs.append(boot_once())
        progress(f"cold start {index + 1}/{boots}: {runs[-1]}")
    first_s = statistics.median(run["first_answer_s"] for run in runs)
    target_s = max(FLOOR_S, import_s) + SLACK_S
    details = {
        "stand_in": {"start_delay_s": START_DELAY_S, "load_delay_s": LOAD_DELAY_S},
        "import_s": round(import_s, 3),
        "imports": imports,
        "runs": runs,
    }
    figures = [
        Figure(
            "cold_start.import_s",
            "Handler import (runpod + rp_handler)",
            round(import_s, 3),
            "s",
        ),
        Figure(
            "cold_start.first_answer_s",
            "Boot script start to first answered job",
            round(first_s, 3),
            "s",
            f"<= {target_s:.2f} s (max({FLOOR_S:g} s, import) + {SLACK_S:g} s)",
            first_s <= target_s,
        ),
    ]
    return details, figures
