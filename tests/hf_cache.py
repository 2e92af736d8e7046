"""A Hugging Face hub cache laid out in a folder as huggingface_hub (and so RunPod's model cache)
lays it out: shared by tests/test_model_cache.py and bench/model_cache.py."""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ollama_worker import model_cache

NEW_REVISION = "b" * 40
OLD_REVISION = "a" * 40


@dataclass
class Cache:
    """A hub cache in a temporary folder."""

    root: Path
    repo_dir: Path

    @property
    def snapshot(self) -> Path:
        return self.repo_dir / "snapshots" / NEW_REVISION

    def add(self, revision: str, name: str, source: Path | bytes) -> Path:
        """Put `source` (a file, hard-linked, or bytes) in blobs/ under its digest and point
        snapshots/<revision>/<name> at it, as huggingface_hub does (an LFS file's blob is
        named by its SHA-256)."""
        blobs = self.repo_dir / "blobs"
        blobs.mkdir(parents=True, exist_ok=True)
        if isinstance(source, bytes):
            digest = hashlib.sha256(source).hexdigest()
            blob = blobs / digest
            if not blob.exists():
                blob.write_bytes(source)
        else:
            info = source.stat()
            digest = _digest(str(source), info.st_size, info.st_mtime_ns)
            blob = blobs / digest
            if not blob.exists():
                os.link(source, blob)
        target = self.repo_dir / "snapshots" / revision / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(os.path.relpath(blob, target.parent))
        (self.repo_dir / "refs").mkdir(exist_ok=True)
        (self.repo_dir / "refs" / "main").write_text(revision)
        return target


@functools.cache
def _digest(path: str, _size: int, _mtime_ns: int) -> str:
    """A file's SHA-256, once per version of it (the real GGUF is hashed once per session)."""
    return model_cache.sha256_of([Path(path)])


def make_cache(root: Path, repo: str) -> Cache:
    """An empty cache at `root` for the repository `repo` (its canonical casing)."""
    return Cache(root, root / ("models--" + repo.replace("/", "--")))
