"""Cold start with the model cache: `ollama_boot.sh` to the first answered job with HF_MODEL set
(the first boot on a host, then a worker booting again on the same cache), beside the same
model baked into the model store, all with the real Ollama and the real Gemma 3 270M GGUF."""

from __future__ import annotations

import re
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.cold_start import _boot_env, time_boot
from bench.common import BenchError, Figure, progress
from scripts import real_ollama
from tests.harness import free_port
from tests.hf_cache import NEW_REVISION, make_cache
from tests.real_ollama import RealOllamaServer, real_boot_env

REPO = "Google/Gemma-3-270M-GGUF"
GGUF_NAME = "gemma-3-270m-Q4_K_M.gguf"
JOB = {"prompt": "Say hello.", "max_tokens": 8, "temperature": 0}
TIMEOUT_S = 180.0
# What a cached model may add to a baked one's cold start on a host that imported it before:
# the import itself (a hard link and two creates, ~0.2 s here), with room for a shared machine.
SLACK_S = 1.0
_IMPORT_LINE = re.compile(r"model cache: imported .* in (\d+\.\d+) s \(([^,]+), ([^)]+)\)")


def _boot(
    real: real_ollama.RealOllama, base: Path, models: Path, extra: dict[str, str]
) -> dict[str, Any]:
    """One cold start in `base`: the marks of time_boot and what the boot log says."""
    base.mkdir(parents=True)
    port = free_port()
    # Not started: its HOME and store, for the `ollama serve` that ollama_boot.sh starts.
    server = RealOllamaServer(real, models)
    env = {
        **_boot_env(models, port),
        **real_boot_env(server),
        "OLLAMA_NUM_PARALLEL": "1",
        "OLLAMA_BOOT_TIMEOUT_S": str(TIMEOUT_S),
        "MAX_CONCURRENCY": "1",
        **extra,
    }
    marks: dict[str, Any] = dict(time_boot(env, base, port, JOB, timeout_s=TIMEOUT_S))
    log = "\n".join(path.read_text(errors="replace") for path in base.glob("boot-*.log"))
    found = _IMPORT_LINE.search(log)
    if "HF_MODEL" in extra:
        if not found:
            raise BenchError(f"the boot logged no import line:\n{log[-3000:]}")
        marks.update(import_s=float(found[1]), placed=found[2], digest=found[3])
    return marks


def measure(*, boots: int) -> tuple[dict[str, Any], list[Figure]]:
    """The first boot once, then `boots` rounds of (a second boot, the baked model), each on
    a fresh model store but the same cache, as workers starting one after another on a host."""
    real = real_ollama.locate()
    if real is None:
        raise BenchError("the real Ollama is not provided: run `make ollama` first")
    with tempfile.TemporaryDirectory(prefix="bench-model-cache-") as tmp:
        root = Path(tmp)
        cache = make_cache(root / "hub", REPO)
        cache.add(NEW_REVISION, GGUF_NAME, real.gguf)
        hf = {"HF_MODEL": REPO, "HF_HUB_CACHE": str(cache.root)}
        baked_store = root / "first" / "models"
        first = _boot(real, root / "first", baked_store, hf)
        progress(f"model cache: first boot {first}")
        seconds, baked = [], []
        for index in range(boots):
            run = root / f"round-{index}"
            seconds.append(_boot(real, run / "second", run / "second" / "models", hf))
            # The first boot's store now holds voice-assistant made from the GGUF with our
            # Modelfile, as a baked image's does: booted without HF_MODEL, it is the baked path.
            baked.append(_boot(real, run / "baked", baked_store, {}))
            progress(f"model cache {index + 1}/{boots}: {seconds[-1]} | baked {baked[-1]}")
    baked_s = round(statistics.median(run["first_answer_s"] for run in baked), 3)
    second_s = round(statistics.median(run["first_answer_s"] for run in seconds), 3)
    details = {
        "model": f"{REPO} {GGUF_NAME} ({real.gguf.stat().st_size} bytes), Ollama {real.version}",
        "job": JOB,
        "first_boot": first,
        "second_boots": seconds,
        "baked_boots": baked,
    }
    figures = [
        Figure(
            "model_cache.baked_first_answer_s", "Baked model: boot to first answer", baked_s, "s"
        ),
        Figure(
            "model_cache.first_boot_first_answer_s",
            "HF_MODEL, first boot on a host: boot to first answer "
            f"(import {first['import_s']:.2f} s: {first['placed']}, {first['digest']})",
            first["first_answer_s"],
            "s",
        ),
        Figure(
            "model_cache.second_boot_first_answer_s",
            "HF_MODEL, a later boot on the same cache: boot to first answer",
            second_s,
            "s",
            f"<= {baked_s + SLACK_S:.2f} s (baked + {SLACK_S:g} s)",
            second_s <= baked_s + SLACK_S,
        ),
    ]
    return details, figures
