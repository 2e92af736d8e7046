"""The real Ollama for the real tier: a running `ollama serve` with the real Gemma 3 270M model.

`make ollama` (scripts/real_ollama.py) provides the binary and the GGUF; this module starts a
server on a free loopback port with a model store of its own, and builds `voice-assistant` from
the project's own Modelfile (FROM swapped for the GGUF, every PARAMETER and the SYSTEM kept,
plus what a gemma3 GGUF without a chat template needs). Without a provided Ollama the tier is
skipped with one line saying how to enable it; under CI it fails instead, so CI never passes
without having run it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from scripts.real_ollama import RealOllama, locate, wanted_version
from tests.harness import ROOT, free_port

MODEL = "voice-assistant"
# The GGUF has no tokenizer.chat_template, so without a TEMPLATE Ollama would send the raw
# prompt and drop the system message; this is gemma3's own template (ollama's
# template/gemma3-instruct.gotmpl), which folds the system prompt into the first user turn.
GEMMA3_TEMPLATE = '''TEMPLATE """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""
PARAMETER stop "<end_of_turn>"
'''
FROM_LINE = re.compile(r"^FROM .*$", re.MULTILINE)
# The child of `ollama serve` that holds a loaded model: Ollama's own `ollama runner` up to
# 0.2x, llama.cpp's `llama-server` (lib/ollama/llama-server) from 0.30 on.
MODEL_RUNNERS = ("ollama runner", "llama-server")


def is_model_runner(command: str) -> bool:
    """Whether a command line is a model runner of `ollama serve` (MODEL_RUNNERS)."""
    return any(runner in command for runner in MODEL_RUNNERS)


def voice_modelfile(gguf: Path) -> str:
    """The project's Modelfile on the real GGUF: its FROM swapped, gemma3's template added."""
    text = (ROOT / "Modelfile").read_text()
    if len(FROM_LINE.findall(text)) != 1:
        raise AssertionError("the Modelfile must have exactly one FROM line")
    # A FROM path that does not exist is taken as a model name and pulled: never let it.
    if not gguf.is_file():
        raise FileNotFoundError(gguf)
    return FROM_LINE.sub(f"FROM {gguf}", text) + "\n" + GEMMA3_TEMPLATE


def require_real_ollama() -> RealOllama:
    """The provided real Ollama; skip the test (fail it under CI) when there is none."""
    real = locate()
    if real is not None:
        return real
    reason = (
        f"real-Ollama tier: no Ollama {wanted_version()} provided; run `make ollama` "
        "(needs Go and gcc) or set OLLAMA_BIN to a real ollama binary"
    )
    if os.environ.get("CI"):
        pytest.fail(reason + " (CI must run this tier)")
    pytest.skip(reason)


@dataclass
class RealOllamaServer:
    """`ollama serve` on a free port with its own HOME and model store, in its own group."""

    real: RealOllama
    models_dir: Path
    env_overrides: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="real-ollama-home-"))
        self.log_path = self.home / "serve.log"

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host_port}"

    def env(self) -> dict[str, str]:
        """What `ollama serve` and the `ollama` CLI run with."""
        return {
            **os.environ,
            "HOME": str(self.home),
            "OLLAMA_HOST": self.host_port,
            "OLLAMA_MODELS": str(self.models_dir),
            "OLLAMA_KEEP_ALIVE": "-1",
            **self.env_overrides,
        }

    def start(self, timeout_s: float = 30.0) -> RealOllamaServer:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.real.binary), "serve"],
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its model runners (MODEL_RUNNERS) join this group
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ollama serve exited {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/api/version", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"ollama serve did not answer in {timeout_s} s:\n{self.log()}")

    def restart(self, model: str = MODEL) -> None:
        """Stop and start the server on the same port and store, and load `model` again.

        Ollama 0.12.10 on the CPU is not bit-deterministic across requests: reusing a slot's
        KV cache after another prompt sometimes adds a stray first token (seen with gemma3 at
        temperature 0 and a fixed seed, about 1 reply in 4). A freshly loaded model answers
        the same prompt with the same tokens, so tests that compare two replies start each
        from here. From 0.30 on, llama-server keeps each prompt cached (cache_prompt is always
        on), and 0.32.15 answers a cached prompt with other greedy tokens than a fresh one.
        """
        self.stop()
        self.start()
        self.preload(model)

    def create(self, name: str, modelfile: str) -> None:
        """`ollama create name -f <modelfile>`, as a user builds a model."""
        path = self.home / f"{name.replace(':', '_')}.Modelfile"
        path.write_text(modelfile)
        done = subprocess.run(
            [str(self.real.binary), "create", name, "-f", str(path)],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(f"ollama create {name} failed: {done.stdout}{done.stderr}")

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One JSON call to the server."""
        response = httpx.request(method, f"{self.url}{path}", json=body, timeout=300)
        response.raise_for_status()
        return response.json()

    def preload(self, model: str = MODEL) -> None:
        self.api("POST", "/api/chat", {"model": model, "messages": [], "keep_alive": -1})

    def loaded(self) -> dict[str, dict[str, Any]]:
        """`/api/ps`: the loaded models by name."""
        return {entry["name"]: entry for entry in self.api("GET", "/api/ps")["models"]}

    def runner_pids(self) -> list[int]:
        """Pids of this server's model runners (MODEL_RUNNERS) still alive."""
        if self.process is None:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry.name)) == self.process.pid and int(entry.name) != (
                    self.process.pid
                ):
                    found.append(int(entry.name))
        return found

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """SIGTERM the server's group (runners included), SIGKILL what is left after 10 s."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def __enter__(self) -> RealOllamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def real_ollama_with_model(
    models_dir: Path,
    *,
    env: dict[str, str] | None = None,
    preload: bool = True,
    real: RealOllama | None = None,
) -> Iterator[RealOllamaServer]:
    """A running real server whose store holds `voice-assistant`, built from our Modelfile.

    `real` defaults to the provided one, or skips the test (the bench passes its own)."""
    real = real or require_real_ollama()
    with RealOllamaServer(real, models_dir, env or {}) as server:
        server.create(MODEL, voice_modelfile(real.gguf))
        if preload:
            server.preload()
        yield server


def real_boot_env(server: RealOllamaServer) -> dict[str, str]:
    """Environment for `ollama_boot.sh` with the real `ollama` first on PATH and the server's
    model store (the boot script then starts its own `ollama serve` on that store)."""
    return {
        "PATH": f"{server.real.binary.parent}:{os.environ.get('PATH', '')}",
        "OLLAMA_MODELS": str(server.models_dir),
        "HOME": str(server.home),
    }
