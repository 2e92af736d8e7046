"""The settings registry is the one home of every setting: each view of it must agree.

The README's Configuration table and `.runpod/hub.json`'s inputs are written from
`ollama_worker/config.py` by `make docs`; the boot script's `${VAR:-default}` literals and the
Dockerfile's ARG and ENV values are checked against it here, and so is every variable the
worker's code reads.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shlex
from pathlib import Path
from types import ModuleType

import pytest

from ollama_worker.config import (
    DEFAULTS,
    OUTSIDE,
    TRUTHY,
    ConfigError,
    Settings,
    declared,
    registry,
)

ROOT = Path(__file__).resolve().parent.parent
BOOT_SCRIPT = ROOT / "ollama_boot.sh"
DOCKERFILE = ROOT / "Dockerfile"
# Variables the boot script uses that are the shell's or that it sets itself.
SHELL_OWN = {"BASH_SOURCE", "PYTHONPATH"}


def _docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "settings_docs", ROOT / "scripts/settings_docs.py"
    )
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = (line.strip() for line in text.splitlines())
    return [
        (keyword.upper(), rest.strip())
        for line in lines
        if line and not line.startswith("#")
        for keyword, _, rest in [line.partition(" ")]
    ]


def _assignments(args: str) -> dict[str, str]:
    return dict(word.partition("=")[::2] for word in shlex.split(args))


def test_every_setting_is_declared_once_and_its_defaults_parse() -> None:
    names = [spec.env for spec in registry()]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    for spec in OUTSIDE:
        for value in {spec.default, spec.shipped}:
            spec.parse(value)  # a default the reader itself would refuse is a typo
    for spec in registry():
        assert spec.meaning, spec.env
        assert "\n" not in spec.meaning, spec.env
        assert "|" not in spec.meaning, spec.env  # it would split the table's row
        assert not spec.hub or spec.kind in {"string", "number", "boolean"}


def test_settings_fields_carry_their_declarations_and_defaults() -> None:
    for field in dataclasses.fields(Settings):
        spec = field.metadata["setting"]
        assert field.default == spec.parse(spec.default), field.name
    assert Settings.from_env({}) == DEFAULTS


def test_the_readme_table_is_written_from_the_registry() -> None:
    docs = _docs()
    current = docs.README.read_text(encoding="utf-8")
    assert docs.written_readme(current) == current, "README.md is stale: run `make docs`"


def test_the_hub_inputs_are_written_from_the_registry() -> None:
    docs = _docs()
    current = docs.HUB_JSON.read_text(encoding="utf-8")
    assert docs.written_hub(current) == current, ".runpod/hub.json is stale: run `make docs`"
    keys = [entry["key"] for entry in json.loads(current)["config"]["env"]]
    assert keys == [spec.env for spec in registry() if spec.hub and spec.listing != "lb"]
    lb = docs.HUB_LB_JSON.read_text(encoding="utf-8")
    assert docs.written_hub_lb(lb) == lb, ".runpod/hub-lb.json is stale: run `make docs`"


def test_a_default_changed_in_the_registry_changes_every_view(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = _docs()
    changed = tuple(
        dataclasses.replace(spec, default="another-model") if spec.env == "DEFAULT_MODEL" else spec
        for spec in registry()
    )
    monkeypatch.setattr(docs, "registry", lambda: changed)
    assert "| `DEFAULT_MODEL` | `another-model` |" in docs.readme_table()
    hub = {entry["key"]: entry["input"] for entry in docs.hub_env()}
    assert hub["DEFAULT_MODEL"]["default"] == "another-model"


def test_the_boot_scripts_defaults_are_the_registrys() -> None:
    script = BOOT_SCRIPT.read_text(encoding="utf-8")
    literals = re.findall(r"\$\{([A-Z][A-Z0-9_]*):-([^}$]*)\}", script)
    assert len(literals) >= 6, literals
    for name, literal in literals:
        assert literal == declared(name).default, f"ollama_boot.sh: ${{{name}:-{literal}}}"
    used = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", script)) - SHELL_OWN
    undeclared = used - {spec.env for spec in registry()}
    assert not undeclared, f"ollama_boot.sh reads undeclared {sorted(undeclared)}"


def test_the_boot_scripts_switch_words_are_the_truthy_words() -> None:
    cases = re.findall(r"^\s*([\w| ]+)\)", BOOT_SCRIPT.read_text(encoding="utf-8"), re.MULTILINE)
    switch = [set(map(str.strip, case.split("|"))) for case in cases if "true" in case]
    assert switch == [set(TRUTHY)]


def test_the_dockerfiles_arg_and_env_values_are_the_registrys() -> None:
    instructions = _dockerfile()
    for keyword, args in instructions:
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            assert shlex.split(value)[0] == declared(name).default, f"ARG {name}"
    env: dict[str, str] = {}
    for keyword, args in instructions:
        if keyword == "ENV":
            env.update(_assignments(args))
    for name, value in env.items():
        # ${ARG} passes a build argument on, checked above.
        expected = f"${{{name}}}" if value.startswith("$") else declared(name).image
        assert value == expected, f"ENV {name}={value}"
    imaged = {spec.env for spec in registry() if spec.image is not None}
    assert imaged == {name for name, value in env.items() if not value.startswith("$")}


def test_every_variable_the_code_reads_is_declared() -> None:
    declared_names = {spec.env for spec in registry()}
    pattern = re.compile(r"""os\.environ(?:\.get\(|\[)\s*["']([A-Z][A-Z0-9_]*)["']""")
    for path in [ROOT / "rp_handler.py", *sorted((ROOT / "ollama_worker").glob("*.py"))]:
        read = set(pattern.findall(path.read_text(encoding="utf-8")))
        assert read <= declared_names, (
            f"{path.name} reads undeclared {sorted(read - declared_names)}"
        )


def test_a_bad_value_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^OLLAMA_BOOT_TIMEOUT_S='soon' is not a number$"):
        Settings.from_env({"OLLAMA_BOOT_TIMEOUT_S": "soon"})
    with pytest.raises(ConfigError, match=r"^MAX_INPUT_CHARS='2.5' must be a whole number$"):
        Settings.from_env({"MAX_INPUT_CHARS": "2.5"})
    # A secret is never echoed back.
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"VAPI_AUTH_PLAN": '{"token": "s3cret"}'})
    assert "s3cret" not in str(caught.value)
