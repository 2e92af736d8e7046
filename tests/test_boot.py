"""The boot path: `ollama_worker.boot` against an in-process fake, and `ollama_boot.sh` driven
for real with the stand-in `ollama` executable (tests/bin/ollama) on PATH.

Every boot run carries a unique BOOT_TEST_TAG in its environment, which all its descendants
inherit, so the cleanup can find (and the tests can prove the absence of) everything the
script left behind, even in other sessions or reparented.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ollama_worker import boot
from ollama_worker.config import DEFAULTS
from standins.ollama import FakeOllama
from tests.harness import tagged_processes

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "ollama_boot.sh"
FAKE_BIN = ROOT / "tests" / "bin"
VENV_BIN = Path(sys.executable).parent
# The boot script must have finished within these, whatever happened.
SCRIPT_TIMEOUT_S = 60.0


# ---------------------------------------------------------------------------------------------
# helpers


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:port."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def boot_leftovers(tag: str) -> list[str]:
    """`pid command` of every live process a boot run tagged BOOT_TEST_TAG=tag started."""
    return [f"{pid} {cmd}" for pid, cmd in tagged_processes("BOOT_TEST_TAG", tag).items()]


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


class Boot:
    """One run of ollama_boot.sh with the stand-in ollama, its own ports and model store."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.tmp_path = tmp_path
        self.ollama_port = free_port()
        self.api_port = free_port()
        self.models_dir = tmp_path / "models"
        self.models_dir.mkdir(exist_ok=True)
        self.call_log = tmp_path / "ollama-calls.log"
        self.log_path = tmp_path / "boot.log"
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("FAKE_OLLAMA_", "OLLAMA_", "VAPI_", "WORKER_"))
            and k not in {"DEFAULT_MODEL", "PULL_MODELS", "MAX_CONCURRENCY", "MODELFILE"}
        }
        self.env = {
            **clean,
            "PATH": f"{FAKE_BIN}:{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PYTHON": sys.executable,
            "PYTHONUNBUFFERED": "1",
            "OLLAMA_HOST": f"127.0.0.1:{self.ollama_port}",
            "OLLAMA_MODELS": str(self.models_dir),
            "FAKE_OLLAMA_CALL_LOG": str(self.call_log),
            "OLLAMA_BOOT_TIMEOUT_S": "20",
            **env,
        }
        self.tag = uuid.uuid4().hex
        self.env["BOOT_TEST_TAG"] = self.tag
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self, *args: str) -> Boot:
        """Start the script, logging to a file (a pipe could fill up)."""
        with self.log_path.open("wb") as log:
            self.started_at = time.monotonic()
            self.process = subprocess.Popen(
                [str(SCRIPT), *args],
                env=self.env,
                cwd=self.tmp_path,  # the script must not depend on the working directory
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def serve(self) -> Boot:
        """Run mode with RunPod's local API on a free port."""
        return self.start("--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port",
                          str(self.api_port))  # fmt: skip

    def wait(self, timeout_s: float = SCRIPT_TIMEOUT_S) -> int:
        """Exit status of the script, failing the test if it outlives `timeout_s`."""
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"ollama_boot.sh still running after {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def calls(self) -> list[list[str]]:
        """The argv of every stand-in `ollama` invocation, in order."""
        if not self.call_log.exists():
            return []
        lines = self.call_log.read_text().splitlines()
        return [shlex.split(line) for line in lines if line.strip()]

    def persisted_models(self) -> list[str]:
        """Model names the stand-in stored in OLLAMA_MODELS."""
        state = json.loads((self.models_dir / "fake-ollama-models.json").read_text())
        entries = state.get("models", state) if isinstance(state, dict) else state
        names = []
        for entry in entries:
            names.append(entry if isinstance(entry, str) else entry.get("name"))
        return [boot.normalise_model(n) for n in names if n]

    def chat(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """POST a chat job to /runsync, retrying until the API answers; the answer."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                response = httpx.post(
                    f"{self.api_url}/runsync", json={"input": {"prompt": "hi"}}, timeout=30
                )
                return response.json()
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    pytest.fail(f"no answer from the worker in {timeout_s} s:\n{self.log()}")
                assert self.process is not None
                if self.process.poll() is not None:
                    pytest.fail(f"ollama_boot.sh exited {self.process.returncode}:\n{self.log()}")
                time.sleep(0.05)

    def leftovers(self) -> list[str]:
        """Processes of this run still alive (the script itself included)."""
        return boot_leftovers(self.tag)

    def kill(self) -> None:
        """Whatever happened, leave nothing of this run behind."""
        if self.process is None:
            return
        for line in self.leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split()[0]), signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def make_boot(tmp_path: Path) -> Iterator[Any]:
    """Factory for Boot runs that are always killed at the end of the test."""
    runs: list[Boot] = []
    if not (FAKE_BIN / "ollama").exists():
        pytest.fail("tests/bin/ollama (the stand-in ollama executable) is missing")

    def make(**env: str) -> Boot:
        run_dir = tmp_path / f"run{len(runs)}"
        run_dir.mkdir()
        runs.append(Boot(run_dir, **env))
        return runs[-1]

    yield make
    for run in runs:
        run.kill()


# ---------------------------------------------------------------------------------------------
# ollama_worker.boot against an in-process fake


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama(models=["llama3.1:8b", "voice-assistant:latest"]) as server:
        yield server


def test_wait_for_ollama_returns_the_version(fake: FakeOllama) -> None:
    assert boot.wait_for_ollama(fake.url, 5) == fake.config().version


def test_wait_for_ollama_waits_for_a_slow_start() -> None:
    port = free_port()
    server = FakeOllama(port=port, start_delay_s=0.6)
    started = time.monotonic()
    server.start(wait=False)
    try:
        version = boot.wait_for_ollama(f"http://127.0.0.1:{port}", 10)
    finally:
        server.stop()
    elapsed = time.monotonic() - started
    assert version
    # Polled at most every 0.25 s: the answer comes soon after the server binds.
    assert 0.55 <= elapsed < 0.6 + 0.25 + 0.5, elapsed


def test_wait_for_ollama_gives_up_at_the_deadline() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(boot.BootError, match=r"did not answer within 0\.6 s"):
        boot.wait_for_ollama(url, 0.6)
    assert time.monotonic() - started < 1.2


def test_wait_for_ollama_gives_up_on_an_unhealthy_server() -> None:
    with FakeOllama(never_healthy=True) as server:
        started = time.monotonic()
        with pytest.raises(boot.BootError, match="HTTP 500"):
            boot.wait_for_ollama(server.url, 0.5)
    assert time.monotonic() - started < 1.5


def test_wait_for_ollama_stops_at_once_when_the_server_process_died() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(boot.BootError, match="exited before it answered"):
        boot.wait_for_ollama(url, 30, pid=dead_pid())
    assert time.monotonic() - started < 0.5


def test_wait_for_ollama_treats_a_zombie_as_dead() -> None:
    # Exited but not yet reaped by its parent (us): kill(pid, 0) still succeeds.
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 5
        while Path(f"/proc/{process.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(boot.BootError, match="exited"):
            boot.wait_for_ollama(f"http://127.0.0.1:{free_port()}", 30, pid=process.pid)
    finally:
        process.wait()


def test_wait_for_ollama_keeps_polling_while_the_process_lives(fake: FakeOllama) -> None:
    assert boot.wait_for_ollama(fake.url, 5, pid=os.getpid())


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("voice-assistant", "voice-assistant:latest"),
        ("voice-assistant:latest", "voice-assistant:latest"),
        ("Llama3.1:8B", "llama3.1:8b"),
        ("registry.ollama.ai/library/llama3.1:8b", "llama3.1:8b"),
        ("hf.co/org/model", "hf.co/org/model:latest"),
        ("localhost:5000/m", "localhost:5000/m:latest"),
    ],
)
def test_normalise_model(name: str, canonical: str) -> None:
    assert boot.normalise_model(name) == canonical


def test_the_bake_compares_model_names_by_the_workers_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """`ollama_boot.sh bake` asks `boot among` whether DEFAULT_MODEL is one of PULL_MODELS."""
    among = ("among", "Llama3.1:8B", "qwen2.5:0.5b", "registry.ollama.ai/library/llama3.1:8b")
    assert _cli(monkeypatch, "127.0.0.1:9", *among) == 0
    assert _cli(monkeypatch, "127.0.0.1:9", "among", "voice-assistant", "llama3.1:8b") == 1
    assert _cli(monkeypatch, "127.0.0.1:9", "among", "voice-assistant") == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"error": "model \'x\' not found"}', "model 'x' not found"),
        ('{"error": {"message": "bad request", "type": "api_error"}}', "bad request"),
        ('{"error": ""}', None),
        ("[1]", None),
        ("502 Bad Gateway", None),
    ],
)
def test_one_reading_of_ollamas_error_bodies(body: str, message: str | None) -> None:
    assert boot.ollama_error_message(body) == message


def test_installed_models_and_require_model(fake: FakeOllama) -> None:
    assert set(map(boot.normalise_model, boot.installed_models(fake.url))) == {
        "llama3.1:8b",
        "voice-assistant:latest",
    }
    boot.require_model(fake.url, "voice-assistant")
    boot.require_model(fake.url, "voice-assistant:latest")
    with pytest.raises(boot.BootError) as caught:
        boot.require_model(fake.url, "qwen2.5:7b")
    message = str(caught.value)
    assert "'qwen2.5:7b' is not installed" in message
    assert "llama3.1:8b" in message
    assert "voice-assistant:latest" in message


def test_require_model_names_an_empty_store() -> None:
    with FakeOllama(models=[]) as server, pytest.raises(boot.BootError, match="installed: none"):
        boot.require_model(server.url, "voice-assistant")


def test_pull_installs_the_model(fake: FakeOllama, capsys: pytest.CaptureFixture[str]) -> None:
    boot.pull(fake.url, "qwen2.5:0.5b")
    assert boot.is_installed("qwen2.5:0.5b", boot.installed_models(fake.url))
    err = capsys.readouterr().err
    # Progress is reported once per status, not once per progress line.
    assert err.count("pulling manifest") == 1
    assert "success" in err


def test_pull_raises_on_an_error_line(fake: FakeOllama) -> None:
    fake.configure(pull_fail=["bad:model"])
    with pytest.raises(boot.BootError, match="file does not exist"):
        boot.pull(fake.url, "bad:model", log=False)
    assert not boot.is_installed("bad:model", boot.installed_models(fake.url))


def test_preload_loads_and_keeps_the_model(fake: FakeOllama) -> None:
    fake.configure(load_delay_s=0.2)
    started = time.monotonic()
    boot.preload(fake.url, "voice-assistant")
    assert time.monotonic() - started >= 0.2
    assert httpx.get(f"{fake.url}/_fake/stats").json()["loads"] == 1
    loaded = httpx.get(f"{fake.url}/api/ps").json()["models"]
    assert [m["name"] for m in loaded] == ["voice-assistant:latest"]
    request = httpx.get(f"{fake.url}/_fake/stats").json()["chat_requests"][-1]
    assert request["keep_alive"] == -1
    assert request["messages"] == []


def test_preload_of_a_missing_model_fails(fake: FakeOllama) -> None:
    with pytest.raises(boot.BootError, match="HTTP 404"):
        boot.preload(fake.url, "nope:1b")


def test_preload_is_bounded(fake: FakeOllama) -> None:
    fake.configure(load_delay_s=5)
    started = time.monotonic()
    with pytest.raises(boot.BootError, match="timed out"):
        boot.preload(fake.url, "voice-assistant", timeout_s=0.3)
    assert time.monotonic() - started < 2


def _cli(monkeypatch: pytest.MonkeyPatch, url: str, *args: str, **env: str) -> int:
    from ollama_worker import config

    config.get_settings.cache_clear()
    monkeypatch.setenv("OLLAMA_HOST", url)
    for name in (
        "DEFAULT_MODEL",
        "OLLAMA_PULL_ON_BOOT",
        "PULL_MODELS",
        "OLLAMA_BOOT_TIMEOUT_S",
        "OLLAMA_MIN_GPU_FRACTION",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        return boot.main(list(args))
    finally:
        config.get_settings.cache_clear()


def test_cli_ready_waits_checks_and_preloads(
    fake: FakeOllama, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(monkeypatch, fake.url, "ready") == 0
    assert httpx.get(f"{fake.url}/_fake/stats").json()["loads"] == 1
    err = capsys.readouterr().err
    assert "voice-assistant loaded" in err
    assert "GPU memory" not in err  # wholly on the GPU: nothing to say


def test_cli_ready_says_when_a_model_runs_partly_on_the_cpu(
    fake: FakeOllama, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.configure(gpu_fraction=0.5)
    assert _cli(monkeypatch, fake.url, "ready") == 0  # unset minimum: a warning only
    assert capsys.readouterr().err.splitlines()[-1] == (
        "boot: voice-assistant:latest: 50% in GPU memory, the rest on the CPU; replies will be slow"
    )
    assert _cli(monkeypatch, fake.url, "ready", OLLAMA_MIN_GPU_FRACTION="0.4") == 0


def test_cli_ready_fails_below_the_minimum_gpu_fraction(
    fake: FakeOllama, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.configure(gpu_fraction=0.999)
    assert _cli(monkeypatch, fake.url, "ready", OLLAMA_MIN_GPU_FRACTION="1") == 1
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("boot: voice-assistant:latest (99%) in GPU memory, below ")
    assert "OLLAMA_MIN_GPU_FRACTION=1;" in last
    for bad in ("1.5", "most", "-0.1"):
        assert _cli(monkeypatch, fake.url, "ready", OLLAMA_MIN_GPU_FRACTION=bad) == 1
        assert "OLLAMA_MIN_GPU_FRACTION" in capsys.readouterr().err


def test_cli_ready_fails_on_a_missing_model(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeOllama(models=["llama3.1:8b"]) as server:
        assert _cli(monkeypatch, server.url, "ready") == 1
        # Never downloads at run time unless asked to.
        assert "POST /api/pull" not in httpx.get(f"{server.url}/_fake/stats").json()["requests"]
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("boot: model 'voice-assistant' is not installed")
    assert "installed: llama3.1:8b" in lines[-1]


def test_cli_ready_pulls_when_asked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeOllama(models=[]) as server:
        code = _cli(
            monkeypatch,
            server.url,
            "ready",
            OLLAMA_PULL_ON_BOOT="1",
            DEFAULT_MODEL="qwen2.5:0.5b",
        )
        assert code == 0, capsys.readouterr().err
        stats = httpx.get(f"{server.url}/_fake/stats").json()
        assert stats["requests"]["POST /api/pull"] == 1
        assert stats["loads"] == 1


def test_cli_wait_prints_the_version(
    fake: FakeOllama, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(monkeypatch, fake.url, "wait", "--timeout", "2") == 0
    assert capsys.readouterr().out.strip() == fake.config().version


def test_cli_failures_are_one_boot_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"127.0.0.1:{free_port()}"
    assert _cli(monkeypatch, url, "wait", "--timeout", "0.3") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("boot: Ollama at http://127.0.0.1:")
    assert _cli(monkeypatch, url, "check", OLLAMA_BOOT_TIMEOUT_S="soon") == 1
    assert "OLLAMA_BOOT_TIMEOUT_S" in capsys.readouterr().err


def test_cli_check_and_pull(
    fake: FakeOllama, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(monkeypatch, fake.url, "check") == 0
    assert _cli(monkeypatch, fake.url, "check", "nope") == 1
    assert _cli(monkeypatch, fake.url, "pull", PULL_MODELS="a:1, b:2") == 0
    installed = boot.installed_models(fake.url)
    assert boot.is_installed("a:1", installed)
    assert boot.is_installed("b:2", installed)
    assert _cli(monkeypatch, fake.url, "preload", "a:1") == 0


def test_boot_module_imports_only_the_standard_library() -> None:
    code = (
        "import sys, ollama_worker.boot\n"
        "bad = [m for m in ('httpx', 'pydantic', 'runpod', 'ollama', 'aiohttp', 'tenacity')"
        " if m in sys.modules]\n"
        "print(bad)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# ollama_boot.sh bake


def test_bake_pulls_creates_and_stops(make_boot: Any) -> None:
    run = make_boot(PULL_MODELS="llama3.1:8b, qwen2.5:0.5b")
    code = run.start("bake").wait()
    assert code == 0, run.log()
    calls = run.calls()
    verbs = [call[1:] for call in calls if call and Path(call[0]).name == "ollama"] or calls
    assert ["pull", "llama3.1:8b"] in verbs, calls
    assert ["pull", "qwen2.5:0.5b"] in verbs, calls
    creates = [v for v in verbs if v[:1] == ["create"]]
    assert creates == [["create", DEFAULTS.default_model, "-f", str(ROOT / "Modelfile")]], calls
    assert set(run.persisted_models()) >= {
        "llama3.1:8b",
        "qwen2.5:0.5b",
        f"{DEFAULTS.default_model}:latest",
    }
    assert not listening(run.ollama_port), "bake left ollama serve running"
    assert "[ollama] " in run.log()
    assert run.leftovers() == []


def test_bake_fails_on_a_failed_pull(make_boot: Any) -> None:
    run = make_boot(PULL_MODELS="llama3.1:8b bad:model", FAKE_OLLAMA_PULL_FAIL="bad:model")
    code = run.start("bake").wait()
    assert code != 0, run.log()
    assert not any("create" in call for call in run.calls()), "created after a failed pull"
    assert not listening(run.ollama_port)
    assert run.leftovers() == []


def test_bake_uses_a_pulled_default_model_as_is(make_boot: Any) -> None:
    run = make_boot(PULL_MODELS="qwen2.5:0.5b", DEFAULT_MODEL="qwen2.5:0.5b")
    assert run.start("bake").wait() == 0, run.log()
    assert not any("create" in call for call in run.calls())


# ---------------------------------------------------------------------------------------------
# ollama_boot.sh run mode


@pytest.fixture
def handler_ready() -> None:
    """Run-mode tests need the lead's rp_handler.py."""
    if not (ROOT / "rp_handler.py").exists():
        pytest.fail("rp_handler.py is missing")


@pytest.mark.usefixtures("handler_ready")
def test_run_serves_a_chat_job(make_boot: Any) -> None:
    run = make_boot(FAKE_OLLAMA_MODELS="voice-assistant:latest").serve()
    answer = run.chat()
    assert answer["status"] == "COMPLETED", answer
    item = answer["output"][0]
    assert item["message"]["content"].strip()
    # The model was preloaded once, with keep_alive forever.
    stats = httpx.get(f"http://127.0.0.1:{run.ollama_port}/_fake/stats").json()
    assert stats["loads"] == 1
    preloads = [r for r in stats["chat_requests"] if r.get("messages") == []]
    assert preloads
    assert preloads[0]["keep_alive"] == -1
    assert "[ollama] " in run.log()


@pytest.mark.usefixtures("handler_ready")
def test_run_cold_start_overlaps_handler_import_and_model_load(make_boot: Any) -> None:
    import_s = float(
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import time; t = time.perf_counter(); import runpod; "
                "print(time.perf_counter() - t)",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    run = make_boot(
        FAKE_OLLAMA_MODELS="voice-assistant:latest",
        FAKE_OLLAMA_START_DELAY="1.5",
        FAKE_OLLAMA_LOAD_DELAY="1.5",
    )
    # When each side really comes up. The stand-in is itself a Python program that needs
    # 0.3-0.7 s before its 1.5 s start delay even begins (a Go binary does not); the
    # handler's API listens once runpod is imported and Ollama answered.
    up_at: dict[str, float] = {}

    def watch(name: str, port: int) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if listening(port):
                up_at[name] = time.monotonic() - run.started_at
                return
            time.sleep(0.01)

    run.serve()
    watchers = [
        threading.Thread(target=watch, args=("ollama", run.ollama_port), daemon=True),
        threading.Thread(target=watch, args=("handler", run.api_port), daemon=True),
    ]
    for watcher in watchers:
        watcher.start()
    answer = run.chat()
    first_answer_s = time.monotonic() - run.started_at
    for watcher in watchers:
        watcher.join(5)
    assert answer["status"] == "COMPLETED", answer
    ollama_up, handler_up = up_at["ollama"], up_at["handler"]
    target = max(3.0, import_s)
    print(
        f"\ncold start: first answer after {first_answer_s:.2f} s "
        f"(target {target:.2f} + 0.5 s; runpod import {import_s:.2f} s); "
        f"stand-in listening at {ollama_up:.2f} s, handler API at {handler_up:.2f} s"
    )
    # Nothing queues once both sides are up: the answer follows the later of the model
    # load (1.5 s after Ollama listens, plus one 0.25 s poll) and the handler's start.
    ready_at = max(ollama_up + 1.5 + 0.25, handler_up)
    assert first_answer_s - ready_at < 0.6, run.log()
    # The handler's import overlapped Ollama's start and the load: one after the other,
    # its API could not listen before ollama_up + 1.5 (load) + ~1.5 (import).
    assert handler_up < ollama_up + 3.0, run.log()


@pytest.mark.usefixtures("handler_ready")
def test_run_refuses_a_missing_default_model(make_boot: Any) -> None:
    run = make_boot(FAKE_OLLAMA_MODELS="llama3.1:8b,qwen2.5:0.5b").serve()
    code = run.wait(20)
    log = run.log()
    assert code != 0, log
    assert "'voice-assistant' is not installed" in log
    assert "llama3.1:8b" in log
    assert "qwen2.5:0.5b" in log
    assert not any("pull" in call for call in run.calls()), "downloaded at run time"
    assert not listening(run.ollama_port)
    assert not listening(run.api_port)
    assert run.leftovers() == []


@pytest.mark.usefixtures("handler_ready")
def test_run_stops_when_too_little_of_the_model_is_in_gpu_memory(make_boot: Any) -> None:
    run = make_boot(
        FAKE_OLLAMA_MODELS="voice-assistant:latest",
        FAKE_OLLAMA_GPU_FRACTION="0.5",
        OLLAMA_MIN_GPU_FRACTION="0.9",
    ).serve()
    code = run.wait(20)
    log = run.log()
    assert code != 0, log
    assert "voice-assistant:latest: 50% in GPU memory, the rest on the CPU" in log
    assert "below OLLAMA_MIN_GPU_FRACTION=0.9" in log
    assert not listening(run.api_port)
    assert run.leftovers() == []


@pytest.mark.usefixtures("handler_ready")
def test_run_pulls_on_boot_only_when_asked_and_before_taking_jobs(make_boot: Any) -> None:
    run = make_boot(OLLAMA_PULL_ON_BOOT="1", DEFAULT_MODEL="qwen2.5:0.5b").serve()
    answer = run.chat()
    assert answer["status"] == "COMPLETED", answer
    stats = httpx.get(f"http://127.0.0.1:{run.ollama_port}/_fake/stats").json()
    assert stats["requests"]["POST /api/pull"] == 1
    log = run.log()
    # Jobs for a model still downloading would fail: the handler starts after the pull.
    assert log.index("ready: qwen2.5:0.5b is loaded") < log.index("Starting Serverless Worker")


@pytest.mark.usefixtures("handler_ready")
def test_run_ends_when_ollama_crashes_on_start(make_boot: Any) -> None:
    run = make_boot(FAKE_OLLAMA_CRASH_ON_START="1").serve()
    code = run.wait(10)
    assert code != 0, run.log()
    # Noticed at once, not after OLLAMA_BOOT_TIMEOUT_S (20 s here).
    assert time.monotonic() - run.started_at < 5, run.log()
    assert run.leftovers() == []


@pytest.mark.usefixtures("handler_ready")
def test_run_ends_when_ollama_never_becomes_healthy(make_boot: Any) -> None:
    run = make_boot(FAKE_OLLAMA_NEVER_HEALTHY="1", OLLAMA_BOOT_TIMEOUT_S="2").serve()
    code = run.wait(15)
    elapsed = time.monotonic() - run.started_at
    assert code != 0, run.log()
    assert 2 <= elapsed < 2 + 4, (elapsed, run.log())
    assert "did not answer within 2 s" in run.log()
    assert not listening(run.ollama_port)
    assert run.leftovers() == []


@pytest.mark.usefixtures("handler_ready")
def test_run_ends_non_zero_when_ollama_dies_later(make_boot: Any) -> None:
    # Long enough for the worker to be serving first, even on a slow machine.
    run = make_boot(FAKE_OLLAMA_MODELS="voice-assistant:latest", FAKE_OLLAMA_CRASH_AFTER_S="6")
    run.serve()
    assert run.chat()["status"] == "COMPLETED"
    assert "ready: voice-assistant is loaded" in run.log()
    code = run.wait(15)
    assert code != 0, run.log()
    assert "ollama serve exited" in run.log()
    assert not listening(run.api_port), "the handler outlived Ollama"
    assert run.leftovers() == []


@pytest.mark.usefixtures("handler_ready")
def test_sigterm_stops_everything(make_boot: Any) -> None:
    run = make_boot(FAKE_OLLAMA_MODELS="voice-assistant:latest").serve()
    assert run.chat()["status"] == "COMPLETED"
    before = run.leftovers()
    # The script, the prefixer, ollama serve and the handler at least.
    assert len(before) >= 4, before
    stopped = time.monotonic()
    run.process.send_signal(signal.SIGTERM)
    code = run.wait(12)
    assert time.monotonic() - stopped < 10, run.log()
    assert code != 0
    assert not listening(run.ollama_port)
    assert not listening(run.api_port)
    assert run.leftovers() == [], run.log()


@pytest.mark.usefixtures("handler_ready")
def test_sigint_stops_everything_during_boot(make_boot: Any) -> None:
    run = make_boot(
        FAKE_OLLAMA_MODELS="voice-assistant:latest", FAKE_OLLAMA_START_DELAY="30"
    ).serve()
    time.sleep(1.0)
    run.process.send_signal(signal.SIGINT)
    code = run.wait(12)
    assert code != 0
    assert time.monotonic() - run.started_at < 11
    assert run.leftovers() == [], run.log()


def test_sigterm_kills_what_ignores_it(make_boot: Any, tmp_path: Path) -> None:
    # A handler that ignores SIGTERM and leaves a child of its own: both must be gone
    # after its grace (WORKER_STOP_GRACE_S + 1 s: 1 s here instead of 6 s), without waiting
    # for the child's sleep.
    worker = tmp_path / "worker"
    worker.mkdir()
    (worker / "ollama_worker").symlink_to(ROOT / "ollama_worker")
    (worker / "rp_handler.py").write_text(
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen(['sleep', '300'])\n"
        "print('stubborn handler up', flush=True)\n"
        "time.sleep(300)\n"
    )
    run = make_boot(
        FAKE_OLLAMA_MODELS="voice-assistant:latest",
        WORKER_DIR=str(worker),
        WORKER_STOP_GRACE_S="0",
        BOOT_STOP_GRACE_S="1",
    ).start()
    deadline = time.monotonic() + 20
    while "ready: voice-assistant is loaded" not in run.log():
        assert time.monotonic() < deadline, run.log()
        time.sleep(0.05)
    assert "stubborn handler up" in run.log()
    stopped = time.monotonic()
    run.process.send_signal(signal.SIGTERM)
    code = run.wait(10)
    assert code == 143
    assert time.monotonic() - stopped < 4, run.log()
    assert "ignored SIGTERM for 1 s; killing it" in run.log()
    assert run.leftovers() == []


def test_run_exits_with_the_handlers_status(make_boot: Any, tmp_path: Path) -> None:
    # A stand-in handler that fails on its own: the script must stop Ollama and pass
    # the status on, so RunPod sees why the worker ended.
    worker = tmp_path / "worker"
    worker.mkdir()
    (worker / "ollama_worker").symlink_to(ROOT / "ollama_worker")
    (worker / "rp_handler.py").write_text("import sys, time\ntime.sleep(1)\nsys.exit(7)\n")
    run = make_boot(FAKE_OLLAMA_MODELS="voice-assistant:latest", WORKER_DIR=str(worker))
    code = run.start().wait(20)
    assert code == 7, run.log()
    assert "handler exited with status 7" in run.log()
    assert not listening(run.ollama_port)
    assert run.leftovers() == []


@pytest.mark.usefixtures("handler_ready")
def test_smoke_script_passes_against_the_worker(make_boot: Any) -> None:
    run = make_boot(FAKE_OLLAMA_MODELS="voice-assistant:latest").serve()
    run.chat()
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "smoke.py"), run.api_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok   ") == len(
        json.loads((ROOT / ".runpod" / "tests.json").read_text())["tests"]
    )
