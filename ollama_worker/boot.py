"""Bring the local Ollama server up for the worker: wait, check the model, pull, preload.

Standard library only: this runs on the cold-start path (and during the image build, where the
handler's dependencies are not needed), so every millisecond of import time counts.

Used two ways:
- from Python: `wait_for_ollama(...)` before the RunPod handler starts taking jobs;
- from `ollama_boot.sh`: `python -m ollama_worker.boot <command>`, since the image has no curl.
  Each command exits 0 on success, or 1 with one `boot: ...` line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ollama_worker.config import Settings
    from ollama_worker.model_cache import CacheSettings

# Each poll is short so a wedged server cannot hold the loop past its deadline.
_POLL_TIMEOUT_S = 2.0
# Loading an 8B model from a cold disk can take a while; Ollama itself gives up after
# OLLAMA_LOAD_TIMEOUT (5 min), so this only guards against a server that never answers.
PRELOAD_TIMEOUT_S = 600.0
# A pull reports progress continuously; this long without a line means it has stalled.
PULL_STALL_TIMEOUT_S = 300.0
_DEFAULT_REGISTRY_PREFIX = "registry.ollama.ai/library/"


class BootError(RuntimeError):
    """Ollama could not be brought to a state where the worker can serve jobs."""


def _process_alive(pid: int) -> bool:
    """Whether `pid` still runs; a zombie (dead but not yet reaped) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            # The state follows the parenthesised command name, which may itself hold spaces.
            state = stat.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state not in {"Z", "X"}


def _request(base_url: str, path: str, body: dict[str, Any] | None) -> urllib.request.Request:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    return urllib.request.Request(
        base_url.rstrip("/") + path,
        data=data,
        headers=headers,
        method="GET" if body is None else "POST",
    )


def ollama_error_message(body: str) -> str | None:
    """The message of an Ollama error body: `{"error": "..."}`, or `{"error": {"message": ...}}`
    on its OpenAI-compatible routes; None when the body says none."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return str(error) if error else None


def _error_text(exc: urllib.error.HTTPError) -> str:
    """The message of an Ollama error answer, or its raw body, for messages."""
    try:
        raw = exc.read().decode(errors="replace")
    except OSError:
        raw = ""
    return ollama_error_message(raw) or raw.strip() or str(exc.reason)


def _call_json(
    base_url: str, path: str, body: dict[str, Any] | None = None, *, timeout_s: float
) -> Any:
    """One request answered by one JSON document; raises BootError on any failure."""
    request = _request(base_url, path, body)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            payload = response.read()
    except urllib.error.HTTPError as exc:
        raise BootError(f"{path} answered HTTP {exc.code}: {_error_text(exc)}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BootError(f"{path} at {base_url} failed: {reason}") from None
    try:
        return json.loads(payload)
    except ValueError:
        raise BootError(f"{path} answered something that is not JSON: {payload[:200]!r}") from None


def _stream_json(
    base_url: str, path: str, body: dict[str, Any], *, timeout_s: float
) -> Iterator[dict[str, Any]]:
    """POST and yield each NDJSON line as a dict; an `error` line raises BootError."""
    request = _request(base_url, path, body)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            for raw in response:
                line = raw.strip()
                if not line:  # tolerated: some proxies add blank keep-alive lines
                    continue
                try:
                    item = json.loads(line)
                except ValueError:
                    raise BootError(
                        f"{path} sent a line that is not JSON: {line[:200]!r}"
                    ) from None
                if not isinstance(item, dict):
                    raise BootError(f"{path} sent an unexpected line: {line[:200]!r}")
                if item.get("error"):
                    raise BootError(f"{path} failed: {item['error']}")
                yield item
    except urllib.error.HTTPError as exc:
        raise BootError(f"{path} answered HTTP {exc.code}: {_error_text(exc)}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BootError(f"{path} at {base_url} failed: {reason}") from None


# A poll of the loopback costs ~1 ms; a long interval would cost the cold start up to that much
# (the bench measured 0.25 s adding ~0.2 s before the model load could begin).
POLL_INTERVAL_S = 0.05


def wait_for_ollama(
    base_url: str, timeout_s: float, *, pid: int | None = None, interval_s: float = POLL_INTERVAL_S
) -> str:
    """Poll `/api/version` until Ollama answers and return its version, so nothing talks to a
    server that is not up yet; raise BootError once `pid` (the server) dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    last_problem = "no answer yet"
    while True:
        started = time.monotonic()
        if pid is not None and not _process_alive(pid):
            raise BootError(f"ollama serve (pid {pid}) exited before it answered at {base_url}")
        remaining = deadline - started
        if remaining <= 0:
            raise BootError(
                f"Ollama at {base_url} did not answer within {timeout_s:g} s ({last_problem})"
            )
        try:
            answer = _call_json(base_url, "/api/version", timeout_s=min(_POLL_TIMEOUT_S, remaining))
        except BootError as exc:
            last_problem = str(exc)
        else:
            version = answer.get("version") if isinstance(answer, dict) else None
            if isinstance(version, str) and version:
                return version
            last_problem = f"/api/version answered {answer!r}"
        # Polls start at most every interval_s, whatever each one cost.
        pause = interval_s - (time.monotonic() - started)
        if pause > 0:
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))


