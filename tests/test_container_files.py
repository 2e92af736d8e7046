"""Static rules for the container files: lint clean, layer order, model store, Hub metadata.

No Docker engine is needed: the Dockerfile is read as text, which is enough to hold the rules
a broken image would otherwise reveal only after a 5 GB build.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shlex
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ollama_worker.config import DEFAULTS, Settings, declared, names

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
BOOT_SCRIPT = ROOT / "ollama_boot.sh"
MODELFILE = ROOT / "Modelfile"
HUB_JSON = ROOT / ".runpod" / "hub.json"
# The load-balancing listing (WORKER_MODE=http): a release of its own puts it in hub.json's place.
HUB_LB_JSON = ROOT / ".runpod" / "hub-lb.json"
TESTS_JSON = ROOT / ".runpod" / "tests.json"

# Set by RunPod itself on every worker: a Hub input with an empty default would override it.
PLATFORM_ENV = {"RUNPOD_ENDPOINT_ID", "PORT", "PORT_HEALTH", "HEALTH_CHECK_PATH"}
# HTTP mode's own settings: off the queue listing (WORKER_MODE is fixed on the load-balancing
# one; WORKER_HTTP_HOST on neither: the load balancer reaches the worker on every interface).
HTTP_ENV = {"WORKER_MODE", "WORKER_HTTP_HOST", "HTTP_QUEUE_TIMEOUT_S", "HTTP_MAX_BODY_BYTES"}
# Set by the boot script for the handler (from OLLAMA_BOOT_TIMEOUT_S), never by hand.
BOOT_SET_ENV = {"WORKER_WAIT_FOR_OLLAMA_S"}
# Read by the Ollama server or the boot script rather than config.py, yet worth exposing.
SERVER_ENV = {
    "OLLAMA_NUM_PARALLEL",
    "OLLAMA_KEEP_ALIVE",
    "OLLAMA_BOOT_TIMEOUT_S",
    "OLLAMA_FLASH_ATTENTION",
    "OLLAMA_KV_CACHE_TYPE",
}
# What Go's strconv.ParseBool reads as true (Ollama's envconfig.BoolWithDefault uses it).
GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
# KV cache types Ollama 0.12.10 quantizes to (fs/ggml/ggml.go SupportsKVCacheType).
KV_CACHE_TYPES = {"f16", "q8_0", "q4_0"}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH (pip install -r requirements-dev.txt)")
    return path


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def _env_assignments(args: str) -> dict[str, str]:
    """KEY=VALUE pairs of one ENV instruction (the `ENV KEY VALUE` form too)."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def _index(instructions: list[tuple[str, str]], keyword: str, needle: str) -> int:
    for i, (kw, args) in enumerate(instructions):
        if kw == keyword and needle in args:
            return i
    pytest.fail(f"no {keyword} ... {needle} in the Dockerfile")


def _arg_defaults(instructions: list[tuple[str, str]]) -> dict[str, str]:
    defaults = {}
    for kw, args in instructions:
        if kw == "ARG" and "=" in args:
            name, value = args.split("=", 1)
            defaults[name.strip()] = shlex.split(value)[0] if value.strip() else ""
    return defaults


