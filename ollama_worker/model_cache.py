"""Serve a GGUF from RunPod's model cache: find it, put it in Ollama's blob store, create the model.

RunPod downloads the endpoint's Model (a Hugging Face repository) before the worker starts, in
Hugging Face's hub layout: ``<cache>/models--<org>--<name>/snapshots/<revision>/<files>``, the
files usually symlinks into ``../../blobs/``. At boot, once Ollama answers, `import_model`
picks the GGUF (HF_MODEL_FILE, else HF_QUANTIZATION, default Q4_K_M, else the smallest), gives
it to Ollama without copying it where it can (a hard link into ``OLLAMA_MODELS/blobs``, which
``/api/create`` with ``files`` then uses as it is), and creates DEFAULT_MODEL from it with the
Modelfile's SYSTEM and PARAMETERs on top. Nothing here touches the network but the local Ollama.

Standard library only: this runs on the cold-start path, before the handler's dependencies load.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ollama_worker.boot import BootError, _call_json, _log, _stream_json

RUNPOD_HUB_CACHE = "/runpod-volume/huggingface-cache/hub"
DEFAULT_QUANTIZATION = "Q4_K_M"
# Ollama parses the GGUF's header on create; a line of progress comes at least this often.
CREATE_STALL_TIMEOUT_S = 600.0
# Room for the manifest, config and small layers Ollama writes beside the weights.
SPACE_MARGIN_BYTES = 64 * 1024 * 1024
_COPY_CHUNK = 8 * 1024 * 1024
# What Ollama serves a GGUF with when it finds no chat template it knows in it.
RAW_PROMPT_TEMPLATE = "{{ .Prompt }}"
_MEMO_VERSION = 1

# A quantization tag between `-`, `_`, `.` or `/` boundaries: Q4_K_M, IQ4_XS, Q8_0, F16, ...
_QUANT_TOKEN = re.compile(
    r"(?:^|[-_./])((?:UD-)?(?:I?Q\d(?:_[A-Z0-9]+)*|BF16|F16|F32))(?=$|[-_./])", re.IGNORECASE
)
# llama.cpp's shard names: `<prefix>-00001-of-00003.gguf`.
_SHARD = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class CacheSettings:
    """What `import_model` needs from the environment (see ollama_worker.config)."""

    hf_model: str
    hf_model_file: str = ""
    hf_quantization: str = ""
    hub_cache: str = RUNPOD_HUB_CACHE
    ollama_models: str = ""
    modelfile: str = ""
    modelfile_tuning: bool = True


@dataclass(frozen=True)
class GGUFChoice:
    """One model of a snapshot: a single GGUF, or every shard of a split one, in order."""

    name: str
    files: tuple[Path, ...]
    size: int

    @property
    def sharded(self) -> bool:
        return len(self.files) > 1


@dataclass
class Modelfile:
    """What a Modelfile says, beyond its FROM: the parts a model made from a GGUF takes."""

    system: str | None = None
    template: str | None = None
    parameters: dict[str, list[str]] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    license: list[str] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Finding the GGUF in the cache


def parse_repo_id(hf_model: str) -> tuple[str, str]:
    """`org/name` and a quantization tag from HF_MODEL, which may be written as a repository id,
    `hf.co/org/name`, a huggingface.co URL, with a trailing `:<quant>`."""
    text = hf_model.strip()
    text = re.sub(r"^(?:https?://)?(?:www\.)?(?:hf\.co|huggingface\.co)/", "", text)
    text = text.split("/tree/", 1)[0].split("/blob/", 1)[0].strip("/")
    repo, _, tag = text.partition(":")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts):
        raise BootError(
            f"HF_MODEL={hf_model!r} is not a Hugging Face repository id such as "
            "'bartowski/Qwen2.5-7B-Instruct-GGUF'"
        )
    return repo, tag


def _repo_dir_name(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


def cached_repos(root: Path) -> list[str]:
    """The model repositories the cache holds, as `org/name`."""
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return []
    return [
        entry.name[len("models--") :].replace("--", "/", 1)
        for entry in entries
        if entry.name.startswith("models--") and entry.is_dir()
    ]


def find_repo(root: Path, repo_id: str) -> Path:
    """The cache folder of `repo_id`, matched without regard to case (RunPod stores it under
    the repository's canonical casing, which a user may not type)."""
    exact = root / _repo_dir_name(repo_id)
    if exact.is_dir():
        return exact
    wanted = _repo_dir_name(repo_id).casefold()
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.casefold() == wanted and entry.is_dir():
                return entry
    holds = ", ".join(cached_repos(root)) or "no model repository"
    where = str(root) if root.is_dir() else f"{root}, which does not exist,"
    raise BootError(
        f"HF_MODEL {repo_id} is not in the model cache at {where} (it holds: {holds}); set the "
        "endpoint's Model to the same repository so RunPod downloads it, or fix HF_MODEL "
        "(HF_HUB_CACHE moves the cache)"
    )


def newest_snapshot(repo_dir: Path) -> Path:
    """The most recently written snapshot (revision) of a cached repository."""
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        raise BootError(f"{repo_dir} holds no snapshot: the download did not finish")
    candidates = [entry for entry in snapshots.iterdir() if entry.is_dir()]
    if not candidates:
        raise BootError(f"{repo_dir} holds no snapshot: the download did not finish")
    return max(candidates, key=lambda entry: (entry.stat().st_mtime_ns, entry.name))


def is_projector(relative: str) -> bool:
    """A multimodal projector (`mmproj-*.gguf`): no language-model weights, never the model."""
    return "mmproj" in Path(relative).name.casefold()


def gguf_files(snapshot: Path) -> list[str]:
    """Every `.gguf` in a snapshot, as paths relative to it, sorted; projectors included."""
    found = []
    for dirpath, _dirs, files in os.walk(snapshot, followlinks=True):
        for name in files:
            path = Path(dirpath) / name
            # A symlink into blobs/ whose blob is absent is a download that did not finish.
            if name.casefold().endswith(".gguf") and path.exists():
                found.append(str(path.relative_to(snapshot)))
    return sorted(found)


def group_models(relatives: Iterable[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Models (name -> its files in order) and the projectors skipped.

    Shards `<prefix>-0000i-of-0000N.gguf` make one model named `<prefix>-*-of-0000N.gguf`;
    a shard set with a missing part raises BootError naming it.
    """
    models: dict[str, list[str]] = {}
    shards: dict[tuple[str, int], dict[int, str]] = {}
    skipped = []
    for relative in relatives:
        if is_projector(relative):
            skipped.append(relative)
            continue
        found = _SHARD.match(relative)
        if found and int(found["count"]) > 1:
            key = (found["prefix"], int(found["count"]))
            shards.setdefault(key, {})[int(found["index"])] = relative
        else:
            models[relative] = [relative]
    for (prefix, count), parts in shards.items():
        name = f"{prefix}-*-of-{count:05d}.gguf"
        missing = [index for index in range(1, count + 1) if index not in parts]
        if missing:
            raise BootError(
                f"the split GGUF {name} lacks part(s) {', '.join(map(str, missing))} in the "
                "cache: the download did not finish"
            )
        models[name] = [parts[index] for index in range(1, count + 1)]
    return dict(sorted(models.items())), skipped


def quantizations(name: str) -> list[str]:
    """The quantization tags written in a file name (upper case)."""
    return [token.upper() for token in _QUANT_TOKEN.findall(name)]


def matches_quantization(name: str, quantization: str) -> bool:
    """Whether `quantization` is a whole tag of `name`: Q4_K_M matches `x-Q4_K_M.gguf`, not
    `x-Q4_K_S.gguf`, and Q4 does not match Q4_K_M."""
    # `_` joins a tag's own parts (Q4_K_M), so it may come before a tag but not after one.
    pattern = r"(?:^|[-_./])" + re.escape(quantization) + r"(?=$|[-./])"
    return re.search(pattern, name, re.IGNORECASE) is not None


def _describe(models: dict[str, list[str]], sizes: dict[str, int]) -> str:
    return ", ".join(f"{name} ({human_size(sizes[name])})" for name in models) or "no GGUF file"


def choose(
    models: dict[str, list[str]],
    sizes: dict[str, int],
    *,
    model_file: str = "",
    quantization: str = "",
) -> tuple[str, str]:
    """The model to serve and a phrase saying why: the file HF_MODEL_FILE names (any shard
    names its set), else the one model tagged HF_QUANTIZATION, else (none asked for) Q4_K_M,
    else the smallest."""
    if not models:
        raise BootError("the snapshot holds no GGUF model file")
    holds = _describe(models, sizes)
    if model_file:
        wanted = model_file.strip().strip("/").casefold()
        for name, files in models.items():
            if wanted in {name.casefold(), *(part.casefold() for part in files)}:
                return name, f"HF_MODEL_FILE={model_file}"
        raise BootError(f"HF_MODEL_FILE={model_file} is not in the snapshot (it holds: {holds})")
    asked = quantization.strip()
    wanted_quant = asked or DEFAULT_QUANTIZATION
    matching = [name for name in models if matches_quantization(name, wanted_quant)]
    if len(matching) == 1:
        reason = f"HF_QUANTIZATION={asked}" if asked else f"the default {DEFAULT_QUANTIZATION}"
        return matching[0], reason
    if len(matching) > 1:
        raise BootError(
            f"{len(matching)} files match the quantization {wanted_quant}: "
            f"{_describe({name: models[name] for name in matching}, sizes)}; "
            "name one with HF_MODEL_FILE"
        )
    if asked:
        raise BootError(f"no GGUF of quantization {asked} in the snapshot (it holds: {holds})")
    smallest = min(models, key=lambda name: (sizes[name], name))
    return smallest, f"the smallest GGUF, since none is {DEFAULT_QUANTIZATION} (it holds: {holds})"


def locate(settings: CacheSettings) -> tuple[GGUFChoice, str]:
    """The GGUF to serve from the cache, and a line saying what was picked and why."""
    repo_id, tag = parse_repo_id(settings.hf_model)
    root = Path(settings.hub_cache or RUNPOD_HUB_CACHE)
    repo_dir = find_repo(root, repo_id)
    # Named as the cache names it: the repository's canonical casing.
    repo_id = repo_dir.name[len("models--") :].replace("--", "/", 1)
    snapshot = newest_snapshot(repo_dir)
    models, skipped = group_models(gguf_files(snapshot))
    sizes = {
        name: sum((snapshot / part).stat().st_size for part in files)
        for name, files in models.items()
    }
    if not models:
        others = ", ".join(sorted(entry.name for entry in snapshot.iterdir())[:20]) or "nothing"
        projectors = f"; projectors skipped: {', '.join(skipped)}" if skipped else ""
        raise BootError(
            f"{repo_id} holds no GGUF model at {snapshot} (it holds: {others}{projectors}); "
            "serve a GGUF repository"
        )
    name, reason = choose(
        models,
        sizes,
        model_file=settings.hf_model_file,
        quantization=settings.hf_quantization or tag,
    )
    choice = GGUFChoice(name, tuple(snapshot / part for part in models[name]), sizes[name])
    line = (
        f"{repo_id} revision {snapshot.name[:12]}: {name} ({human_size(choice.size)}), by {reason}"
    )
    if skipped:
        line += f"; skipped the projector(s) {', '.join(skipped)}"
    return choice, line


# ---------------------------------------------------------------------------------------------
# The digest, computed once per file and remembered beside it


def _stamp(path: Path) -> dict[str, Any]:
    real = path.resolve()
    info = real.stat()
    return {"path": str(real), "size": info.st_size, "mtime_ns": info.st_mtime_ns}


def memo_paths(files: tuple[Path, ...]) -> list[Path]:
    """Where the digest of `files` is remembered: beside the (resolved) first file, else, when
    the cache is read-only, in the worker's own cache on the container disk."""
    first = files[0].resolve()
    name = f".{first.name}.ollama-digest.json"
    fallback = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ollama-worker"
    key = hashlib.sha256(str(first).encode()).hexdigest()[:16]
    return [first.parent / name, fallback / "digests" / f"{key}-{first.name}.json"]


def remembered_digest(files: tuple[Path, ...]) -> str | None:
    """The digest remembered for exactly these files (same paths, sizes and mtimes), or None."""
    stamps = [_stamp(path) for path in files]
    for memo in memo_paths(files):
        try:
            saved = json.loads(memo.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(saved, dict):
            continue
        digest = saved.get("digest")
        if (
            saved.get("version") == _MEMO_VERSION
            and saved.get("files") == stamps
            and isinstance(digest, str)
            and re.fullmatch(r"[0-9a-f]{64}", digest)
        ):
            return digest
    return None


def remember_digest(files: tuple[Path, ...], digest: str) -> Path | None:
    """Write the memo where it can be written; the path written, None if nowhere."""
    stamps = [_stamp(path) for path in files]
    body = json.dumps({"version": _MEMO_VERSION, "files": stamps, "digest": digest})
    for memo in memo_paths(files):
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            partial = memo.with_name(f"{memo.name}.{os.getpid()}.partial")
            partial.write_text(body)
            partial.replace(memo)
        except OSError:
            continue
        return memo
    return None


def sha256_of(paths: Iterable[Path]) -> str:
    """The hex SHA-256 of the files' bytes, one after the other."""
    digest = hashlib.sha256()
    buffer = bytearray(_COPY_CHUNK)
    view = memoryview(buffer)
    for path in paths:
        with path.open("rb", buffering=0) as source:
            while read := source.readinto(buffer):
                digest.update(view[:read])
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Into Ollama's blob store


def ollama_models_dir(configured: str = "") -> Path:
    """Ollama's model store, as `ollama serve` reads it (envconfig.Models)."""
    return Path(configured or os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models")


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem of `path`."""
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def check_space(directory: Path, needed: int, what: str) -> None:
    """Raise BootError at once, before writing anything, when `needed` bytes do not fit."""
    available = free_bytes(directory)
    if available < needed + SPACE_MARGIN_BYTES:
        raise BootError(
            f"too little disk to copy {what} into Ollama's store at {directory}: needs "
            f"{human_size(needed + SPACE_MARGIN_BYTES)} ({human_size(needed)} and a margin of "
            f"{human_size(SPACE_MARGIN_BYTES)}), {human_size(available)} available; give the "
            "container more disk, or put OLLAMA_MODELS on the cache's filesystem so the GGUF is "
            "hard-linked"
        )


def _blob_path(blobs: Path, digest: str) -> Path:
    return blobs / f"sha256-{digest}"


def _partial_path(blobs: Path, tag: str) -> Path:
    # Not a valid digest name, so an `ollama serve` that starts later prunes a leftover.
    return blobs / f"sha256-partial-{tag}-{os.getpid()}"


# Something that writes a file's bytes through the function it is given, in order.
Producer = Callable[[Callable[[bytes], object]], None]


def _write_hashed(produce: Producer, blobs: Path, tag: str) -> tuple[str, Path]:
    """Write what `produce` emits into a partial file in `blobs`, hashing it on the way (one
    read of the source for both); its digest and the partial file."""
    partial = _partial_path(blobs, tag)
    hasher = hashlib.sha256()
    try:
        with partial.open("wb") as out:

            def emit(data: bytes) -> None:
                hasher.update(data)
                out.write(data)

            produce(emit)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return hasher.hexdigest(), partial


def _copy_of(source: Path) -> Producer:
    def produce(write: Callable[[bytes], object]) -> None:
        with source.open("rb") as src:
            while chunk := src.read(_COPY_CHUNK):
                write(chunk)

    return produce


def _install(partial: Path, blob: Path) -> None:
    os.chmod(partial, 0o644)
    partial.replace(blob)


@dataclass(frozen=True)
class Placed:
    """How the GGUF reached Ollama's store."""

    digest: str
    how: str  # "hard link", "copy", "joined copy" or "already there"
    hashed_s: float | None  # seconds spent hashing; None when the digest was remembered


def place(choice: GGUFChoice, blobs: Path) -> Placed:
    """Put the model's bytes in Ollama's blob store as `sha256-<digest>`: a hard link when the
    store shares the cache's filesystem (no byte copied), else a copy after a free-space check;
    a split GGUF is joined into one file (Ollama 0.12.10 loads one file per model)."""
    blobs.mkdir(parents=True, exist_ok=True)
    digest = remembered_digest(choice.files)
    hashed_s: float | None = None
    if digest and _blob_path(blobs, digest).exists():
        return Placed(digest, "already there", None)
    if choice.sharded:
        check_space(blobs, choice.size, choice.name)
        started = time.monotonic()
        digest_now, partial = _write_hashed(
            lambda write: join_shards(choice.files, write), blobs, "join"
        )
        if digest is None:
            hashed_s = time.monotonic() - started
        elif digest_now != digest:
            partial.unlink(missing_ok=True)
            raise BootError(f"the joined {choice.name} is not what it was on an earlier boot")
        _install(partial, _blob_path(blobs, digest_now))
        remember_digest(choice.files, digest_now)
        return Placed(digest_now, "joined copy", hashed_s)
    source = choice.files[0].resolve()
    if digest is None and _same_filesystem(source, blobs):
        started = time.monotonic()
        digest = sha256_of([source])
        hashed_s = time.monotonic() - started
        remember_digest(choice.files, digest)
    if digest is not None:
        blob = _blob_path(blobs, digest)
        try:
            os.link(source, blob)
            return Placed(digest, "hard link", hashed_s)
        except FileExistsError:
            return Placed(digest, "already there", hashed_s)
        except OSError as exc:
            if exc.errno not in {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.EROFS}:
                raise BootError(f"cannot link {source} into {blobs}: {exc}") from None
    check_space(blobs, choice.size, choice.name)
    if digest is not None:
        # The digest is known: the kernel copies (copy_file_range or sendfile), no hashing.
        partial = _partial_path(blobs, "copy")
        try:
            shutil.copyfile(source, partial)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        _install(partial, _blob_path(blobs, digest))
        return Placed(digest, "copy", hashed_s)
    started = time.monotonic()
    digest, partial = _write_hashed(_copy_of(source), blobs, "copy")
    hashed_s = time.monotonic() - started
    remember_digest(choice.files, digest)
    _install(partial, _blob_path(blobs, digest))
    return Placed(digest, "copy", hashed_s)


def _same_filesystem(source: Path, directory: Path) -> bool:
    try:
        return source.stat().st_dev == directory.stat().st_dev
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Joining a split GGUF (llama.cpp's gguf-split shards) into one


_GGUF_MAGIC = b"GGUF"
# GGUF value types: fixed sizes by type id; 8 is a string, 9 an array.
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4


class _Reader:
    def __init__(self, stream: BinaryIO, name: str) -> None:
        self.stream = stream
        self.name = name

    def take(self, count: int) -> bytes:
        data = self.stream.read(count)
        if len(data) != count:
            raise BootError(f"{self.name} ends inside its GGUF header: the file is truncated")
        return data

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack("<Q", self.take(8))[0])

    def string(self) -> bytes:
        length = self.take(8)
        return length + self.take(int(struct.unpack("<Q", length)[0]))

    def value(self, kind: int) -> bytes:
        """The raw bytes of one value of GGUF type `kind`."""
        if kind in _FIXED:
            return self.take(_FIXED[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            head = self.take(12)
            item, count = struct.unpack("<IQ", head)
            if item in _FIXED:
                return head + self.take(_FIXED[item] * count)
            return head + b"".join(self.value(item) for _ in range(count))
        raise BootError(f"{self.name} has a GGUF value of unknown type {kind}")


@dataclass
class _Header:
    version: int
    kvs: list[tuple[str, int, bytes]]  # key, type, raw value
    tensors: list[tuple[bytes, int]]  # raw info without its offset, offset
    data_start: int


def read_gguf_header(stream: BinaryIO, name: str) -> _Header:
    """The key-values and tensor infos of a GGUF, raw, and where its tensor data starts."""
    reader = _Reader(stream, name)
    if reader.take(4) != _GGUF_MAGIC:
        raise BootError(f"{name} is not a GGUF file")
    version = reader.u32()
    if version < 2:
        raise BootError(f"{name} is GGUF version {version}; Ollama needs 2 or later")
    tensor_count, kv_count = reader.u64(), reader.u64()
    kvs = []
    for _ in range(kv_count):
        key = reader.string()
        kind = reader.u32()
        raw = key + struct.pack("<I", kind) + reader.value(kind)
        kvs.append((key[8:].decode(errors="replace"), kind, raw))
    tensors = []
    for _ in range(tensor_count):
        info = reader.string()
        dims = reader.take(4)
        info += dims + reader.take(8 * struct.unpack("<I", dims)[0]) + reader.take(4)
        tensors.append((info, reader.u64()))
    alignment = _alignment(kvs)
    return _Header(version, kvs, tensors, _align(stream.tell(), alignment))


def _alignment(kvs: list[tuple[str, int, bytes]]) -> int:
    for key, kind, raw in kvs:
        if key == "general.alignment" and kind == _UINT32:
            return int(struct.unpack("<I", raw[-4:])[0]) or 32
    return 32


def _align(offset: int, alignment: int) -> int:
    return offset + (-offset % alignment)


def join_shards(files: tuple[Path, ...], write: Callable[[bytes], object]) -> None:
    """Write the GGUF that llama.cpp's `gguf-split --merge` makes of `files`: the first shard's
    key-values without the `split.*` ones, every tensor in order, their data back to back."""
    headers = []
    for path in files:
        with path.open("rb") as stream:
            headers.append(read_gguf_header(stream, path.name))
    first = headers[0]
    alignment = _alignment(first.kvs)
    kvs = [raw for key, _kind, raw in first.kvs if not key.startswith("split.")]
    tensors: list[bytes] = []
    base = 0
    lengths = []
    for path, header in zip(files, headers, strict=True):
        tensors += [info + struct.pack("<Q", base + offset) for info, offset in header.tensors]
        length = path.stat().st_size - header.data_start
        lengths.append(length)
        base += _align(length, alignment)
    head = struct.pack("<4sIQQ", _GGUF_MAGIC, first.version, len(tensors), len(kvs))
    head += b"".join(kvs) + b"".join(tensors)
    write(head + b"\0" * (-len(head) % alignment))
    for path, header, length in zip(files, headers, lengths, strict=True):
        with path.open("rb") as source:
            source.seek(header.data_start)
            remaining = length
            while remaining:
                chunk = source.read(min(_COPY_CHUNK, remaining))
                if not chunk:
                    raise BootError(f"{path.name} changed while it was being joined")
                write(chunk)
                remaining -= len(chunk)
        if path != files[-1]:  # the next shard's data starts aligned; the file ends as it is
            write(b"\0" * (-length % alignment))


# ---------------------------------------------------------------------------------------------
# The Modelfile's tuning on top


def _modelfile_commands(text: str) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, argument) pairs of a Modelfile, arguments unquoted (`\"\"\"` blocks too)."""
    position = 0
    line_pattern = re.compile(r"[ \t]*([A-Za-z]+)[ \t]+")
    while position < len(text):
        end = text.find("\n", position)
        end = len(text) if end == -1 else end
        line = text[position:end]
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            position = end + 1
            continue
        found = line_pattern.match(line)
        if not found:
            raise BootError(f"the Modelfile line {stripped[:60]!r} is not `INSTRUCTION argument`")
        start = position + found.end()
        if text.startswith('"""', start):
            close = text.find('"""', start + 3)
            if close == -1:
                what = found[1].upper()
                raise BootError(f'the Modelfile\'s {what} opens """ and never closes it')
            argument = text[start + 3 : close]
            end = text.find("\n", close)
            end = len(text) if end == -1 else end
        else:
            argument = text[start:end].strip()
            if len(argument) >= 2 and argument[0] == argument[-1] == '"':
                argument = argument[1:-1]
        yield found[1].upper(), argument
        position = end + 1


def parse_modelfile(text: str) -> Modelfile:
    """A Modelfile's SYSTEM, TEMPLATE, PARAMETERs, MESSAGEs, LICENSE and ADAPTERs."""
    parsed = Modelfile()
    for command, argument in _modelfile_commands(text):
        if command == "SYSTEM":
            parsed.system = argument
        elif command == "TEMPLATE":
            parsed.template = argument
        elif command == "PARAMETER":
            key, _, value = argument.partition(" ")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            parsed.parameters.setdefault(key.strip().lower(), []).append(value)
        elif command == "MESSAGE":
            role, _, content = argument.partition(" ")
            parsed.messages.append({"role": role.strip().lower(), "content": content.strip()})
        elif command == "LICENSE":
            parsed.license.append(argument)
        elif command == "ADAPTER":
            parsed.adapters.append(argument)
        elif command != "FROM":
            raise BootError(f"the Modelfile has an instruction Ollama does not know: {command}")
    return parsed


def _typed(values: list[str]) -> Any:
    """A PARAMETER's value as Ollama's API takes it: a number, a bool or a string."""
    value = values[-1]
    if value.lower() in {"true", "false"}:
        return value.lower() == "true"
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(value)
    return value


def create_request(
    name: str, filename: str, digest: str, tuning: Modelfile | None, template_stops: list[str]
) -> dict[str, Any]:
    """The `/api/create` body: the GGUF blob as the weights, and the Modelfile's tuning."""
    body: dict[str, Any] = {"model": name, "files": {filename: f"sha256:{digest}"}, "stream": True}
    if tuning is None:
        return body
    parameters: dict[str, Any] = {
        key: _typed(values) for key, values in tuning.parameters.items() if key != "stop"
    }
    stops = tuning.parameters.get("stop", [])
    if stops:
        # A Modelfile's stop list replaces the template's, and the one here was written for its
        # own FROM: keep the GGUF template's stops too unless the Modelfile gives the template.
        merged = stops if tuning.template else [*template_stops, *stops]
        parameters["stop"] = list(dict.fromkeys(merged))
    for key, value in (("system", tuning.system), ("template", tuning.template)):
        if value is not None:
            body[key] = value
    if parameters:
        body["parameters"] = parameters
    if tuning.messages:
        body["messages"] = tuning.messages
    if tuning.license:
        body["license"] = tuning.license
    return body


def _create(base_url: str, body: dict[str, Any]) -> None:
    last = ""
    for item in _stream_json(base_url, "/api/create", body, timeout_s=CREATE_STALL_TIMEOUT_S):
        last = str(item.get("status", "")) or last
    if last != "success":
        raise BootError(f"creating {body['model']!r} ended without success (last status {last!r})")


def _stops_of(base_url: str, name: str) -> list[str]:
    """The `stop` parameters Ollama gave a model (from the GGUF's autodetected template)."""
    shown = _call_json(base_url, "/api/show", {"model": name}, timeout_s=30.0)
    lines = shown.get("parameters", "") if isinstance(shown, dict) else ""
    stops = []
    for line in str(lines).splitlines():
        key, _, value = line.strip().partition(" ")
        if key == "stop":
            value = value.strip()
            stops.append(json.loads(value) if value.startswith('"') else value)
    return stops


def _blob_visible(base_url: str, digest: str) -> bool:
    url = f"{base_url.rstrip('/')}/api/blobs/sha256:{digest}"
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=10.0):
            return True
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise BootError(f"HEAD /api/blobs answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise BootError(f"HEAD /api/blobs at {base_url} failed: {exc}") from None


def import_model(base_url: str, model: str, settings: CacheSettings) -> None:
    """Find the GGUF in the cache, hand it to the Ollama at `base_url` and create `model` from
    it, logging what was picked and how long it took; BootError on any failure."""
    try:
        _import_model(base_url, model, settings)
    except OSError as exc:  # a disk that filled up mid-copy, a file that vanished, ...
        raise BootError(f"model cache: {exc}") from None


def _import_model(base_url: str, model: str, settings: CacheSettings) -> None:
    started = time.monotonic()
    choice, picked = locate(settings)
    _log(f"model cache: {picked}")
    tuning: Modelfile | None = None
    if settings.modelfile_tuning and settings.modelfile:
        try:
            tuning = parse_modelfile(Path(settings.modelfile).read_text())
        except OSError as exc:
            raise BootError(f"cannot read the Modelfile {settings.modelfile}: {exc}") from None
        if tuning.adapters:
            raise BootError("the Modelfile has an ADAPTER, which a cached GGUF cannot take")
    blobs = ollama_models_dir(settings.ollama_models) / "blobs"
    placed = place(choice, blobs)
    if not _blob_visible(base_url, placed.digest):
        raise BootError(
            f"Ollama does not see the blob sha256-{placed.digest} written to {blobs}: "
            "OLLAMA_MODELS must be the same for `ollama serve` and the boot"
        )
    # Ollama keeps a file's own name only to tell a GGUF from safetensors.
    filename = "model.gguf"
    stops: list[str] = []
    if tuning is not None and tuning.parameters.get("stop") and not tuning.template:
        _create(base_url, create_request(model, filename, placed.digest, None, []))
        stops = _stops_of(base_url, model)
    _create(base_url, create_request(model, filename, placed.digest, tuning, stops))
    shown = _call_json(base_url, "/api/show", {"model": model}, timeout_s=30.0)
    if isinstance(shown, dict) and shown.get("template") == RAW_PROMPT_TEMPLATE:
        _log(
            f"model cache: {choice.name} has no chat template Ollama knows, so chats reach it "
            "as a raw prompt without the system message; give the Modelfile a TEMPLATE"
        )
    hashed = (
        "digest remembered from an earlier boot"
        if placed.hashed_s is None
        else f"hashed in {placed.hashed_s:.2f} s"
    )
    tuned = "with the Modelfile's tuning" if tuning else "as it is (MODELFILE_TUNING=off)"
    _log(
        f"model cache: imported {choice.name} as {model} {tuned} in "
        f"{time.monotonic() - started:.2f} s ({placed.how}, {hashed})"
    )


def human_size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"
