"""The model cache (ollama_worker/model_cache.py): a GGUF that RunPod downloaded into the Hugging
Face hub cache, imported by the boot into the REAL Ollama and served as DEFAULT_MODEL.

The cache is laid out as Hugging Face (and so RunPod) lays it out: `models--<org>--<name>/` with
`blobs/` named by content digest, `refs/main`, and `snapshots/<revision>/` whose files are
symlinks into `blobs/`. Its model is the real Gemma 3 270M Q4_K_M GGUF. What the layout holds
beside it, and why:

- an older snapshot whose Q4_K_M file is junk: the boot must take the newest snapshot;
- `mmproj-gemma-3-270m-Q4_K_M.gguf`, junk too: a projector must never be taken for the model;
- `gemma-3-270m-Q8_0.gguf`: a second quantization. It is the SAME bytes as the Q4_K_M file under
  another name (no real Q8_0 ships here); the tests tell the two apart by name only.

The tests with the real Ollama skip (one line says why) when `make ollama` has not provided it,
and fail instead under CI=true.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ollama_worker import model_cache
from ollama_worker.boot import BootError
from scripts.real_ollama import RealOllama
from standins.runpod import FakeRunPod
from tests.harness import ROOT, DeployedWorker
from tests.hf_cache import NEW_REVISION, OLD_REVISION, Cache, make_cache
from tests.real_ollama import (
    MODEL,
    RealOllamaServer,
    real_boot_env,
    real_ollama_with_model,
    require_real_ollama,
)

REPO = "Google/Gemma-3-270M-GGUF"  # the canonical casing, as RunPod stores it
Q4 = "gemma-3-270m-Q4_K_M.gguf"
Q8 = "gemma-3-270m-Q8_0.gguf"
MMPROJ = "mmproj-gemma-3-270m-Q4_K_M.gguf"
# Generous hang guards; the bench measures speed.
BOOT_TIMEOUT_S = 120.0
# Settings of the model cache that the tests set themselves, never inherit.
CACHE_VARIABLES = (
    "HF_MODEL",
    "HF_MODEL_FILE",
    "HF_QUANTIZATION",
    "HF_HUB_CACHE",
    "MODELFILE",
    "MODELFILE_TUNING",
    "DEFAULT_MODEL",
)
MODELFILE_SYSTEM = (ROOT / "Modelfile").read_text().split('SYSTEM """', 1)[1].split('"""', 1)[0]


# ---------------------------------------------------------------------------------------------
# The real Ollama and a Hugging Face cache laid out around the real GGUF


@pytest.fixture(scope="module")
def real() -> RealOllama:
    """The real Ollama binary and GGUF; a skip saying why (a failure under CI) when absent."""
    return require_real_ollama()


@pytest.fixture(scope="module")
def real_digest(real: RealOllama) -> str:
    return model_cache.sha256_of([real.gguf])


@pytest.fixture
def cache(tmp_path: Path, real: RealOllama) -> Cache:
    """The layout the module docstring describes, the old snapshot older by an hour."""
    made = make_cache(tmp_path / "hub", REPO)
    made.add(OLD_REVISION, Q4, b"GGUF junk of an older revision")
    made.add(OLD_REVISION, "README.md", b"# old\n")
    made.add(NEW_REVISION, Q4, real.gguf)
    made.add(NEW_REVISION, Q8, real.gguf)
    made.add(NEW_REVISION, MMPROJ, b"GGUF a projector, never the model")
    made.add(NEW_REVISION, "README.md", b"# Gemma 3 270M GGUF\n")
    old = made.repo_dir / "snapshots" / OLD_REVISION
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    return made


def serve(real: RealOllama, models: Path) -> RealOllamaServer:
    return RealOllamaServer(real, models, {"OLLAMA_NUM_PARALLEL": "1"})


@pytest.fixture
def server(tmp_path: Path, real: RealOllama) -> Iterator[RealOllamaServer]:
    """The real Ollama with an empty model store on the cache's filesystem."""
    with serve(real, tmp_path / "models") as running:
        yield running


