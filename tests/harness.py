"""Run the real worker as a subprocess under RunPod's local API, as a user would with curl."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        if not keep_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
