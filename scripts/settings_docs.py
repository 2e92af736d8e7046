"""Write the README's Configuration table and the Hub listings' env inputs from the registry.

    python scripts/settings_docs.py          # rewrite both (`make docs`)
    python scripts/settings_docs.py --check  # exit 1, naming the stale files, when they drift

The settings are declared once, in `ollama_worker/config.py`; these views are never edited by
hand. `.runpod/hub.json` is the queue endpoint's listing; `.runpod/hub-lb.json` the
load-balancing one (WORKER_MODE=http), which also gets the inputs declared `listing="lb"`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
HUB_JSON = ROOT / ".runpod" / "hub.json"
HUB_LB_JSON = ROOT / ".runpod" / "hub-lb.json"
# The load-balancing listing runs the same image in HTTP mode.
LB_STATIC = [{"key": "WORKER_MODE", "value": "http"}]
BEGIN = "<!-- settings: begin (written by `make docs` from ollama_worker/config.py) -->"
END = "<!-- settings: end -->"

sys.path.insert(0, str(ROOT))
from ollama_worker.config import Setting, registry, truthy  # noqa: E402


def shown_default(spec: Setting) -> str:
    """The README's default column: what a worker built from the image starts with."""
    if spec.shown:
        return spec.shown
    if spec.image is not None and spec.image != spec.default:
        return f"`{spec.image}` (image)"
    return f"`{spec.default}`" if spec.default else "unset"


def readme_table() -> str:
    """The Configuration table, one row per setting, between its markers."""
    rows = [
        f"| `{spec.env}` | {shown_default(spec)} | {spec.meaning} |".replace("\n", " ")
        for spec in registry()
    ]
    return "\n".join([BEGIN, "| variable | default | meaning |", "|---|---|---|", *rows, END])


def hub_default(spec: Setting) -> str | float | bool:
    """The Hub's default, typed as its input: what the image ships."""
    if spec.kind == "boolean":
        return truthy(spec.shipped)
    if spec.kind == "number":
        value = float(spec.shipped)
        return int(value) if value.is_integer() else value
    return spec.shipped


def hub_env(listing: str = "queue") -> list[dict[str, Any]]:
    """A Hub listing's env inputs: every setting with a Hub title, in the registry's order
    (on the queue listing, not those of the load-balancing one only)."""
    inputs: list[dict[str, Any]] = list(LB_STATIC) if listing == "lb" else []
    for spec in registry():
        if not spec.hub or (spec.listing == "lb" and listing != "lb"):
            continue
        field: dict[str, Any] = {
            "name": spec.hub,
            "type": spec.kind,
            "description": spec.hub_text or spec.meaning,
            "default": hub_default(spec),
            "advanced": spec.advanced,
        }
        if spec.options:
            field["options"] = [{"label": option, "value": option} for option in spec.options]
        inputs.append({"key": spec.env, "input": field})
    return inputs


def written_readme(current: str) -> str:
    """The README with its table replaced; ValueError when the markers are missing."""
    head, begin, rest = current.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"README.md lacks the markers {BEGIN!r} ... {END!r}")
    return head + readme_table() + tail


def written_hub(current: str, listing: str = "queue") -> str:
    """A listing with its env inputs replaced, the rest kept."""
    document = json.loads(current)
    document["config"]["env"] = hub_env(listing)
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def written_hub_lb(current: str) -> str:
    """hub-lb.json with its env inputs replaced, the rest kept."""
    return written_hub(current, "lb")


def main(argv: list[str] | None = None) -> int:
    """Rewrite the files, or with --check report those that differ from the registry."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report drift (exit 1)")
    args = parser.parse_args(argv)
    stale = []
    views = ((README, written_readme), (HUB_JSON, written_hub), (HUB_LB_JSON, written_hub_lb))
    for path, write in views:
        current = path.read_text(encoding="utf-8")
        wanted = write(current)
        if wanted != current:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(wanted, encoding="utf-8")
    if args.check and stale:
        names = ", ".join(map(str, stale))
        print(f"{names}: out of date with ollama_worker/config.py; run `make docs`")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