def normalise_model(name: str) -> str:
    """Ollama's canonical form of a model name ("voice-assistant" -> "voice-assistant:latest"),
    so names written with or without the default tag or registry compare equal."""
    name = name.strip()
    if name.casefold().startswith(_DEFAULT_REGISTRY_PREFIX):
        name = name[len(_DEFAULT_REGISTRY_PREFIX) :]
    last_part = name.rpartition("/")[2]
    if ":" not in last_part:
        name += ":latest"
    # Ollama matches model names case-insensitively.
    return name.casefold()


def installed_models(base_url: str, *, timeout_s: float = 10.0) -> list[str]:
    """The names `/api/tags` lists, so the boot can tell what the image actually holds."""
    answer = _call_json(base_url, "/api/tags", timeout_s=timeout_s)
    models = answer.get("models") if isinstance(answer, dict) else None
    if not isinstance(models, list):
        raise BootError(f"/api/tags answered an unexpected body: {answer!r}")
    names: list[str] = []
    for entry in models:
        if isinstance(entry, dict):
            name = entry.get("name") or entry.get("model")
            if isinstance(name, str) and name:
                names.append(name)
    return names


def is_installed(model: str, installed: Sequence[str]) -> bool:
    """Whether `model` is among `installed`, comparing tag-normalised names."""
    wanted = normalise_model(model)
    return any(normalise_model(name) == wanted for name in installed)


def _not_installed(model: str, installed: Sequence[str]) -> BootError:
    listing = ", ".join(sorted(installed)) or "none"
    return BootError(
        f"model {model!r} is not installed in OLLAMA_MODELS (installed: {listing}); "
        "bake it into the image (PULL_MODELS / Modelfile) or set OLLAMA_PULL_ON_BOOT=1"
    )


def require_model(base_url: str, model: str) -> list[str]:
    """Raise BootError naming what is installed unless `model` is, so a worker never starts
    with a model it would have to download at job time; returns the installed names."""
    installed = installed_models(base_url)
    if not is_installed(model, installed):
        raise _not_installed(model, installed)
    return installed


def pull(
    base_url: str,
    model: str,
    *,
    stall_timeout_s: float = PULL_STALL_TIMEOUT_S,
    log: bool = True,
) -> None:
    """Download `model` through `/api/pull`, raising BootError on an error line or if the
    stream ends without `success`, so a failed download never passes for a finished one."""
    last_status = ""
    body = {"model": model, "name": model, "stream": True}
    for item in _stream_json(base_url, "/api/pull", body, timeout_s=stall_timeout_s):
        status = str(item.get("status", ""))
        # Progress lines repeat the same status with new byte counts: report changes only.
        if log and status and status != last_status:
            print(f"boot: pull {model}: {status}", file=sys.stderr, flush=True)
        last_status = status or last_status
    if last_status != "success":
        raise BootError(f"pull of {model!r} ended without success (last status {last_status!r})")


def preload(base_url: str, model: str, *, timeout_s: float = PRELOAD_TIMEOUT_S) -> None:
    """Load `model` into memory and keep it there forever (`keep_alive: -1`), so the first
    job does not pay for the load; raises BootError if Ollama cannot load it."""
    body = {"model": model, "messages": [], "keep_alive": -1, "stream": False}
    answer = _call_json(base_url, "/api/chat", body, timeout_s=timeout_s)
    if not isinstance(answer, dict) or answer.get("error"):
        raise BootError(f"preloading {model!r} failed: {answer!r}")


def _log(message: str) -> None:
    print(f"boot: {message}", file=sys.stderr, flush=True)