def test_boot_script_is_shellcheck_clean() -> None:
    result = subprocess.run(
        [_tool("shellcheck"), str(BOOT_SCRIPT)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_boot_script_is_executable() -> None:
    assert BOOT_SCRIPT.stat().st_mode & 0o111, "the image runs it directly: keep its +x bit"


def test_dockerfile_is_hadolint_clean() -> None:
    # Run from the repository root so hadolint picks up .hadolint.yaml.
    result = subprocess.run(
        [_tool("hadolint"), "Dockerfile"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_pinned_ollama() -> None:
    instructions = _instructions()
    image = next(args for kw, args in instructions if kw == "FROM").split()[0]
    # The tag may be a build argument (OLLAMA_VERSION): what ships is its default.
    for arg, default in _arg_defaults(instructions).items():
        image = image.replace(f"${{{arg}}}", default)
    name, _, tag = image.partition(":")
    assert name == "ollama/ollama"
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"pin a release tag, not {tag or 'latest'!r}"


def test_models_are_baked_before_the_handler_code_is_copied() -> None:
    instructions = _instructions()
    bake = _index(instructions, "RUN", "ollama_boot.sh bake")
    # What is copied before the bake is only what bake runs.
    early = {
        word
        for kw, args in instructions[:bake]
        if kw == "COPY"
        for word in args.split()[:-1]
        if not word.startswith("--")
    }
    assert "rp_handler.py" not in early
    assert "ollama_worker/" not in early
    assert early <= {
        "requirements.txt",
        "ollama_boot.sh",
        "Modelfile",
        "ollama_worker/__init__.py",
        "ollama_worker/config.py",
        "ollama_worker/boot.py",
    }, early
    handler_copy = _index(instructions, "COPY", "rp_handler.py")
    assert handler_copy > bake


def test_entrypoint_replaces_the_base_images_ollama() -> None:
    entrypoints = [args for kw, args in _instructions() if kw == "ENTRYPOINT"]
    assert entrypoints, "the base image's ENTRYPOINT is /bin/ollama: it must be replaced"
    final = json.loads(entrypoints[-1])
    assert final in ([], ["/app/ollama_boot.sh"]), final
    if not final:
        cmd = [args for kw, args in _instructions() if kw == "CMD"]
        assert cmd
        assert "ollama_boot.sh" in cmd[-1]


def test_model_store_is_fixed_and_off_the_network_volume() -> None:
    instructions = _instructions()
    bake = _index(instructions, "RUN", "ollama_boot.sh bake")
    values = [
        (i, env["OLLAMA_MODELS"])
        for i, (kw, args) in enumerate(instructions)
        if kw == "ENV"
        for env in [_env_assignments(args)]
        if "OLLAMA_MODELS" in env
    ]
    assert len(values) == 1, f"set OLLAMA_MODELS exactly once (build = run): {values}"
    index, store = values[0]
    assert index < bake, "OLLAMA_MODELS must be set before the bake step"
    assert store.startswith("/"), store
    assert not store.startswith("/runpod-volume"), "a mounted network volume would hide it"
    # No RUN may point the bake at another store either.
    assert all("OLLAMA_MODELS=" not in args for kw, args in instructions if kw == "RUN")


def test_server_env_matches_the_worker() -> None:
    env: dict[str, str] = {}
    for kw, args in _instructions():
        if kw == "ENV":
            env.update(_env_assignments(args))
    assert env["OLLAMA_HOST"] == "127.0.0.1:11434"
    assert env["OLLAMA_KEEP_ALIVE"] == "-1"
    assert env["MAX_CONCURRENCY"] == env["OLLAMA_NUM_PARALLEL"]
    assert env["PYTHON"] == "/opt/venv/bin/python"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PULL_MODELS"] == "${PULL_MODELS}"
    assert env["DEFAULT_MODEL"] == "${DEFAULT_MODEL}"


def test_flash_attention_is_on_and_the_kv_cache_type_is_one_ollama_knows() -> None:
    """Ollama 0.12.10 turns flash attention on by itself only for gemma3, qwen3 and gpt-oss
    (fs/ggml/ggml.go GGML.FlashAttention), not for the llama we bake, and quantizes the KV
    cache only with it on (llm/server.go NewLlamaServer): the image turns it on."""
    env: dict[str, str] = {}
    for kw, args in _instructions():
        if kw == "ENV":
            env.update(_env_assignments(args))
    assert env.get("OLLAMA_FLASH_ATTENTION") in GO_TRUE, env.get("OLLAMA_FLASH_ATTENTION")
    assert env.get("OLLAMA_KV_CACHE_TYPE", "f16") in KV_CACHE_TYPES
    hub = {e["key"]: e["input"] for e in json.loads(HUB_JSON.read_text())["config"]["env"]}
    assert hub["OLLAMA_FLASH_ATTENTION"]["default"] is True  # the Hub must not turn it off
    assert hub["OLLAMA_KV_CACHE_TYPE"]["default"] in KV_CACHE_TYPES
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in ("OLLAMA_FLASH_ATTENTION", "OLLAMA_KV_CACHE_TYPE"):
        assert re.search(rf"^\| `{name}` \|", readme, re.MULTILINE), f"README lacks {name}"


def test_modelfile_base_is_the_default_pulled_model() -> None:
    froms = [
        line.split(None, 1)[1].strip()
        for line in MODELFILE.read_text(encoding="utf-8").splitlines()
        if line.upper().startswith("FROM ")
    ]
    assert len(froms) == 1, froms
    pulled = _arg_defaults(_instructions())["PULL_MODELS"].replace(",", " ").split()
    assert froms[0] in pulled, f"Modelfile FROM {froms[0]} is not pulled by the build {pulled}"
    assert froms[0] in names(declared("PULL_MODELS").default)


def test_default_model_agrees_everywhere() -> None:
    dockerfile_default = _arg_defaults(_instructions())["DEFAULT_MODEL"]
    assert dockerfile_default == DEFAULTS.default_model
    hub_env = {e["key"]: e["input"] for e in json.loads(HUB_JSON.read_text())["config"]["env"]}
    assert hub_env["DEFAULT_MODEL"]["default"] == dockerfile_default


def test_dockerignore_keeps_dev_files_out() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for required in (".git", ".venv", "tests", "standins", "bench", "scripts", "**/__pycache__"):
        assert required in patterns, required
    # RunPod runs test_input.json and exits if it finds one next to the handler.
    assert "test_input.json" in patterns


def _config_env_names() -> set[str]:
    """What `Settings.from_env` reads: every field's variable, and Ollama's parallelism."""
    names = {field.metadata["setting"].env for field in dataclasses.fields(Settings)}
    assert len(names) > 10, f"found too few env names in config.py: {names}"
    return names | {"OLLAMA_NUM_PARALLEL"}


def test_hub_json_lists_every_env_var_the_worker_reads() -> None:
    hub = json.loads(HUB_JSON.read_text(encoding="utf-8"))
    assert hub["type"] == "serverless"
    for field in ("title", "description", "category", "iconUrl"):
        assert hub[field], field
    config = hub["config"]
    assert config["runsOn"] == "GPU"
    assert config["gpuCount"] >= 1
    assert config["containerDiskInGb"] >= 20
    assert config["allowedCudaVersions"]
    keys = [entry["key"] for entry in config["env"]]
    assert len(keys) == len(set(keys)), "duplicate env keys"
    missing = (
        (_config_env_names() | SERVER_ENV) - PLATFORM_ENV - BOOT_SET_ENV - HTTP_ENV - set(keys)
    )
    assert not missing, f"hub.json lacks inputs for {sorted(missing)}"
    assert not PLATFORM_ENV & set(keys), "never let the Hub override RunPod's own variables"
    for entry in config["env"]:
        field = entry["input"]
        assert field["name"], entry["key"]
        assert field["description"], entry["key"]
        assert field["type"] in {"string", "number", "boolean"}, entry["key"]
        assert "default" in field, f"{entry['key']} has no default"


def test_hub_defaults_are_the_workers_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    env = json.loads(HUB_JSON.read_text(encoding="utf-8"))["config"]["env"]
    names = {entry["key"] for entry in env} | _config_env_names()
    for name in names:
        monkeypatch.delenv(name, raising=False)
    built_in = Settings.from_env()
    for entry in env:
        default = entry["input"]["default"]
        # The Hub hands every value over as text; booleans as "true"/"false".
        text = str(default).lower() if isinstance(default, bool) else str(default)
        monkeypatch.setenv(entry["key"], text)
    assert Settings.from_env() == built_in


def test_the_load_balancing_listing_is_the_queue_listing_in_http_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = json.loads(HUB_JSON.read_text(encoding="utf-8"))
    lb = json.loads(HUB_LB_JSON.read_text(encoding="utf-8"))
    assert lb["config"].pop("endpointType") == "LB"
    assert {k: v for k, v in lb["config"].items() if k != "env"} == {
        k: v for k, v in queue["config"].items() if k != "env"
    }
    static = {e["key"]: e["value"] for e in lb["config"]["env"] if "value" in e}
    assert static == {"WORKER_MODE": "http"}
    inputs = {e["key"]: e["input"] for e in lb["config"]["env"] if "input" in e}
    queue_keys = {e["key"] for e in queue["config"]["env"]}
    assert set(inputs) == queue_keys | {"HTTP_QUEUE_TIMEOUT_S", "HTTP_MAX_BODY_BYTES"}
    assert not PLATFORM_ENV & set(inputs)
    for name in set(inputs) | _config_env_names():
        monkeypatch.delenv(name, raising=False)
    built_in = Settings.from_env()
    for key, field in inputs.items():
        default = field["default"]
        monkeypatch.setenv(key, str(default).lower() if isinstance(default, bool) else str(default))
    for key, value in static.items():
        monkeypatch.setenv(key, value)
    assert Settings.from_env() == dataclasses.replace(built_in, worker_mode="http")


def test_tests_json_holds_the_sample_jobs() -> None:
    document = json.loads(TESTS_JSON.read_text(encoding="utf-8"))
    tests = document["tests"]
    inputs = [t["input"] for t in tests]
    assert all(t["name"] and t["timeout"] > 0 for t in tests)
    assert any("prompt" in i and not i.get("stream") for i in inputs), "a chat job"
    assert any(i.get("stream") is True for i in inputs), "a streaming chat job"
    assert {"type": "health"} in inputs
    vapi = [i for i in inputs if i.get("type") == "vapi_webhook"]
    assert vapi
    assert vapi[0]["payload"]["message"]["type"] == "status-update"
    assert document["config"]["gpuCount"] >= 1
    assert document["config"]["gpuTypeId"]


def _smoke_module() -> Any:
    spec = importlib.util.spec_from_file_location("smoke", ROOT / "scripts" / "smoke.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_checks_reject_bad_answers() -> None:
    smoke = _smoke_module()
    chat = {"message": {"role": "assistant", "content": "Hello there."}}
    assert smoke.check_chat([chat], "voice-assistant") == "Hello there."
    with pytest.raises(smoke.SmokeFailure):
        smoke.check_chat([{"message": {"content": " "}}], "voice-assistant")
    chunks = [{"message": {"content": "Hel"}}, {"message": {"content": "lo"}}, {"done": True}]
    assert "Hello" in smoke.check_stream(chunks, "voice-assistant")
    with pytest.raises(smoke.SmokeFailure):
        smoke.check_stream([{"done": True}], "voice-assistant")
    health = {"models": ["voice-assistant:latest"], "default_model": "voice-assistant"}
    smoke.check_health([health], "voice-assistant")
    with pytest.raises(smoke.SmokeFailure):
        smoke.check_health([{"models": ["llama3.1:8b"]}], "voice-assistant")
    smoke.check_vapi([{"response": {}}], "voice-assistant")
    with pytest.raises(smoke.SmokeFailure):
        smoke.check_vapi([{"response": {"error": "x"}}], "voice-assistant")
    with pytest.raises(smoke.SmokeFailure):
        smoke._raise_on_error([{"error": "model not found"}])
    assert smoke.output_items({"a": 1}) == [{"a": 1}]
    assert smoke.checker_for({"prompt": "x", "stream": True}) is smoke.check_stream
    assert smoke.checker_for({"type": "health"}) is smoke.check_health


def test_smoke_fails_without_a_worker(capsys: pytest.CaptureFixture[str]) -> None:
    smoke = _smoke_module()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert smoke.main([f"http://127.0.0.1:{port}"]) == 1
    out = capsys.readouterr().out
    assert out.count("FAIL ") == len(json.loads(TESTS_JSON.read_text())["tests"])


def test_smoke_needs_an_api_key_for_a_deployed_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    assert _smoke_module().main(["--endpoint-id", "abc123"]) == 2
