"""The stand-ins' public API: what bench/ and the stand-in executable may use of standins/."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import standins.ollama
import standins.runpod
from standins.ollama import OllamaReadings

ROOT = Path(__file__).resolve().parent.parent
# The modules outsiders import, and what each offers them.
PUBLIC = {
    "standins.ollama": set(standins.ollama.__all__),
    "standins.runpod": set(standins.runpod.__all__),
    "standins.ollama.cli": {"main"},
}
OUTSIDERS = sorted([*ROOT.joinpath("bench").glob("*.py"), ROOT / "tests" / "bin" / "ollama"])


def _standins_imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) of every import of standins.* in a file (name None for `import m`)."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("standins"):
            found.extend((node.module or "", alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend((a.name, None) for a in node.names if a.name.startswith("standins"))
    return found


def test_outsiders_import_only_public_names() -> None:
    seen = 0
    for path in OUTSIDERS:
        for module, name in _standins_imports(path):
            seen += 1
            where = f"{path.relative_to(ROOT)} imports {module}.{name}"
            assert module in PUBLIC, where
            assert name is None or name in PUBLIC[module], where
    assert seen >= 8, "found too few imports of standins: is the scan looking at bench/?"


@pytest.mark.parametrize("path", OUTSIDERS, ids=lambda p: p.name)
def test_outsiders_read_no_raw_counters(path: Path) -> None:
    """The typed calls, not the stats() snapshot or /_fake/stats, are how outsiders read."""
    text = path.read_text(encoding="utf-8")
    for raw in (".stats()", "/_fake/stats", '"take_log"', '"stream_token_times"', '"max_in'):
        assert raw not in text, f"{path.relative_to(ROOT)} reads {raw}"


@pytest.mark.parametrize("module", ["standins.ollama", "standins.runpod"])
def test_public_names_resolve(module: str) -> None:
    package = importlib.import_module(module)
    for name in package.__all__:
        assert getattr(package, name) is not None, name


def test_every_typed_call_is_documented_in_the_package() -> None:
    calls = [n for n, _ in inspect.getmembers(OllamaReadings, inspect.isfunction) if n[0] != "_"]
    assert len(calls) >= 10
    for name in calls:
        assert f"{name}()" in (standins.ollama.__doc__ or ""), name
    runpod_doc = " ".join((standins.runpod.__doc__ or "").split())
    for name in ("takes", "open_polls", "poll_counts", "unfinished", "peak_unfinished", "stats"):
        assert callable(getattr(standins.runpod.FakeRunPod, name)), name
        assert f"{name}(" in runpod_doc, name
