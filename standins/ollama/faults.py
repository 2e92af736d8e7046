"""FakeConfig (every switch of the stand-in), its coercion, the faults, FAKE_OLLAMA_* env."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from standins.ollama.models import DEFAULT_MODELS, THINKING_FAMILIES
from standins.ollama.wire import BUSY_ERROR, VERSION, server_keep_alive

FAULT_MESSAGES: dict[int, str] = {
    400: "invalid request: fake fault",
    500: "llama runner process has terminated: exit status 2",
    502: "bad gateway",
    503: BUSY_ERROR,
    504: "gateway timeout",
}
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})


# --------------------------------------------------------------------------
# configuration


@dataclass
class FakeConfig:
    """Every run-time knob of the fake; the defaults are fast and fault-free."""

    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    state_file: str | None = None
    start_delay_s: float = 0.0
    load_delay_s: float = 0.0
    first_token_delay_s: float = 0.0
    token_delay_s: float = 0.0
    header_delay_s: float = 0.0
    num_parallel: int = 4
    max_queue: int = 512
    keep_alive: str = "5m"
    reply: str | None = None
    fail_next: list[dict[str, Any]] = field(default_factory=list)
    fail_rate: float = 0.0
    fail_status: int = 503
    seed: int = 0
    pull_fail: list[str] = field(default_factory=list)
    pullable: str = ".*"
    crash_after_s: float | None = None
    crash_on_start: bool = False
    never_healthy: bool = False
    version: str = VERSION
    gpu_fraction: float = 1.0
    thinking_models: list[str] = field(default_factory=lambda: list(THINKING_FAMILIES))
    completion_only_models: list[str] = field(default_factory=list)


def _as_bool(value: Any) -> bool:
    """Read a boolean from JSON, a flag or an environment variable."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE_WORDS:
        return True
    if text in _FALSE_WORDS:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _as_str_list(value: Any) -> list[str]:
    """Read a list of names from JSON or a comma-separated string."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"not a list of strings: {value!r}")


FAULT_KINDS = (
    "status",
    "midstream_error",
    "drop",
    "delay_s",
    "empty_stream",
    "bad_line",
    "html_error",
    "final_text",
)
# nginx's own error page, as a proxy in front of Ollama answers when Ollama is down.
HTML_ERROR_PAGE = (
    "<html>\r\n<head><title>{status} {phrase}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {phrase}</h1></center>\r\n<hr><center>nginx/1.24.0</center>\r\n"
    "</body>\r\n</html>\r\n"
)


def _check_fault(spec: Any) -> dict[str, Any]:
    """Validate one fault spec so a typo fails loudly instead of doing nothing."""
    if not isinstance(spec, dict):
        raise TypeError(f"fault spec must be an object: {spec!r}")
    kinds = set(FAULT_KINDS) & spec.keys()
    if len(kinds) != 1:
        raise ValueError(f"fault spec needs exactly one of {', '.join(FAULT_KINDS)}: {spec!r}")
    if "status" in spec and not 400 <= int(spec["status"]) <= 599:
        raise ValueError(f"fault status must be 400..599: {spec!r}")
    if "drop" in spec and spec["drop"] not in ("before_headers", "mid_stream"):
        raise ValueError(f"drop must be before_headers or mid_stream: {spec!r}")
    return dict(spec)


def _as_faults(value: Any) -> list[dict[str, Any]]:
    """Read a fault list from JSON text, one spec object or a list of them."""
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else []
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise TypeError(f"fail_next must be a list of fault specs: {value!r}")
    return [_check_fault(spec) for spec in value]


def _optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap a converter so None (or an empty string) means "unset"."""

    def wrapped(value: Any) -> Any:
        return None if value is None or value == "" else convert(value)

    return wrapped


_COERCERS: dict[Any, Callable[[Any], Any]] = {
    list[str]: _as_str_list,
    list[dict[str, Any]]: _as_faults,
    str: str,
    str | None: _optional(str),
    float: float,
    float | None: _optional(float),
    int: int,
    bool: _as_bool,
}
_FIELD_TYPES: dict[str, Any] = get_type_hints(FakeConfig)
CONFIG_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(FakeConfig))


def coerce_config(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and convert config changes; raises ValueError on a bad one."""
    result: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in _FIELD_TYPES:
            raise ValueError(f"unknown config field {name!r}")
        try:
            result[name] = _COERCERS[_FIELD_TYPES[name]](value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad value for {name}: {exc}") from None
    if result.get("num_parallel", 1) < 1:
        raise ValueError("num_parallel must be at least 1")
    if result.get("max_queue", 0) < 0:
        raise ValueError("max_queue must not be negative")
    if not 0.0 <= result.get("fail_rate", 0.0) <= 1.0:
        raise ValueError("fail_rate must be within 0..1")
    if not 0.0 <= result.get("gpu_fraction", 1.0) <= 1.0:
        raise ValueError("gpu_fraction must be within 0..1")
    if "keep_alive" in result:
        server_keep_alive(result["keep_alive"])
    if "pullable" in result:
        re.compile(result["pullable"])
    return result


# --------------------------------------------------------------------------
# process mode


def _flag_names(name: str) -> list[str]:
    """``--load-delay-s`` and, for ``*_s`` fields, also ``--load-delay``."""
    flags = ["--" + name.replace("_", "-")]
    if name.endswith("_s"):
        flags.append("--" + name[:-2].replace("_", "-"))
    return flags


def _env_names(name: str) -> list[str]:
    """``FAKE_OLLAMA_LOAD_DELAY_S`` and, for ``*_s`` fields, ``..._LOAD_DELAY``."""
    names = ["FAKE_OLLAMA_" + name.upper()]
    if name.endswith("_s"):
        names.append("FAKE_OLLAMA_" + name[:-2].upper())
    return names


def config_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Config changes from OLLAMA_* server variables and FAKE_OLLAMA_* switches."""
    changes: dict[str, Any] = {}
    for env_name, field_name in (
        ("OLLAMA_KEEP_ALIVE", "keep_alive"),
        ("OLLAMA_NUM_PARALLEL", "num_parallel"),
        ("OLLAMA_MAX_QUEUE", "max_queue"),
    ):
        if environ.get(env_name):
            changes[field_name] = environ[env_name]
    for name in CONFIG_FIELDS:
        for env_name in _env_names(name):
            if env_name in environ:
                changes[name] = environ[env_name]
    return changes