def shares_in_gpu_memory(ps_answer: Any) -> dict[str, float]:
    """Each loaded model's share in GPU memory (`size_vram / size`) from an `/api/ps` answer,
    since a model that did not fit the GPU runs partly on the CPU and answers several times
    slower. Entries it cannot read are left out."""
    models = ps_answer.get("models") if isinstance(ps_answer, dict) else None
    shares: dict[str, float] = {}
    for entry in models if isinstance(models, list) else []:
        if not isinstance(entry, dict):
            continue
        name = entry.get("name") or entry.get("model")
        size, vram = entry.get("size"), entry.get("size_vram")
        if isinstance(name, str) and isinstance(size, int) and size > 0 and isinstance(vram, int):
            shares[name] = min(1.0, vram / size)
    return shares


def gpu_shares(base_url: str, *, timeout_s: float = 10.0) -> dict[str, float]:
    """`shares_in_gpu_memory` of the server at `base_url`."""
    answer = _call_json(base_url, "/api/ps", timeout_s=timeout_s)
    if not isinstance(answer, dict) or not isinstance(answer.get("models"), list):
        raise BootError(f"/api/ps answered an unexpected body: {answer!r}")
    return shares_in_gpu_memory(answer)


def check_gpu_residency(base_url: str, min_fraction: float) -> None:
    """Log one line per loaded model not wholly in GPU memory; raise BootError if one has less
    than `min_fraction` of itself there (OLLAMA_MIN_GPU_FRACTION; 0 only warns)."""
    too_little = []
    for name, share in sorted(gpu_shares(base_url).items()):
        if share >= 1:
            continue
        # Capped at 99, so that a model 99.9 % in GPU memory never reads as 100 %.
        percent = f"{min(99, round(share * 100))}%"
        _log(f"{name}: {percent} in GPU memory, the rest on the CPU; replies will be slow")
        if share < min_fraction:
            too_little.append(f"{name} ({percent})")
    if too_little:
        raise BootError(
            f"{', '.join(too_little)} in GPU memory, below OLLAMA_MIN_GPU_FRACTION="
            f"{min_fraction:g}; use a GPU with more memory, a smaller model or num_ctx, "
            "or fewer OLLAMA_NUM_PARALLEL"
        )


def _wait_and_import(
    base_url: str, model: str, timeout_s: float, pid: int | None, cache: CacheSettings | None
) -> None:
    """Wait for Ollama, then create `model` from the model cache when `cache` is given."""
    started = time.monotonic()
    version = wait_for_ollama(base_url, timeout_s, pid=pid)
    _log(f"Ollama {version} answered after {time.monotonic() - started:.2f} s")
    if cache is not None:
        # Only once Ollama answers: `ollama serve` prunes the blobs no manifest names as it
        # starts, a hard link made before included.
        from ollama_worker.model_cache import import_model

        import_model(base_url, model, cache)


def _ready(
    base_url: str,
    model: str,
    *,
    timeout_s: float,
    pid: int | None,
    pull_on_boot: bool,
    min_gpu_fraction: float = 0.0,
    cache: CacheSettings | None = None,
) -> None:
    """The run-mode sequence in one process: wait, import the model from the model cache when
    `cache` says so (HF_MODEL), check (or pull) the model, preload, and check how much of it
    landed in GPU memory."""
    started = time.monotonic()
    _wait_and_import(base_url, model, timeout_s, pid, cache)
    installed = installed_models(base_url)
    if not is_installed(model, installed):
        if not pull_on_boot:
            raise _not_installed(model, installed)
        _log(f"{model} is not installed; pulling it (OLLAMA_PULL_ON_BOOT=1)")
        pull(base_url, model)
        require_model(base_url, model)
    loading = time.monotonic()
    preload(base_url, model)
    _log(
        f"{model} loaded in {time.monotonic() - loading:.2f} s and kept in memory "
        f"(boot {time.monotonic() - started:.2f} s)"
    )
    check_gpu_residency(base_url, min_gpu_fraction)


