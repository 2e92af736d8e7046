"""Settings read from the environment, once, on first use (never at import time).

Standard library only: the boot helper imports this module on the cold-start path.
"""

from __future__ import annotations

import functools
import ipaddress
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ollama_worker.vapi_auth import AuthPlan


class ConfigError(ValueError):
    """An environment variable holds a value the worker cannot use."""


def _env_str(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _env_number(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum:g}")
    return value


def _env_int(name: str, default: int, *, minimum: int = 0) -> int:
    value = _env_number(name, default, minimum=minimum)
    if value != int(value):
        raise ConfigError(f"{name}={value!r} must be a whole number")
    return int(value)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _env_auth_plan() -> AuthPlan | None:
    """VAPI_AUTH_PLAN, checked now so that a bad plan stops the worker before its first job."""
    raw = os.environ.get("VAPI_AUTH_PLAN", "").strip()
    if not raw:
        return None
    # Imported only when a plan is set; standard library only, like this module.
    from ollama_worker.vapi_auth import parse_auth_plan, secret_key

    try:
        plan = parse_auth_plan(raw)
        secret = os.environ.get("VAPI_WEBHOOK_SECRET", "")
        if not secret:
            raise ValueError("is set but VAPI_WEBHOOK_SECRET is empty: the plan needs the secret")
        secret_key(secret, plan)
    except ValueError as exc:
        raise ConfigError(f"VAPI_AUTH_PLAN: {exc}") from None
    return plan


def _env_endpointing_timeout() -> float | None:
    """VAPI_ENDPOINTING_TIMEOUT_S, or None when unset; VAPI takes 0 to 15 seconds."""
    if not os.environ.get("VAPI_ENDPOINTING_TIMEOUT_S", "").strip():
        return None
    value = _env_number("VAPI_ENDPOINTING_TIMEOUT_S", 0.0)
    if value > 15:
        raise ConfigError(f"VAPI_ENDPOINTING_TIMEOUT_S={value:g} is over VAPI's limit of 15")
    return value


def _split_host_port(hostport: str) -> tuple[str, str]:
    """Go's net.SplitHostPort: "h:p" or "[v6]:p"; ValueError when there is no port."""
    if hostport.startswith("["):
        host, bracket, rest = hostport[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(hostport)
        return host, rest[1:]
    host, colon, port = hostport.rpartition(":")
    if not colon or ":" in host:  # no port, or a bare IPv6 address
        raise ValueError(hostport)
    return host, port


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def ollama_base_url(host: str) -> str:
    """Turn an `OLLAMA_HOST` value into a client URL as Ollama reads it (envconfig.Host, and
    ollama-python's `_parse_host`): `host:port`, `:port`, a bare host (port 11434), or a URL
    whose missing port is its scheme's (http 80, https 443) and whose path is kept."""
    scheme, sep, hostport = host.strip().partition("://")
    default_port = {"http": 80, "https": 443}.get(scheme, 11434) if sep else 11434
    if not sep:
        scheme, hostport = "http", host.strip()
    hostport, _, path = hostport.partition("/")
    try:
        hostname, port_text = _split_host_port(hostport)
    except ValueError:  # no port: a bare name or address, IPv6 with or without brackets
        hostname, port_text = hostport, ""
    # Like Ollama, a port that is not a number in range falls back to the default.
    port = int(port_text) if port_text.isdigit() and int(port_text) <= 65535 else default_port
    if _is_ipv6(hostname.strip("[]")):
        hostname = hostname.strip("[]")
    # A server bound to every interface is reached on the loopback.
    if hostname in {"", "0.0.0.0", "::"}:
        hostname = "127.0.0.1"
    if _is_ipv6(hostname):
        hostname = f"[{hostname}]"
    path = path.strip("/")
    return f"{scheme}://{hostname}:{port}" + (f"/{path}" if path else "")


def _env_fraction(name: str) -> float:
    """A share from 0 to 1; unset is 0."""
    value = _env_number(name, 0.0)
    if value > 1:
        raise ConfigError(f"{name}={value:g} is a share of the model: give 0 to 1")
    return value


WORKER_MODES = ("queue", "http")


def _env_port(name: str, default: int) -> int:
    port = _env_int(name, default, minimum=1)
    if port > 65535:
        raise ConfigError(f"{name}={port} is not a TCP port (1 to 65535)")
    return port


def _env_http_mode() -> dict[str, Any]:
    """The HTTP-mode settings, one block: WORKER_MODE, RunPod's PORT / PORT_HEALTH /
    HEALTH_CHECK_PATH, and the load limits of the HTTP server."""
    mode = _env_str("WORKER_MODE", "queue").lower()
    if mode not in WORKER_MODES:
        raise ConfigError(f"WORKER_MODE={mode!r} is not one of {', '.join(WORKER_MODES)}")
    port = _env_port("PORT", 80)
    path = _env_str("HEALTH_CHECK_PATH", "/ping")
    if not path.startswith("/"):
        raise ConfigError(f"HEALTH_CHECK_PATH={path!r} must start with /")
    return {
        "worker_mode": mode,
        "http_host": _env_str("WORKER_HTTP_HOST", "0.0.0.0"),
        "http_port": port,
        "http_health_port": _env_port("PORT_HEALTH", port),
        "health_check_path": path,
        "http_queue_timeout_s": _env_number("HTTP_QUEUE_TIMEOUT_S", 5.0),
        "http_max_body_bytes": _env_int("HTTP_MAX_BODY_BYTES", 30 * 1024 * 1024, minimum=1),
    }


@dataclass(frozen=True)
class Settings:
    """Every knob the worker reads from its environment, with its default."""

    ollama_url: str
    default_model: str
    max_concurrency: int
    request_timeout_s: float
    connect_timeout_s: float
    retry_deadline_s: float
    max_input_chars: int
    stop_grace_s: float
    boot_timeout_s: float
    pull_on_boot: bool
    pull_models: tuple[str, ...]
    vapi_webhook_secret: str
    vapi_assistant_id: str
    vapi_assistant_json: str
    vapi_custom_llm_url: str
    vapi_first_message: str
    vapi_tools_module: str
    vapi_tool_timeout_s: float
    vapi_transfer_destination: str
    runpod_endpoint_id: str
    # Defaults, so that code building Settings by hand need not name every VAPI knob.
    vapi_auth_plan: AuthPlan | None = None
    vapi_handoff_destination: str = ""
    vapi_endpointing_timeout_s: float | None = None
    # Boot fails when a loaded model has less of itself in GPU memory; 0 only warns.
    min_gpu_fraction: float = 0.0
    # HTTP mode (WORKER_MODE=http, a RunPod load-balancing endpoint; see http_mode.py).
    # PORT, PORT_HEALTH and HEALTH_CHECK_PATH are RunPod's own names and defaults.
    worker_mode: str = "queue"
    http_host: str = "0.0.0.0"
    http_port: int = 80
    http_health_port: int = 80
    health_check_path: str = "/ping"
    http_queue_timeout_s: float = 5.0
    http_max_body_bytes: int = 30 * 1024 * 1024

    @classmethod
    def from_env(cls) -> Settings:
        """Read the environment now; raises ConfigError naming the first bad variable."""
        parallel = _env_int("OLLAMA_NUM_PARALLEL", 0, minimum=0)
        return cls(
            ollama_url=ollama_base_url(_env_str("OLLAMA_HOST", "127.0.0.1:11434")),
            default_model=_env_str("DEFAULT_MODEL", "voice-assistant"),
            max_concurrency=_env_int("MAX_CONCURRENCY", parallel or 4, minimum=1),
            request_timeout_s=_env_number("OLLAMA_REQUEST_TIMEOUT_S", 300.0, minimum=0.001),
            connect_timeout_s=_env_number("OLLAMA_CONNECT_TIMEOUT_S", 5.0, minimum=0.001),
            retry_deadline_s=_env_number("OLLAMA_RETRY_DEADLINE_S", 60.0),
            max_input_chars=_env_int("MAX_INPUT_CHARS", 1_000_000, minimum=1),
            stop_grace_s=_env_number("WORKER_STOP_GRACE_S", 5.0),
            boot_timeout_s=_env_number("OLLAMA_BOOT_TIMEOUT_S", 120.0, minimum=0.001),
            pull_on_boot=_env_flag("OLLAMA_PULL_ON_BOOT"),
            min_gpu_fraction=_env_fraction("OLLAMA_MIN_GPU_FRACTION"),
            pull_models=tuple(
                name for name in _env_str("PULL_MODELS", "llama3.1:8b").replace(",", " ").split()
            ),
            vapi_webhook_secret=os.environ.get("VAPI_WEBHOOK_SECRET", ""),
            vapi_assistant_id=_env_str("VAPI_ASSISTANT_ID", ""),
            vapi_assistant_json=_env_str("VAPI_ASSISTANT_JSON", ""),
            vapi_custom_llm_url=_env_str("VAPI_CUSTOM_LLM_URL", ""),
            vapi_first_message=_env_str("VAPI_FIRST_MESSAGE", "Hi! How can I help you today?"),
            vapi_tools_module=_env_str("VAPI_TOOLS_MODULE", ""),
            vapi_tool_timeout_s=_env_number("VAPI_TOOL_TIMEOUT_S", 15.0, minimum=0.001),
            vapi_transfer_destination=_env_str("VAPI_TRANSFER_DESTINATION", ""),
            runpod_endpoint_id=_env_str("RUNPOD_ENDPOINT_ID", ""),
            vapi_auth_plan=_env_auth_plan(),
            vapi_handoff_destination=_env_str("VAPI_HANDOFF_DESTINATION", ""),
            vapi_endpointing_timeout_s=_env_endpointing_timeout(),
            **_env_http_mode(),
        )


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read on first call."""
    return Settings.from_env()
