"""The worker in HTTP mode, started as the image starts it: `ollama_boot.sh` with WORKER_MODE=http,
which starts the stand-in `ollama serve` (tests/bin) and `http_server.py` on a free port."""

from __future__ import annotations

import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from standins.ollama import RemoteOllama
from standins.runpod import clean_environ
from tests.harness import (
    BOOT_DROPPED_PREFIXES,
    ROOT,
    Supervised,
    boot_environment,
    free_port,
)

# Inherited variables that would steer the HTTP server or the VAPI checks of the one under test.
HTTP_DROPPED_PREFIXES = ("PORT", "HEALTH_CHECK_PATH", "HTTP_", "VAPI_", "MAX_CONCURRENCY")


class HttpWorker(Supervised):
    """`ollama_boot.sh` in HTTP mode on free ports, its log kept in a file.

    `ollama` is the stand-in Ollama the boot script started: its `/_fake/config` and
    `/_fake/stats` steer and count it (in flight, cancelled) while the worker runs.
    """

    def __init__(self, env: dict[str, str] | None = None, *, health_port: bool = False) -> None:
        self.script = "ollama_boot.sh"
        self.tag = uuid.uuid4().hex
        self._tmp = Path(tempfile.mkdtemp(prefix="http-worker-"))
        self.port = free_port()
        self.health_port = free_port() if health_port else self.port
        self.ollama_port = free_port()
        base = {
            k: v
            for k, v in clean_environ().items()
            if not k.startswith(BOOT_DROPPED_PREFIXES + HTTP_DROPPED_PREFIXES)
        }
        self.env = {
            **base,
            **boot_environment(self._tmp, self.ollama_port),
            "WORKER_MODE": "http",
            "PORT": str(self.port),
            "PORT_HEALTH": str(self.health_port),
            "WORKER_HTTP_HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
            "DEPLOYED_TEST_TAG": self.tag,
            **(env or {}),
        }
        self.url = f"http://127.0.0.1:{self.port}"
        self.health_url = f"http://127.0.0.1:{self.health_port}"
        self.ollama_url = f"http://127.0.0.1:{self.ollama_port}"
        self.stand_in = RemoteOllama(self.ollama_url, timeout=10)
        self._log = tempfile.NamedTemporaryFile(prefix="http-worker-", suffix=".log", delete=False)  # noqa: SIM115
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(60.0))

    def launch(self) -> HttpWorker:
        """Start the boot script and return at once."""
        self.spawn([str(ROOT / "ollama_boot.sh")], cwd=self._tmp)  # it finds its own folder
        return self

    def ping(self) -> int | None:
        """The health check's status, None while nothing listens."""
        try:
            return httpx.get(f"{self.health_url}/ping", timeout=2).status_code
        except httpx.TransportError:
            return None

    def wait_ready(self, timeout: float = 60.0) -> list[int | None]:
        """Poll the health check until it answers 200; every status seen, in order."""
        assert self.process is not None, "launch() first"
        seen: list[int | None] = []
        deadline = time.monotonic() + timeout
        while True:
            code = self.ping()
            if not seen or seen[-1] != code:
                seen.append(code)
            if code == 200:
                return seen
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"ollama_boot.sh exited {self.process.returncode}:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"not healthy within {timeout} s (saw {seen}):\n{self.log()}")
            time.sleep(0.02)

    def start(self) -> HttpWorker:
        """Start and return once the health check answers 200."""
        self.launch()
        self.wait_ready()
        return self

    def ollama(self, method: str, path: str, body: Any = None) -> Any:
        """A call to the stand-in Ollama's own API (e.g. `/_fake/stats`)."""
        response = httpx.request(method, f"{self.ollama_url}{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def configure_ollama(self, **changes: Any) -> None:
        """Change the stand-in's live settings."""
        self.stand_in.configure(**changes)

    def ollama_stats(self) -> dict[str, Any]:
        """The stand-in's counters."""
        return self.stand_in.stats()

    def stop(self, *, keep_log: bool = False) -> None:
        """Stop it and everything it started; remove its files."""
        self.http.close()
        self.stand_in.close()
        super().stop(keep_log=keep_log)

    def __enter__(self) -> HttpWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
