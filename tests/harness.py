"""Run the real worker as a subprocess: under RunPod's local API, as a user would with curl
(WorkerProcess), or under the SDK's production job loop against the stand-in job API
(DeployedWorker), as RunPod runs it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from ollama_worker.config import DEFAULTS
from standins.runpod import FakeRunPod, JobRecord, clean_environ

ROOT = Path(__file__).resolve().parent.parent
FAKE_BIN = ROOT / "tests" / "bin"
# Variables a deployed worker always gets, whatever the caller's env: nothing may dial out.
SDK_SAFETY = {"RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true", "RUNPOD_SKIP_GPU_CHECK": "true"}
# Inherited variables that would steer the boot script or the stand-in ollama it starts.
BOOT_DROPPED_PREFIXES = ("FAKE_OLLAMA_", "OLLAMA_", "WORKER_")


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_group(process: subprocess.Popen[bytes] | None, grace_s: float = 10.0) -> None:
    """SIGTERM a process's group, SIGKILL it after `grace_s`, and reap the process."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class WorkerProcess:
    """`python rp_handler.py --rp_serve_api` on a free port, with its log kept in a file."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        script: str = "rp_handler.py",
        startup_timeout_s: float = 30.0,
    ) -> None:
        self.script = script
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self.startup_timeout_s = startup_timeout_s
        self._log = tempfile.NamedTemporaryFile(prefix="worker-", suffix=".log", delete=False)  # noqa: SIM115
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(120.0))

    def start(self) -> WorkerProcess:
        """Start the worker and return once its local API answers."""
        self.process = subprocess.Popen(
            [
                sys.executable,
                self.script,
                "--rp_serve_api",
                "--rp_api_host",
                "127.0.0.1",
                "--rp_api_port",
                str(self.port),
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.script} exited {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/docs", timeout=0.5).status_code < 500:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.script} silent for {self.startup_timeout_s} s:\n{self.log()}")

    def runsync(self, job_input: Any) -> dict[str, Any]:
        """POST one job to `/runsync` and return the JSON answer."""
        response = self.http.post("/runsync", json={"input": job_input})
        response.raise_for_status()
        return response.json()

    def output(self, job_input: Any) -> list[Any]:
        """The items a completed job yielded."""
        answer = self.runsync(job_input)
        assert answer["status"] == "COMPLETED", answer
        return answer["output"]

    @property
    def log_path(self) -> Path:
        """The file the worker's output goes to."""
        return Path(self._log.name)

    def log(self) -> str:
        """Everything the worker has printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, *, keep_log: bool = False) -> None:
        """Stop the worker and its process group; remove its log unless asked to keep it."""
        self.http.close()
        stop_group(self.process)
        self._log.close()
        if not keep_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def boot_environment(tmp: Path, ollama_port: int) -> dict[str, str]:
    """What ollama_boot.sh needs to start the stand-in `ollama serve` (tests/bin first on PATH)
    on `ollama_port`, with a model store under `tmp` holding voice-assistant."""
    models = tmp / "models"
    models.mkdir(exist_ok=True)
    return {
        "PATH": f"{FAKE_BIN}:{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "PYTHON": sys.executable,
        "OLLAMA_HOST": f"127.0.0.1:{ollama_port}",
        "OLLAMA_MODELS": str(models),
        "FAKE_OLLAMA_MODELS": f"{DEFAULTS.default_model}:latest",
        "OLLAMA_BOOT_TIMEOUT_S": "30",
    }


def tagged_processes(variable: str, tag: str) -> dict[int, str]:
    """`{pid: command line}` of live processes whose environment holds `variable=tag`.

    Children inherit the environment whatever session, group or parent they end up in, so
    this finds what a worker or a boot run started, even what outlived its parent, and only that.
    """
    marker = f"{variable}={tag}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if marker in environ and state not in {"Z", "X"}:
            found[int(entry.name)] = cmdline
    return found


def tagged_pids(tag: str) -> list[int]:
    """Live processes started by the DeployedWorker whose DEPLOYED_TEST_TAG is `tag`."""
    return list(tagged_processes("DEPLOYED_TEST_TAG", tag))


class Supervised:
    """A worker process started with a log file and a tag in its environment, so that what it
    started can be found and stopped (DeployedWorker, tests/http_worker.py's HttpWorker)."""

    script: str
    tag: str
    process: subprocess.Popen[bytes] | None
    _log: Any
    _tmp: Path
    env: dict[str, str]

    def spawn(self, command: list[str], *, cwd: Path) -> None:
        """Start `command` in a session of its own, its output into the log."""
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        """Whether the main process still runs."""
        return self.process is not None and self.process.poll() is None

    def returncode(self) -> int | None:
        """The main process's exit status, None while it runs."""
        return None if self.process is None else self.process.poll()

    def signal(self, sig: int) -> None:
        """Send `sig` to the main process only (rp_handler.py, or the boot script)."""
        assert self.process is not None, "launch() first"
        self.process.send_signal(sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        """The main process's exit status; TimeoutError with the log if it outlives `timeout`."""
        assert self.process is not None, "launch() first"
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"{self.script} still running after {timeout} s:\n{self.log()}"
            ) from None

    def leftovers(self) -> list[int]:
        """Pids of processes this worker started that are still alive (itself included)."""
        return tagged_pids(self.tag)

    @property
    def log_path(self) -> Path:
        """The file the worker's output goes to."""
        return Path(self._log.name)

    def log(self) -> str:
        """Everything the worker has printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, *, keep_log: bool = False) -> None:
        """SIGTERM, then SIGKILL after 10 s, the worker and all it started; drop the log."""
        stop_group(self.process)
        for pid in self.leftovers():  # what left the group (setsid) or outlived it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._log.close()
        if not keep_log:
            self.log_path.unlink(missing_ok=True)
        shutil.rmtree(self._tmp, ignore_errors=True)


class DeployedWorker(Supervised):
    """`python rp_handler.py` (no --rp_serve_api) under the SDK's production job loop.

    It takes its jobs from a FakeRunPod as worker `worker_id`, with the log kept in a file.
    With `boot=True` it runs through ollama_boot.sh, which starts the stand-in `ollama serve`
    (tests/bin/ollama, first on PATH) on a free port itself: for cold-start and stop tests.
    """

    def __init__(
        self,
        fake_runpod: FakeRunPod,
        env: dict[str, str] | None = None,
        *,
        worker_id: str | None = None,
        boot: bool = False,
        script: str = "rp_handler.py",
        args: tuple[str, ...] = (),
        unset: tuple[str, ...] = (),
        startup_timeout_s: float = 60.0,
    ) -> None:
        """`env` goes over the inherited environment; names in `unset` are removed from it."""
        self.fake_runpod = fake_runpod
        self.worker_id = worker_id or f"worker-{uuid.uuid4().hex[:8]}"
        self.boot = boot
        self.script = script
        self.args = args
        self.startup_timeout_s = startup_timeout_s
        self.tag = uuid.uuid4().hex
        self._tmp = Path(tempfile.mkdtemp(prefix="deployed-"))
        base = {k: v for k, v in clean_environ().items() if k not in unset}
        boot_env: dict[str, str] = {}
        if boot:
            base = {k: v for k, v in base.items() if not k.startswith(BOOT_DROPPED_PREFIXES)}
            self.ollama_port = free_port()
            boot_env = boot_environment(self._tmp, self.ollama_port)
        self.env = {
            **base,
            **boot_env,
            **fake_runpod.worker_env(self.worker_id),
            **(env or {}),
            **SDK_SAFETY,
            "PYTHONUNBUFFERED": "1",
            "DEPLOYED_TEST_TAG": self.tag,
        }
        self.env.pop("RUNPOD_AI_API_KEY", None)
        self._log = tempfile.NamedTemporaryFile(prefix="deployed-", suffix=".log", delete=False)  # noqa: SIM115
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.ready_at = 0.0

    @property
    def ollama_url(self) -> str:
        """The stand-in Ollama the boot script started (boot=True only)."""
        if not self.boot:
            raise RuntimeError("only a worker started through ollama_boot.sh has its own Ollama")
        return f"http://127.0.0.1:{self.ollama_port}"

    def launch(self) -> DeployedWorker:
        """Start the process and return at once (see start())."""
        command = (
            [str(ROOT / "ollama_boot.sh"), *self.args]
            if self.boot
            else [sys.executable, self.script, *self.args]
        )
        self.started_at = time.monotonic()
        # The boot script finds its own folder.
        self.spawn(command, cwd=self._tmp if self.boot else ROOT)
        return self

    def wait_ready(self, timeout: float | None = None) -> float:
        """Block until the worker's first job-take poll (it takes jobs); that poll's time."""
        assert self.process is not None, "launch() first"
        limit = self.startup_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            try:
                self.ready_at = self.fake_runpod.wait_for_poll(
                    0.1, worker_id=self.worker_id, since=self.started_at
                )
                return self.ready_at
            except TimeoutError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.script} exited {self.process.returncode} before taking jobs:\n"
                    f"{self.log()}"
                )
            if time.monotonic() > deadline:
                self.stop(keep_log=True)
                raise RuntimeError(f"{self.script} took no job in {limit} s:\n{self.log()}")

    def start(self) -> DeployedWorker:
        """Start the worker and return once it polls for jobs (or raise with its log)."""
        self.launch()
        self.wait_ready()
        return self

    def submit(self, job_input: Any, job_id: str | None = None) -> str:
        """Queue a job for this worker only; its id."""
        return self.fake_runpod.submit(job_input, job_id, worker_id=self.worker_id)

    def wait_done(self, job_id: str, timeout: float = 30.0) -> JobRecord:
        """The job's record once done; TimeoutError with the worker's recent log if not."""
        try:
            return self.fake_runpod.wait_done(job_id, timeout)
        except TimeoutError as exc:
            alive = "running" if self.alive() else f"exited {self.returncode()}"
            tail = "\n".join(self.log().splitlines()[-40:])
            raise TimeoutError(f"{exc}; worker {alive}, its log ends:\n{tail}") from None

    def run(self, job_input: Any, timeout: float = 30.0) -> JobRecord:
        """Submit one job to this worker and return its record once done."""
        return self.wait_done(self.submit(job_input), timeout)

    def output(self, job_input: Any, timeout: float = 60.0) -> list[Any]:
        """A job's items in the shape WorkerProcess.output gives: a failure's error item last.

        Under the local API a failed job's `{"error"}` lands in `output`; deployed, the job is
        FAILED with that error, after the items it streamed. The same assertions then hold
        for both ways of running the worker. A completed job's aggregated output must be
        exactly what it streamed.
        """
        record = self.run(job_input, timeout)
        if record.status == "FAILED":
            return [*record.stream_items, {"error": record.error}]
        assert record.status == "COMPLETED", record
        assert record.output == record.stream_items, record
        return list(record.output)

    def __enter__(self) -> DeployedWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