def _cache_settings(settings: Settings) -> CacheSettings | None:
    """What the model-cache import needs, or None when HF_MODEL is unset (the baked path)."""
    if not settings.hf_model:
        return None
    from ollama_worker.model_cache import CacheSettings

    return CacheSettings(
        hf_model=settings.hf_model,
        hf_model_file=settings.hf_model_file,
        hf_quantization=settings.hf_quantization,
        hub_cache=settings.hf_hub_cache,
        # Read as ollama_boot.sh reads it: its bake builds DEFAULT_MODEL from the same file.
        modelfile=os.environ.get("MODELFILE")
        or str(Path(__file__).resolve().parent.parent / "Modelfile"),
        modelfile_tuning=settings.modelfile_tuning,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ollama_worker.boot",
        description="Boot steps for the local Ollama server (used by ollama_boot.sh).",
    )
    parser.add_argument("--url", help="Ollama base URL (default: from OLLAMA_HOST)")
    commands = parser.add_subparsers(dest="command", required=True)

    wait = commands.add_parser("wait", help="wait until Ollama answers; print its version")
    wait.add_argument("--pid", type=int, help="give up at once if this process dies")
    wait.add_argument("--timeout", type=float, help="seconds (default: OLLAMA_BOOT_TIMEOUT_S)")

    check = commands.add_parser("check", help="fail unless the model is installed")
    check.add_argument("model", nargs="?", help="default: DEFAULT_MODEL")

    among = commands.add_parser(
        "among", help="exit 0 when the model is one of the names (tag and case aside), else 1"
    )
    among.add_argument("model")
    among.add_argument("names", nargs="*")

    pull_cmd = commands.add_parser("pull", help="pull models through the API")
    pull_cmd.add_argument("models", nargs="*", help="default: PULL_MODELS")

    load = commands.add_parser("preload", help="load the model and keep it loaded")
    load.add_argument("model", nargs="?", help="default: DEFAULT_MODEL")
    load.add_argument("--timeout", type=float, default=PRELOAD_TIMEOUT_S)

    imports = commands.add_parser(
        "import", help="wait, then create DEFAULT_MODEL from the model cache's HF_MODEL"
    )
    imports.add_argument("--pid", type=int, help="give up at once if this process dies")
    imports.add_argument("--timeout", type=float, help="seconds (default: OLLAMA_BOOT_TIMEOUT_S)")

    ready = commands.add_parser(
        "ready",
        help="wait, import from the model cache if HF_MODEL is set, check (pull if "
        "OLLAMA_PULL_ON_BOOT=1) and preload DEFAULT_MODEL",
    )
    ready.add_argument("--pid", type=int, help="give up at once if this process dies")
    ready.add_argument("--timeout", type=float, help="seconds (default: OLLAMA_BOOT_TIMEOUT_S)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point for `ollama_boot.sh`; returns the exit status (0 ok, 1 failed)."""
    args = _parser().parse_args(argv)
    # Imported here so the module itself stays free of side effects for library callers.
    from ollama_worker.config import ConfigError, get_settings

    try:
        settings = get_settings()
        base_url = args.url or settings.ollama_url
        if args.command == "wait":
            timeout_s = settings.boot_timeout_s if args.timeout is None else args.timeout
            print(wait_for_ollama(base_url, timeout_s, pid=args.pid), flush=True)
        elif args.command == "check":
            model = args.model or settings.default_model
            require_model(base_url, model)
            _log(f"{model} is installed")
        elif args.command == "among":
            return 0 if is_installed(args.model, args.names) else 1
        elif args.command == "pull":
            for model in args.models or settings.pull_models:
                pull(base_url, model)
        elif args.command == "preload":
            preload(base_url, args.model or settings.default_model, timeout_s=args.timeout)
        elif args.command == "import":
            cache = _cache_settings(settings)
            if cache is None:
                raise BootError("HF_MODEL is not set: there is nothing to import")
            timeout_s = settings.boot_timeout_s if args.timeout is None else args.timeout
            _wait_and_import(base_url, settings.default_model, timeout_s, args.pid, cache)
        elif args.command == "ready":
            timeout_s = settings.boot_timeout_s if args.timeout is None else args.timeout
            _ready(
                base_url,
                settings.default_model,
                timeout_s=timeout_s,
                pid=args.pid,
                pull_on_boot=settings.pull_on_boot,
                min_gpu_fraction=settings.min_gpu_fraction,
                cache=_cache_settings(settings),
            )
    except (BootError, ConfigError) as exc:
        _log(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    # `python -m` runs this file as __main__; the model cache imports it as ollama_worker.boot,
    # which must be this very module, so that its BootError is the one main() catches.
    sys.modules.setdefault("ollama_worker.boot", sys.modules[__name__])
    sys.exit(main())