def boot_ready(server: RealOllamaServer, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m ollama_worker.boot ready` as ollama_boot.sh runs it, on `server`'s store."""
    inherited = {k: v for k, v in server.env().items() if k not in CACHE_VARIABLES}
    return subprocess.run(
        [sys.executable, "-m", "ollama_worker.boot", "ready"],
        cwd=ROOT,
        env={**inherited, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=BOOT_TIMEOUT_S,
    )


def chat(server: RealOllamaServer) -> dict[str, Any]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello."}],
        "stream": False,
        "options": {"num_predict": 4, "temperature": 0},
    }
    return dict(server.api("POST", "/api/chat", body))


def show(server: RealOllamaServer) -> dict[str, Any]:
    return dict(server.api("POST", "/api/show", {"model": MODEL}))


def size_of(real: RealOllama) -> str:
    return model_cache.human_size(real.gguf.stat().st_size)


def cache_env(cache: Cache, **extra: str) -> dict[str, str]:
    return {"HF_MODEL": REPO.lower(), "HF_HUB_CACHE": str(cache.root), **extra}


def boot_lines(done: subprocess.CompletedProcess[str]) -> str:
    return done.stderr + done.stdout


def parameters(shown: dict[str, Any]) -> dict[str, list[str]]:
    """`/api/show`'s parameters text as {key: [values]}."""
    found: dict[str, list[str]] = {}
    for line in str(shown.get("parameters", "")).splitlines():
        key, _, value = line.strip().partition(" ")
        found.setdefault(key, []).append(value.strip().strip('"'))
    return found


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `path`: another filesystem, with little room. Needs root."""
    path.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


# ---------------------------------------------------------------------------------------------
# The whole worker: ollama_boot.sh, the real Ollama, the SDK's production loop


def deployed(fake_runpod: FakeRunPod, real: RealOllama, models: Path, **env: str) -> DeployedWorker:
    """The worker through ollama_boot.sh, which starts the real `ollama serve` on `models`."""
    boot_env = real_boot_env(serve(real, models))
    worker_env = {**boot_env, "OLLAMA_NUM_PARALLEL": "1", "MAX_CONCURRENCY": "1", **env}
    return DeployedWorker(
        fake_runpod,
        worker_env,
        boot=True,
        unset=CACHE_VARIABLES,
        startup_timeout_s=BOOT_TIMEOUT_S,
    )


def chat_job(worker: DeployedWorker) -> dict[str, Any]:
    record = worker.run({"prompt": "Say hello.", "max_tokens": 4, "temperature": 0}, timeout=120)
    assert record.status == "COMPLETED", (record, worker.log()[-3000:])
    (item,) = record.output
    assert item["model"] == MODEL
    assert isinstance(item["message"]["content"], str)
    assert item["usage"]["completion_tokens"] >= 1
    return dict(item)


@pytest.mark.real
def test_the_worker_serves_the_cached_gguf_by_hard_link_and_remembers_its_digest(
    fake_runpod: FakeRunPod,
    real: RealOllama,
    real_digest: str,
    cache: Cache,
    tmp_path: Path,
) -> None:
    # First boot of the host: the digest is computed, the GGUF linked, the model created.
    first_store = tmp_path / "first" / "models"
    with deployed(fake_runpod, real, first_store, **cache_env(cache)) as worker:
        chat_job(worker)
        log = worker.log()
        shown = httpx.post(
            f"{worker.ollama_url}/api/show", json={"model": "voice-assistant"}
        ).json()
    assert f"{Q4} ({size_of(real)}), by the default Q4_K_M" in log, log
    assert f"revision {NEW_REVISION[:12]}" in log
    assert f"skipped the projector(s) {MMPROJ}" in log
    assert "(hard link, hashed in" in log
    # This base GGUF carries no chat template: the boot says what that means and what to do.
    assert f"{Q4} has no chat template Ollama knows" in log
    blob = first_store / "blobs" / f"sha256-{real_digest}"
    source = (cache.snapshot / Q4).resolve()
    assert (blob.stat().st_ino, blob.stat().st_dev) == (source.stat().st_ino, source.stat().st_dev)
    assert source.stat().st_nlink >= 3  # HF's blob, the Q8 name's target, Ollama's blob
    # Our tuning on top of the GGUF's weights.
    assert shown["system"] == MODELFILE_SYSTEM
    params = parameters(shown)
    assert params["num_ctx"] == ["8192"]
    assert params["temperature"] == ["0.6"]
    assert params["stop"] == ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    assert shown["details"]["family"] == "gemma3"
    assert shown["details"]["quantization_level"] == "Q4_K_M"

    # A second worker on the same host (the same cache, a fresh container disk): no hashing.
    second_store = tmp_path / "second" / "models"
    with deployed(fake_runpod, real, second_store, **cache_env(cache)) as worker:
        chat_job(worker)
        log = worker.log()
    assert "(hard link, digest remembered from an earlier boot)" in log, log
    assert (second_store / "blobs" / f"sha256-{real_digest}").stat().st_ino == source.stat().st_ino


@pytest.mark.real
def test_hf_model_wins_over_a_baked_model_of_the_same_name(
    fake_runpod: FakeRunPod, real: RealOllama, cache: Cache, tmp_path: Path
) -> None:
    # An image's store, baked as `ollama_boot.sh bake` bakes it: voice-assistant from our
    # Modelfile (the real tier's: FROM swapped for the GGUF, gemma3's template added).
    store = tmp_path / "models"
    with real_ollama_with_model(store, preload=False) as baked:
        assert show(baked)["system"] == MODELFILE_SYSTEM
    env = cache_env(cache, MODELFILE_TUNING="off")
    with deployed(fake_runpod, real, store, **env) as worker:
        chat_job(worker)
        shown = httpx.post(f"{worker.ollama_url}/api/show", json={"model": MODEL}).json()
        log = worker.log()
    assert "imported gemma-3-270m-Q4_K_M.gguf as voice-assistant as it is" in log, log
    assert not shown.get("system")  # the cached GGUF as it is, not the baked model
    assert shown["template"] == model_cache.RAW_PROMPT_TEMPLATE


@pytest.mark.real
def test_a_repository_missing_from_the_cache_stops_the_worker(
    fake_runpod: FakeRunPod, real: RealOllama, cache: Cache, tmp_path: Path
) -> None:
    env = cache_env(cache, HF_MODEL="bartowski/Qwen2.5-7B-Instruct-GGUF")
    worker = deployed(fake_runpod, real, tmp_path / "models", **env)
    try:
        worker.launch()
        assert worker.wait_exit(timeout=BOOT_TIMEOUT_S) == 1
        log = worker.log()
    finally:
        worker.stop()
    assert (
        f"HF_MODEL bartowski/Qwen2.5-7B-Instruct-GGUF is not in the model cache at {cache.root} "
        f"(it holds: {REPO})"
    ) in log, log
    assert "started the handler" not in log  # no job was ever taken


# ---------------------------------------------------------------------------------------------
# The boot's import step against the real Ollama


@pytest.mark.real
def test_a_quantization_served_as_it_is(
    server: RealOllamaServer, cache: Cache, real: RealOllama
) -> None:
    done = boot_ready(server, **cache_env(cache, HF_QUANTIZATION="q8_0", MODELFILE_TUNING="off"))
    assert done.returncode == 0, boot_lines(done)
    assert f"{Q8} ({size_of(real)}), by HF_QUANTIZATION=q8_0" in done.stderr
    assert "as it is (MODELFILE_TUNING=off)" in done.stderr
    shown = show(server)
    assert not shown.get("system")
    assert "num_ctx" not in parameters(shown)
    assert chat(server)["done"] is True


@pytest.mark.real
def test_the_modelfile_template_and_stops_win_and_a_baked_model_is_replaced(
    server: RealOllamaServer, cache: Cache, real: RealOllama, tmp_path: Path
) -> None:
    # "Baked": the image's voice-assistant, made the way `ollama_boot.sh bake` makes it.
    server.create(MODEL, f'FROM {real.gguf}\nSYSTEM """I am the baked model."""\n')
    assert show(server)["system"] == "I am the baked model."
    own = tmp_path / "Own.modelfile"
    template = "<start_of_turn>user\n{{ .Prompt }}<end_of_turn>\n<start_of_turn>model\n"
    own.write_text(
        "FROM llama3.1:8b\n"
        f'TEMPLATE """{template}"""\n'
        'SYSTEM "Answer in one word."\n'
        "PARAMETER num_predict 12\n"
        'PARAMETER stop "<end_of_turn>"\n'
    )
    done = boot_ready(server, **cache_env(cache, MODELFILE=str(own)))
    assert done.returncode == 0, boot_lines(done)
    assert "has no chat template" not in done.stderr
    shown = show(server)
    assert shown["system"] == "Answer in one word."
    assert shown["template"] == template
    assert parameters(shown) == {"num_predict": ["12"], "stop": ["<end_of_turn>"]}
    assert chat(server)["done"] is True


@pytest.mark.real
def test_a_split_gguf_is_joined_into_the_original_file(
    server: RealOllamaServer, real: RealOllama, real_digest: str, tmp_path: Path
) -> None:
    shards = split_gguf(real.gguf, tmp_path / "shards", "gemma-3-270m-Q4_K_M")
    made = make_cache(tmp_path / "hub", REPO)
    for shard in shards:
        made.add(NEW_REVISION, f"Q4_K_M/{shard.name}", shard)
    made.add(NEW_REVISION, MMPROJ, b"GGUF a projector, never the model")
    done = boot_ready(server, **cache_env(made))
    assert done.returncode == 0, boot_lines(done)
    assert f"Q4_K_M/gemma-3-270m-Q4_K_M-*-of-00002.gguf ({size_of(real)})" in done.stderr
    assert "(joined copy, hashed in" in done.stderr
    # Joined exactly as the file was before the split: byte for byte the same digest.
    assert (server.models_dir / "blobs" / f"sha256-{real_digest}").is_file()
    assert chat(server)["done"] is True
    again = boot_ready(server, **cache_env(made))
    assert "(already there, digest remembered from an earlier boot)" in again.stderr, again.stderr


@pytest.mark.real
def test_ollama_itself_cannot_serve_the_shards_as_they_are(
    server: RealOllamaServer, real: RealOllama, tmp_path: Path
) -> None:
    """Why the boot joins shards: Ollama 0.12.10 takes them in /api/create, as two model
    layers (from a map, in no set order), but a model keeps one model path, and the loader
    refuses a lone shard: the second ("illegal split file idx: 1", "unable to load model"),
    or the first, on which the runner dies ("do load request: ... EOF")."""
    files = {}
    for shard in split_gguf(real.gguf, tmp_path / "shards", "gemma-3-270m-Q4_K_M"):
        digest = model_cache.sha256_of([shard])
        os.link(shard, server.models_dir / "blobs" / f"sha256-{digest}")
        files[shard.name] = f"sha256:{digest}"
    server.api("POST", "/api/create", {"model": "raw-shards", "files": files, "stream": False})
    body = {"model": "raw-shards", "messages": [{"role": "user", "content": "Hi"}], "stream": False}
    answer = httpx.post(f"{server.url}/api/chat", json=body, timeout=120)
    assert answer.status_code == 500, answer.text
    assert answer.json()["error"]


@pytest.mark.real
def test_a_file_missing_from_the_snapshot_stops_the_boot(
    server: RealOllamaServer, cache: Cache, real: RealOllama
) -> None:
    done = boot_ready(server, **cache_env(cache, HF_MODEL_FILE="gemma-3-270m-Q6_K.gguf"))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"boot: HF_MODEL_FILE=gemma-3-270m-Q6_K.gguf is not in the snapshot (it holds: "
        f"{Q4} ({size_of(real)}), {Q8} ({size_of(real)}))"
    )
    missing_quant = boot_ready(server, **cache_env(cache, HF_QUANTIZATION="IQ2_XS"))
    assert missing_quant.returncode == 1
    assert "no GGUF of quantization IQ2_XS in the snapshot (it holds:" in missing_quant.stderr


@pytest.mark.real
def test_too_little_disk_fails_fast_before_writing(
    real: RealOllama, cache: Cache, tmp_path: Path
) -> None:
    with contextlib.ExitStack() as stack:
        small = stack.enter_context(tmpfs(tmp_path / "small", "50m"))
        server = stack.enter_context(serve(real, small / "models"))
        started = time.monotonic()
        done = boot_ready(server, **cache_env(cache))
        took = time.monotonic() - started
        left = sorted(path.name for path in (small / "models" / "blobs").iterdir())
    assert done.returncode == 1, boot_lines(done)
    size = real.gguf.stat().st_size
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"boot: too little disk to copy {Q4} into Ollama's store at {small / 'models' / 'blobs'}: "
        f"needs {model_cache.human_size(size + model_cache.SPACE_MARGIN_BYTES)} "
        f"({size_of(real)} and a margin of 67.1 MB), "
    ), last
    assert last.endswith(
        " MB available; give the container more disk, or put OLLAMA_MODELS on the cache's "
        "filesystem so the GGUF is hard-linked"
    ), last
    assert left == []  # nothing was written
    assert took < 30  # a hang guard: no copy was attempted


@pytest.mark.real
def test_another_filesystem_gets_a_copy(
    real: RealOllama, real_digest: str, cache: Cache, tmp_path: Path
) -> None:
    with contextlib.ExitStack() as stack:
        disk = stack.enter_context(tmpfs(tmp_path / "disk", "700m"))
        server = stack.enter_context(serve(real, disk / "models"))
        done = boot_ready(server, **cache_env(cache))
        assert done.returncode == 0, boot_lines(done)
        assert "(copy, hashed in" in done.stderr
        blob = disk / "models" / "blobs" / f"sha256-{real_digest}"
        assert blob.stat().st_dev != real.gguf.stat().st_dev
        assert chat(server)["done"] is True
        again = boot_ready(server, **cache_env(cache))
        assert "(already there, digest remembered from an earlier boot)" in again.stderr
        # A new worker's fresh store on that disk: a plain copy, the digest already known.
        fresh = stack.enter_context(serve(real, disk / "fresh-models"))
        third = boot_ready(fresh, **cache_env(cache))
        assert "(copy, digest remembered from an earlier boot)" in third.stderr, third.stderr
        copied = disk / "fresh-models" / "blobs" / f"sha256-{real_digest}"
        assert model_cache.sha256_of([copied]) == real_digest
        assert chat(fresh)["done"] is True


# ---------------------------------------------------------------------------------------------
# A split GGUF, made the way llama.cpp's gguf-split makes one


def _kv(key: str, kind: int, payload: bytes) -> bytes:
    raw = key.encode()
    return struct.pack("<Q", len(raw)) + raw + struct.pack("<I", kind) + payload


def split_gguf(source: Path, folder: Path, prefix: str) -> list[Path]:
    """Two shards of `source`: the split.* keys first and every other key in the first shard,
    half the tensors in each, each shard's data aligned as in the original."""
    with source.open("rb") as stream:
        header = model_cache.read_gguf_header(stream, source.name)
    alignment = 32
    half = len(header.tensors) // 2
    cut = header.tensors[half][1]
    count = len(header.tensors)
    folder.mkdir(parents=True)
    paths = []
    with source.open("rb") as original:
        for index, (tensors, kvs, start, end) in enumerate(
            [
                (header.tensors[:half], [raw for _, _, raw in header.kvs], 0, cut),
                (header.tensors[half:], [], cut, None),
            ]
        ):
            split_kvs = [
                _kv("split.no", 2, struct.pack("<H", index)),
                _kv("split.count", 2, struct.pack("<H", 2)),
                _kv("split.tensors.count", 5, struct.pack("<i", count)),
            ]
            infos = [info + struct.pack("<Q", offset - start) for info, offset in tensors]
            head = struct.pack("<4sIQQ", b"GGUF", header.version, len(tensors), len(kvs) + 3)
            head += b"".join(split_kvs + kvs + infos)
            path = folder / f"{prefix}-{index + 1:05d}-of-00002.gguf"
            original.seek(header.data_start + start)
            data = original.read() if end is None else original.read(end - start)
            path.write_bytes(head + b"\0" * (-len(head) % alignment) + data)
            paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# The pure parts, on tiny fake files


def sizes_of(models: dict[str, list[str]], size: dict[str, int]) -> dict[str, int]:
    return {name: sum(size[part] for part in parts) for name, parts in models.items()}


def test_group_models_joins_shards_and_skips_projectors() -> None:
    files = [
        "Q4_K_M/m-Q4_K_M-00002-of-00002.gguf",
        "Q4_K_M/m-Q4_K_M-00001-of-00002.gguf",
        "m-Q8_0.gguf",
        "mmproj-m-f16.gguf",
        "MMPROJ-other.gguf",
    ]
    models, skipped = model_cache.group_models(files)
    assert models == {
        "Q4_K_M/m-Q4_K_M-*-of-00002.gguf": [
            "Q4_K_M/m-Q4_K_M-00001-of-00002.gguf",
            "Q4_K_M/m-Q4_K_M-00002-of-00002.gguf",
        ],
        "m-Q8_0.gguf": ["m-Q8_0.gguf"],
    }
    assert skipped == ["mmproj-m-f16.gguf", "MMPROJ-other.gguf"]
    with pytest.raises(BootError, match=r"m-\*-of-00003.gguf lacks part\(s\) 2, 3"):
        model_cache.group_models(["m-00001-of-00003.gguf"])


FILES = {"m-Q2_K.gguf": 30, "m-Q4_K_M.gguf": 50, "m-Q4_K_S.gguf": 45, "m-UD-IQ1_S.gguf": 20}


def choose(**kwargs: str) -> tuple[str, str]:
    models, _ = model_cache.group_models(FILES)
    return model_cache.choose(models, sizes_of(models, FILES), **kwargs)


def test_choose_defaults_to_q4_k_m_and_matches_whole_tags() -> None:
    assert choose() == ("m-Q4_K_M.gguf", "the default Q4_K_M")
    assert choose(quantization="q4_k_s") == ("m-Q4_K_S.gguf", "HF_QUANTIZATION=q4_k_s")
    assert choose(quantization="IQ1_S")[0] == "m-UD-IQ1_S.gguf"
    with pytest.raises(BootError, match=r"no GGUF of quantization Q4 in the snapshot"):
        choose(quantization="Q4")  # Q4 is not Q4_K_M
    assert choose(model_file="m-Q2_K.gguf") == ("m-Q2_K.gguf", "HF_MODEL_FILE=m-Q2_K.gguf")


def test_choose_without_q4_k_m_takes_the_smallest_and_says_so() -> None:
    files = {"m-Q8_0.gguf": 80, "m-Q5_K_M.gguf": 55}
    models, _ = model_cache.group_models(files)
    name, reason = model_cache.choose(models, sizes_of(models, files))
    assert name == "m-Q5_K_M.gguf"
    assert reason == (
        "the smallest GGUF, since none is Q4_K_M "
        "(it holds: m-Q5_K_M.gguf (55 B), m-Q8_0.gguf (80 B))"
    )


def test_choose_refuses_an_ambiguous_quantization_and_names_a_shard_set_by_any_part() -> None:
    files = {"a-Q4_K_M.gguf": 1, "b-Q4_K_M.gguf": 2}
    models, _ = model_cache.group_models(files)
    with pytest.raises(BootError, match=r"2 files match the quantization Q4_K_M: .*HF_MODEL_FILE"):
        model_cache.choose(models, sizes_of(models, files))
    shards = {"m-00001-of-00002.gguf": 1, "m-00002-of-00002.gguf": 1}
    models, _ = model_cache.group_models(shards)
    chosen = model_cache.choose(
        models, sizes_of(models, shards), model_file="m-00002-of-00002.gguf"
    )
    assert chosen[0] == "m-*-of-00002.gguf"


@pytest.mark.parametrize(
    ("written", "repo", "tag"),
    [
        ("unsloth/Qwen3-8B-GGUF", "unsloth/Qwen3-8B-GGUF", ""),
        ("hf.co/unsloth/Qwen3-8B-GGUF:Q8_0", "unsloth/Qwen3-8B-GGUF", "Q8_0"),
        ("https://huggingface.co/unsloth/Qwen3-8B-GGUF/tree/main", "unsloth/Qwen3-8B-GGUF", ""),
    ],
)
def test_parse_repo_id(written: str, repo: str, tag: str) -> None:
    assert model_cache.parse_repo_id(written) == (repo, tag)


def test_parse_repo_id_refuses_what_is_not_a_repository() -> None:
    with pytest.raises(BootError, match="is not a Hugging Face repository id"):
        model_cache.parse_repo_id("llama3.1:8b")


def test_locate_takes_the_newest_snapshot_matching_any_case(tmp_path: Path) -> None:
    made = make_cache(tmp_path / "hub", REPO)
    made.add(OLD_REVISION, Q4, b"old")
    made.add(NEW_REVISION, Q4, b"new")
    made.add(NEW_REVISION, MMPROJ, b"projector")
    old = made.repo_dir / "snapshots" / OLD_REVISION
    os.utime(old, (time.time() - 60, time.time() - 60))
    choice, line = model_cache.locate(
        model_cache.CacheSettings(hf_model=REPO.upper(), hub_cache=str(made.root))
    )
    assert choice.files == (made.snapshot / Q4,)
    assert choice.files[0].read_bytes() == b"new"
    assert line == (
        f"{REPO} revision {NEW_REVISION[:12]}: {Q4} (3 B), by the default Q4_K_M; "
        f"skipped the projector(s) {MMPROJ}"
    )


def test_locate_names_what_the_cache_holds(tmp_path: Path) -> None:
    made = make_cache(tmp_path / "hub", REPO)
    made.add(NEW_REVISION, "README.md", b"no gguf")
    settings = model_cache.CacheSettings(hf_model="org/absent", hub_cache=str(made.root))
    with pytest.raises(BootError, match=rf"not in the model cache at .* \(it holds: {REPO}\)"):
        model_cache.locate(settings)
    settings = model_cache.CacheSettings(hf_model=REPO, hub_cache=str(made.root))
    with pytest.raises(BootError, match=r"holds no GGUF model at .* \(it holds: README.md\)"):
        model_cache.locate(settings)
    settings = model_cache.CacheSettings(hf_model=REPO, hub_cache=str(tmp_path / "none"))
    with pytest.raises(BootError, match=r"which does not exist, \(it holds: no model repository"):
        model_cache.locate(settings)


def test_the_remembered_digest_is_keyed_by_path_size_and_mtime(tmp_path: Path) -> None:
    made = make_cache(tmp_path / "hub", REPO)
    link = made.add(NEW_REVISION, Q4, b"weights")
    files = (link,)
    assert model_cache.remembered_digest(files) is None
    digest = model_cache.sha256_of(files)
    memo = model_cache.remember_digest(files, digest)
    assert memo == link.resolve().parent / f".{link.resolve().name}.ollama-digest.json"
    assert model_cache.remembered_digest(files) == digest
    os.utime(link.resolve(), ns=(0, 123))  # touched: the memo no longer holds
    assert model_cache.remembered_digest(files) is None


def test_a_garbled_memo_is_ignored_and_a_dangling_link_is_no_file(tmp_path: Path) -> None:
    made = make_cache(tmp_path / "hub", REPO)
    link = made.add(NEW_REVISION, Q4, b"weights")
    memo = model_cache.memo_paths((link,))[0]
    memo.write_text("[1, 2]")
    assert model_cache.remembered_digest((link,)) is None
    link.resolve().unlink()  # the blob went missing: an unfinished download
    assert model_cache.gguf_files(made.snapshot) == []


def test_parse_modelfile_reads_ours() -> None:
    parsed = model_cache.parse_modelfile((ROOT / "Modelfile").read_text())
    assert parsed.system == MODELFILE_SYSTEM
    assert parsed.template is None
    assert parsed.parameters["num_ctx"] == ["8192"]
    assert parsed.parameters["stop"] == ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    body = model_cache.create_request("m", "model.gguf", "0" * 64, parsed, ["<end_of_turn>"])
    assert body["files"] == {"model.gguf": "sha256:" + "0" * 64}
    assert body["parameters"]["num_ctx"] == 8192
    assert body["parameters"]["temperature"] == 0.6
    # The GGUF template's stops are kept beside the Modelfile's, which were written for llama.
    assert body["parameters"]["stop"] == [
        "<end_of_turn>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ]
    assert model_cache.create_request("m", "model.gguf", "0" * 64, None, []) == {
        "model": "m",
        "files": {"model.gguf": "sha256:" + "0" * 64},
        "stream": True,
    }


def test_parse_modelfile_refuses_an_unclosed_block() -> None:
    with pytest.raises(BootError, match='SYSTEM opens """ and never closes it'):
        model_cache.parse_modelfile('FROM x\nSYSTEM """never closed\n')


def test_join_of_a_split_file_is_the_original(tmp_path: Path) -> None:
    """A tiny synthetic GGUF: two tensors, split in two and joined back byte for byte."""
    kvs = [_kv("general.architecture", 8, struct.pack("<Q", 4) + b"test")]
    infos = []
    for index, offset in enumerate((0, 32)):
        name = f"t{index}".encode()
        infos.append(struct.pack("<Q", len(name)) + name + struct.pack("<IQIQ", 1, 8, 0, offset))
    head = struct.pack("<4sIQQ", b"GGUF", 3, 2, 1) + b"".join(kvs + infos)
    data = bytes(range(32)) + bytes(range(100, 132))
    original = tmp_path / "m.gguf"
    original.write_bytes(head + b"\0" * (-len(head) % 32) + data)
    shards = split_gguf(original, tmp_path / "shards", "m")
    joined = tmp_path / "joined.gguf"
    with joined.open("wb") as out:
        model_cache.join_shards(tuple(shards), out.write)
    assert joined.read_bytes() == original.read_bytes()


def test_model_cache_imports_only_the_standard_library() -> None:
    code = (
        "import sys; before = set(sys.modules); import ollama_worker.model_cache;"
        "mods = {m.split('.')[0] for m in set(sys.modules) - before};"
        "print(sorted(mods - set(sys.stdlib_module_names) - {'ollama_worker'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout.replace("'", '"')) == []


def test_a_bake_with_pull_models_none_bakes_nothing(tmp_path: Path) -> None:
    """The image for the model cache: no model, no Ollama started (none is on PATH here)."""
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHON": sys.executable,
        "PULL_MODELS": "none",
        "OLLAMA_MODELS": str(tmp_path / "models"),
    }
    done = subprocess.run(
        [str(ROOT / "ollama_boot.sh"), "bake"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == (
        "ollama_boot: PULL_MODELS=none: nothing baked; the worker serves HF_MODEL from the "
        "model cache\n"
    )
    assert not (tmp_path / "models").exists()
