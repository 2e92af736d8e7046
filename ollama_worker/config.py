"""Every setting of the worker, declared once: its variable, default, parser and meaning.

Read from the environment once, on first use (never at import time). Standard library only:
the boot helper imports this module on the cold-start path.

This module is the one home of each setting. The README's Configuration table and the inputs
of `.runpod/hub.json` are written from it (`make docs`), and `tests/test_settings_registry.py`
fails when they, the boot script's `${VAR:-default}` literals or the Dockerfile's ARG and ENV
defaults drift from it.

To add a setting the worker's Python reads, add one field to `Settings`:

    port: int = setting("PORT", "8000", "the HTTP mode's port", whole(1), hub="Port", kind="number")

(variable, default as the text one would set, the README's line, a parser from below; the Hub
input when `hub` names its title). A variable read only by the boot script, Ollama itself or the
image build goes into `OUTSIDE` as one `Setting(...)`. Then run `make docs`.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

if TYPE_CHECKING:
    from ollama_worker.vapi_auth import AuthPlan

T = TypeVar("T")
Kind = Literal["string", "number", "boolean"]

# The words that turn a switch on, wherever one is read (the boot script's are checked
# against these by the settings test).
TRUTHY = frozenset({"1", "true", "yes", "on"})

# Python's level names, and what else LOG_LEVEL may say for one of them.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_LEVEL_ALIASES = {"WARN": "WARNING", "CRITICAL": "ERROR", "FATAL": "ERROR"}


class ConfigError(ValueError):
    """An environment variable holds a value the worker cannot use."""


def truthy(text: str) -> bool:
    """Whether a switch's text turns it on: 1, true, yes or on, in any case."""
    return text.strip().lower() in TRUTHY


# The words that turn an on-by-default switch off.
FALSY = frozenset({"0", "false", "no", "off"})


def switch(raw: str) -> bool:
    """On or off, strictly: one of TRUTHY or FALSY, so that a typo is not read as off."""
    word = raw.strip().lower()
    if word not in TRUTHY | FALSY:
        raise ValueError("is not on or off (1/true/yes/on or 0/false/no/off)")
    return word in TRUTHY


# --- parsers: text (already stripped, the default when unset) -> value, or ValueError(why) ---


def text(raw: str) -> str:
    """Text as given."""
    return raw


def number(minimum: float = 0.0) -> Callable[[str], float]:
    """A decimal number of at least minimum."""

    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("is not a number") from None
        if value < minimum:
            raise ValueError(f"must be at least {minimum:g}")
        return value

    return parse


def whole(minimum: int = 0) -> Callable[[str], int]:
    """A whole number of at least minimum."""
    as_number = number(minimum)

    def parse(raw: str) -> int:
        value = as_number(raw)
        if value != int(value):
            raise ValueError("must be a whole number")
        return int(value)

    return parse


def optional(parse: Callable[[str], T]) -> Callable[[str], T | None]:
    """None when unset, else the value parse gives."""
    return lambda raw: parse(raw) if raw else None


def one_of(*choices: str) -> Callable[[str], str]:
    """One of `choices`, in any case."""

    def parse(raw: str) -> str:
        if raw.lower() not in choices:
            raise ValueError(f"is not one of {', '.join(choices)}")
        return raw.lower()

    return parse


def tcp_port(raw: str) -> int:
    """A TCP port, 1 to 65535; 0 for unset (where another setting stands in)."""
    if not raw:
        return 0
    port = whole(1)(raw)
    if port > 65535:
        raise ValueError("is not a TCP port (1 to 65535)")
    return port


def url_path(raw: str) -> str:
    """A URL path: it starts with a slash."""
    if not raw.startswith("/"):
        raise ValueError("must start with /")
    return raw


def share(raw: str) -> float:
    """A share from 0 to 1."""
    value = number(0.0)(raw)
    if value > 1:
        raise ValueError("is a share of the model: give 0 to 1")
    return value


def names(raw: str) -> tuple[str, ...]:
    """Names separated by spaces or commas."""
    return tuple(raw.replace(",", " ").split())


def log_level(raw: str) -> str:
    """One of LOG_LEVELS, in any case, or an alias of one."""
    level = LOG_LEVEL_ALIASES.get(raw.upper(), raw.upper())
    if level not in LOG_LEVELS:
        raise ValueError(f"is not one of {', '.join(LOG_LEVELS)}")
    return level


def endpointing_timeout(raw: str) -> float | None:
    """VAPI's endpointing timeout: 0 to 15 seconds, or None when unset."""
    if not raw:
        return None
    value = number(0.0)(raw)
    if value > 15:
        raise ValueError("is over VAPI's limit of 15")
    return value


def auth_plan(raw: str) -> AuthPlan | None:
    """A VAPI credential's authenticationPlan as JSON, or None when unset."""
    if not raw:
        return None
    # Imported only when a plan is set; standard library only, like this module.
    from ollama_worker.vapi_auth import parse_auth_plan

    return parse_auth_plan(raw)


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


# --- the registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One environment variable: how it is read and how the README and the Hub show it."""

    env: str
    # The value when unset or blank, as the text one would set (what the shell script and the
    # Dockerfile's ARG carry too); "" means unset.
    default: str
    # The README's line of meaning (also the Hub's description unless hub_text says more).
    meaning: str
    parse: Callable[[str], object] = text
    # The Hub input: its title ("" keeps the variable off the Hub), type and description.
    hub: str = ""
    kind: Kind = "string"
    hub_text: str = ""
    advanced: bool = True
    options: tuple[str, ...] = ()
    # "lb": an input of the load-balancing listing (.runpod/hub-lb.json) only.
    listing: Literal["any", "lb"] = "any"
    # What the Dockerfile's ENV sets it to, when it does.
    image: str | None = None
    # The README's default column, when the default alone would not say it right.
    shown: str = ""
    # A secret is never echoed in an error; `strip=False` keeps blanks around the value.
    secret: bool = False
    strip: bool = True

    def raw(self, environ: Mapping[str, str] | None = None) -> str:
        """The variable's text as set (stripped unless told not to); "" when unset."""
        value = (os.environ if environ is None else environ).get(self.env, "")
        return value.strip() if self.strip else value

    def read(self, environ: Mapping[str, str] | None = None) -> object:
        """The parsed value, or the default's; ConfigError names the variable."""
        raw = self.raw(environ)
        try:
            return self.parse(raw or self.default)
        except ValueError as exc:
            shown = "" if self.secret else f"={raw!r}"
            raise ConfigError(f"{self.env}{shown}{'' if shown else ':'} {exc}") from None

    @property
    def shipped(self) -> str:
        """The value a worker built from the image has: the image's ENV, else the default."""
        return self.default if self.image is None else self.image


def setting(
    env: str,
    default: str,
    meaning: str,
    parse: Callable[[str], T] = text,  # type: ignore[assignment]
    **more: Any,
) -> T:
    """A `Settings` field read from env: its declaration, with the parsed default."""
    spec = Setting(env, default, meaning, parse, **more)
    value = parse(default)
    return dataclasses.field(default=value, metadata={"setting": spec})


# The Ollama server's own, the boot script's, the build's and the platform's variables.
OUTSIDE: tuple[Setting, ...] = (
    Setting(
        "XDG_CACHE_HOME",
        "~/.cache",
        "where the model cache's remembered digests go when the cache itself is read-only"
        " (`ollama-worker/digests` under it)",
    ),
    Setting(
        "OLLAMA_MODELS",
        "~/.ollama/models",
        "the model store, the same at build and run time, never under `/runpod-volume` when"
        " models are baked (a mounted volume would hide them); with the model cache, on the"
        " cache's filesystem it gets the GGUF by hard link",
        hub="Ollama model store",
        hub_text="Ollama's model store. Keep /models when models are baked into the image (a"
        " volume mounted over it would hide them). With the model cache, the boot hard-links the"
        " GGUF into the store when both are on one filesystem, else copies it there after"
        " checking the free space (on RunPod the cache is a volume of its own, so give the"
        " container disk room for the GGUF).",
        image="/models",
    ),
    Setting(
        "OLLAMA_KEEP_ALIVE",
        "5m",
        "Ollama keeps models loaded for the worker's life",
        hub="Ollama keep-alive",
        hub_text="How long Ollama keeps a model loaded after use; -1 keeps it loaded for the"
        " worker's life so no job pays a reload.",
        image="-1",
    ),
    Setting(
        "OLLAMA_NUM_PARALLEL",
        "",
        "requests Ollama runs at once; keep `MAX_CONCURRENCY` equal",
        optional(whole(0)),
        hub="Ollama parallel requests",
        kind="number",
        hub_text="Requests Ollama decodes at once per model; each reserves num_ctx tokens of KV"
        " cache on the GPU.",
        image="4",
    ),
    Setting(
        "OLLAMA_FLASH_ATTENTION",
        "",
        "Ollama's flash attention: less memory and faster long prompts. Ollama 0.12.10 turns it"
        " on by itself only for gemma3, qwen3 and gpt-oss, not llama",
        truthy,
        hub="Flash attention",
        kind="boolean",
        hub_text="Ollama's flash attention: less memory and faster long prompts. On in the image"
        " (Ollama 0.12.10 leaves it off for llama); the KV cache type below needs it.",
        image="1",
    ),
    Setting(
        "OLLAMA_KV_CACHE_TYPE",
        "f16",
        "the KV cache's type: `q8_0` halves its memory (room for more context or"
        " `OLLAMA_NUM_PARALLEL`) at barely any quality cost, `q4_0` quarters it with some loss."
        " Works only with flash attention on",
        hub="KV cache type",
        hub_text="f16 (Ollama's default), q8_0 (half the KV cache memory, barely any quality"
        " loss) or q4_0 (a quarter, some loss). Works only with flash attention on.",
        shown="`f16` (Ollama's)",
    ),
    Setting(
        "OLLAMA_VERSION",
        "0.12.10",
        "build time: the Ollama the image is built on (the Dockerfile's `ARG`; `make ollama`"
        " builds the same one for the tests)",
    ),
    Setting(
        "PYTHON",
        "python3",
        "the Python the boot script runs",
        image="/opt/venv/bin/python",
    ),
    Setting(
        "PYTHONUNBUFFERED",
        "",
        "Python writes each log line at once, so none is lost when the worker stops",
        image="1",
    ),
    Setting(
        "MODELFILE",
        "",
        "the Modelfile the bake builds `DEFAULT_MODEL` from, whose `SYSTEM` prompt the built-in"
        " VAPI assistant also sends, and whose tuning a cached GGUF gets",
        shown="`Modelfile` beside the boot script",
    ),
    Setting(
        "WORKER_DIR",
        "",
        "where the boot script finds `rp_handler.py`, the `Modelfile` and the package",
        shown="the boot script's directory",
    ),
    Setting(
        "BOOT_STOP_GRACE_S",
        "2",
        "seconds between SIGTERM and SIGKILL for Ollama when the worker stops (the handler"
        " gets `WORKER_STOP_GRACE_S` + 1 s first)",
        number(0.0),
    ),
    Setting(
        "RUNPOD_LOG_LEVEL",
        "",
        "the level of RunPod's SDK's own logger, when it should differ from `LOG_LEVEL`",
        shown="`LOG_LEVEL`",
    ),
    Setting(
        "RUNPOD_WEBHOOK_GET_JOB",
        "",
        "the SDK's job URL: when set (and the worker runs without `--rp_serve_api`), the"
        " worker runs the SDK's production job loop",
        shown="set by RunPod",
    ),
    Setting(
        "RUNPOD_REALTIME_PORT",
        "",
        "when set, RunPod's SDK serves its realtime API instead of the production job loop",
        shown="unset",
    ),
    Setting(
        "RUNPOD_RUNSYNC_URL",
        "",
        "the relay (`examples/vapi_relay.py`) only: the `/runsync` URL to send jobs to instead"
        " of the endpoint's",
    ),
)


@dataclass(frozen=True)
class Settings:
    """Every knob the worker's Python reads from its environment, with its default."""

    default_model: str = setting(
        "DEFAULT_MODEL",
        "voice-assistant",
        "the model a job gets when it names none (ours, built from the `Modelfile`)",
        hub="Default model",
        advanced=False,
        hub_text="Ollama model a job uses when it names none. It must be baked into the image"
        " (the build creates it from the Modelfile) unless OLLAMA_PULL_ON_BOOT is"
        " on; the worker refuses to start without it.",
    )
    ollama_url: str = setting(
        "OLLAMA_HOST",
        "127.0.0.1:11434",
        "where Ollama listens: `host:port`, `:port`, a host (port 11434) or a URL, read as"
        " Ollama reads it: `http://host` with no port means port 80, `https://host` 443, and a"
        " path is kept",
        lambda raw: ollama_base_url(raw),
        hub="Ollama address",
        hub_text="Where the local Ollama server listens (host:port); the boot script and the"
        " handler both read it. Keep it on the loopback.",
        image="127.0.0.1:11434",
    )
    max_concurrency: int = setting(
        "MAX_CONCURRENCY",
        "4",
        "jobs one worker runs at once",
        whole(1),
        hub="Jobs per worker",
        kind="number",
        advanced=False,
        hub_text="How many jobs one worker runs at once. Keep it equal to OLLAMA_NUM_PARALLEL so"
        " no job queues inside Ollama.",
        image="4",
        shown="`OLLAMA_NUM_PARALLEL` if set, else `4`",
    )
    request_timeout_s: float = setting(
        "OLLAMA_REQUEST_TIMEOUT_S",
        "300",
        "read timeout of every call to Ollama",
        number(0.001),
        hub="Ollama request timeout (s)",
        kind="number",
        hub_text="Longest wait for Ollama's answer to one request (read timeout).",
    )
    connect_timeout_s: float = setting(
        "OLLAMA_CONNECT_TIMEOUT_S",
        "5",
        "connect timeout of every call to Ollama",
        number(0.001),
        hub="Ollama connect timeout (s)",
        kind="number",
        hub_text="Longest wait to connect to Ollama.",
    )
    retry_deadline_s: float = setting(
        "OLLAMA_RETRY_DEADLINE_S",
        "60",
        "how long a call keeps retrying before `OLLAMA_UNAVAILABLE`",
        number(0.0),
        hub="Retry deadline (s)",
        kind="number",
        hub_text="How long a job keeps retrying Ollama while it is busy or restarting; 0"
        " disables retries.",
    )
    max_input_chars: int = setting(
        "MAX_INPUT_CHARS",
        "1000000",
        "the most message text a job may carry",
        whole(1),
        hub="Max input characters",
        kind="number",
        hub_text="Jobs whose messages hold more characters than this are refused.",
    )
    # --- hostile input (issue 16): how much a caller may send, and what it may set ---
    max_image_bytes: int = setting(
        "MAX_IMAGE_BYTES",
        "20000000",
        "the most image data (decoded bytes, all images together) a chat job may carry",
        whole(0),
        hub="Max image bytes",
        kind="number",
        hub_text="Chat jobs whose images decode to more bytes than this are refused.",
    )
    caller_options: tuple[str, ...] = setting(
        "CALLER_OPTIONS",
        "",
        "names beyond the sampling options a caller may set, comma or space separated: Ollama"
        " load-time options (`num_ctx`, `num_batch`, `num_gpu`, `main_gpu`, `use_mmap`,"
        " `num_thread`) and `keep_alive`. Each lets any caller reload or unload the model every"
        " job shares",
        names,
        hub="Caller options",
        hub_text="Ollama options beyond sampling that callers may set (e.g. num_ctx,keep_alive)."
        " Each lets any caller reload or unload the model every job shares; empty refuses them.",
    )
    max_num_ctx: int = setting(
        "MAX_NUM_CTX",
        "32768",
        "the largest `options.num_ctx` a caller may ask for, when `CALLER_OPTIONS` allows"
        " `num_ctx`",
        whole(1),
        hub="Max caller num_ctx",
        kind="number",
        hub_text="The largest context a caller may ask for when CALLER_OPTIONS allows num_ctx.",
    )
    log_level: str = setting(
        "LOG_LEVEL",
        "INFO",
        "the log level of the worker, RunPod's SDK (unless `RUNPOD_LOG_LEVEL` is set) and httpx:"
        " `DEBUG`, `INFO`, `WARNING` or `ERROR`. At `INFO` and above the log holds one line per"
        " job (id, kind, items, time) and never message text, replies, tool arguments or"
        " secrets; a caller's value in a line (a job's `type`, a VAPI call id) is JSON-quoted and"
        " cut unless it is a plain token, so no newline can start a forged line; `DEBUG` shows"
        " the SDK's every item and httpx's every request",
        log_level,
        hub="Log level",
        hub_text="Handler log level.",
        options=LOG_LEVELS,
    )
    stop_grace_s: float = setting(
        "WORKER_STOP_GRACE_S",
        "5",
        "after SIGTERM, how long jobs in flight get to finish before they fail with"
        " `WORKER_STOPPED`",
        number(0.0),
        hub="Stop grace",
        kind="number",
        hub_text="After SIGTERM, how long jobs in flight get to finish before they fail with"
        " WORKER_STOPPED; keep it within the container's stop timeout (about 10 s, with 3 s"
        " left for Ollama).",
    )
    boot_timeout_s: float = setting(
        "OLLAMA_BOOT_TIMEOUT_S",
        "120",
        "how long the boot script waits for Ollama to answer",
        number(0.001),
        hub="Ollama boot timeout (s)",
        kind="number",
        hub_text="Seconds to wait for Ollama to answer at start-up before the worker gives up"
        " and exits.",
        image="120",
    )
    wait_for_ollama_s: float = setting(
        "WORKER_WAIT_FOR_OLLAMA_S",
        "0",
        "when set, `rp_handler.py` takes no job until Ollama answers, and exits 1 if it does not"
        " within this long; deployed, the SDK's fitness checks run meanwhile",
        number(0.0),
        shown="unset; the boot script sets `OLLAMA_BOOT_TIMEOUT_S`",
    )
    pull_on_boot: bool = setting(
        "OLLAMA_PULL_ON_BOOT",
        "",
        "`1`: pull `DEFAULT_MODEL` at boot when it is missing (the handler then starts after the"
        " pull); otherwise a missing model stops the boot",
        truthy,
        hub="Pull on boot",
        kind="boolean",
        hub_text="Pull DEFAULT_MODEL at start-up when the image lacks it. Off by default: a"
        " download on every cold start costs minutes and bandwidth; prefer baking models into"
        " the image.",
        shown="off",
    )
    pull_models: tuple[str, ...] = setting(
        "PULL_MODELS",
        "llama3.1:8b",
        "build time: the models baked into the image (space or comma separated); `none` bakes"
        " nothing (an image for the [model cache](#models-without-baking-runpods-model-cache))",
        names,
        hub="Baked models",
        hub_text="Models the image build pulls (space or comma separated); a build argument of"
        " the Dockerfile. Changing it here does not download anything: rebuild with"
        " --build-arg PULL_MODELS=... instead.",
    )
    # Boot fails when a loaded model has less of itself in GPU memory; 0 only warns.
    min_gpu_fraction: float = setting(
        "OLLAMA_MIN_GPU_FRACTION",
        "0",
        "`0` to `1`: the boot stops the worker (exit 1) when a loaded model has less of itself in"
        " GPU memory. Whatever its value, the boot logs one line per model not wholly there,"
        " e.g. `boot: voice-assistant:latest: 50% in GPU memory, the rest on the CPU; replies"
        " will be slow`; a value outside 0 to 1 is a configuration error",
        share,
        hub="Minimum share in GPU memory",
        kind="number",
        hub_text="0 to 1: the boot stops the worker when the loaded model has less of itself in"
        " GPU memory (the rest runs on the CPU, several times slower). 0 only logs a warning.",
        shown="unset (warn only)",
    )
    # --- The model cache (ollama_worker/model_cache.py): with HF_MODEL set, the boot imports a
    # GGUF that RunPod downloaded into the Hugging Face hub cache and serves it as DEFAULT_MODEL.
    hf_model: str = setting(
        "HF_MODEL",
        "",
        "a Hugging Face GGUF repository, e.g. `bartowski/Qwen2.5-7B-Instruct-GGUF` (also"
        " `hf.co/...`, a huggingface.co URL, a trailing `:<quant>`): the boot creates"
        " `DEFAULT_MODEL` from its GGUF in the model cache, replacing a baked model of that name",
        hub="Hugging Face GGUF repository",
        advanced=False,
        hub_text="Serve a GGUF from RunPod's model cache instead of the baked model: a Hugging"
        " Face repository id such as 'bartowski/Qwen2.5-7B-Instruct-GGUF'. Set the endpoint's"
        " Model to the same repository so RunPod downloads it before the worker starts. The"
        " boot creates the default model from it with the Modelfile's system prompt and"
        " parameters; a repository missing from the cache stops the worker, naming what the"
        " cache holds. Empty: the baked model. The GGUF is copied to the container disk unless"
        " it can be hard-linked: give the container disk room for it.",
        shown="unset (the baked model)",
    )
    hf_quantization: str = setting(
        "HF_QUANTIZATION",
        "",
        "which GGUF of the repository, matched as a whole tag in the file name, any case"
        " (`Q4_K_M` is not `Q4_K_S`, `Q4` is not `Q4_K_M`); set, it must exist",
        hub="Quantization",
        advanced=False,
        hub_text="Which GGUF of the repository: a quantization tag of its file names, e.g."
        " Q4_K_M, Q8_0, IQ4_XS. Empty: Q4_K_M, or the smallest GGUF when the repository has"
        " none (the log says which).",
        shown="`Q4_K_M`, else the smallest",
    )
    hf_model_file: str = setting(
        "HF_MODEL_FILE",
        "",
        "the exact file (its path in the repository; any shard names a split GGUF); wins over"
        " `HF_QUANTIZATION`",
        hub="GGUF file",
        hub_text="The exact GGUF file of the repository (its path in it); overrides the"
        " quantization. Any shard names a split GGUF, whose shards are joined into one file.",
    )
    hf_hub_cache: str = setting(
        "HF_HUB_CACHE",
        "/runpod-volume/huggingface-cache/hub",
        "Hugging Face's own variable: where the hub cache is (RunPod's model cache by default)",
        hub="Model cache path",
        hub_text="Where the Hugging Face hub cache is; RunPod's model cache puts it here."
        " Change it only if RunPod moves it.",
    )
    modelfile_tuning: bool = setting(
        "MODELFILE_TUNING",
        "on",
        "`off`: serve the GGUF as it is, without the `Modelfile`'s `SYSTEM`, `PARAMETER`s and"
        " `TEMPLATE`",
        switch,
        hub="Voice tuning on the cached model",
        kind="boolean",
        hub_text="On: the cached GGUF gets the Modelfile's SYSTEM, PARAMETERs and TEMPLATE (the"
        " GGUF's own chat template when the Modelfile has none). Off: the GGUF is served as it"
        " is.",
    )
    vapi_webhook_secret: str = setting(
        "VAPI_WEBHOOK_SECRET",
        "",
        "the secret `vapi_webhook` jobs must prove (see Authentication)",
        hub="VAPI webhook secret",
        hub_text="Secret of the VAPI server-URL credential (sent as X-Vapi-Secret, as a Bearer"
        " token, or used for the HMAC x-signature). When set, vapi_webhook jobs that do not"
        " prove it are refused.",
        shown="unset (no check)",
        secret=True,
        strip=False,
    )
    vapi_auth_plan: AuthPlan | None = setting(
        "VAPI_AUTH_PLAN",
        "",
        "the credential's `authenticationPlan` as JSON, VAPI's field names, no secret:"
        ' `{"type": "hmac", "algorithm": ...}` or `{"type": "bearer", ...}`; a bad plan stops'
        " the worker at start",
        auth_plan,
        hub="VAPI credential plan",
        hub_text="The authenticationPlan of the VAPI webhook credential, as JSON with VAPI's"
        " field names and without the secret (which stays in VAPI_WEBHOOK_SECRET):"
        ' {"type": "hmac", "algorithm": "sha256", ...} or {"type": "bearer", "headerName":'
        " ...}. Unset: X-Vapi-Secret, a Bearer token or the default HMAC are accepted. A bad"
        " plan stops the worker at start.",
        shown="unset (any of VAPI's default credentials)",
        secret=True,
    )
    vapi_assistant_id: str = setting(
        "VAPI_ASSISTANT_ID",
        "",
        'assistant-request answer `{"assistantId": ...}`',
        hub="VAPI assistant id",
        hub_text="Answer to VAPI assistant-request messages: the id of a saved VAPI assistant"
        " (takes precedence over the two below).",
    )
    vapi_assistant_json: str = setting(
        "VAPI_ASSISTANT_JSON",
        "",
        "a transient assistant for assistant-request: inline JSON or a file path",
        hub="VAPI assistant JSON",
        hub_text="Answer to VAPI assistant-request messages: a transient assistant as a JSON"
        " object, inline or the path of a file in the image (used when no assistant id is"
        " set).",
    )
    vapi_custom_llm_url: str = setting(
        "VAPI_CUSTOM_LLM_URL",
        "",
        "the built-in assistant's model URL",
        hub="VAPI custom LLM URL",
        hub_text="Custom-LLM URL of the assistant generated for assistant-request messages;"
        " empty means this endpoint's https://api.runpod.ai/v2/<RUNPOD_ENDPOINT_ID>/openai/v1.",
        shown="`https://api.runpod.ai/v2/$RUNPOD_ENDPOINT_ID/openai/v1`; in HTTP mode"
        " `https://$RUNPOD_ENDPOINT_ID.api.runpod.ai/v1`",
    )
    vapi_first_message: str = setting(
        "VAPI_FIRST_MESSAGE",
        "Hi! How can I help you today?",
        "the built-in assistant's greeting",
        hub="VAPI first message",
        hub_text="What the generated assistant says first on a call.",
    )
    vapi_tools_module: str = setting(
        "VAPI_TOOLS_MODULE",
        "",
        "the Python module of tools, e.g. `examples.vapi_tools`",
        hub="VAPI tools module",
        hub_text="Python module (importable in the image) whose functions answer VAPI"
        " tool-calls; empty means every tool call answers with an error.",
    )
    vapi_tool_timeout_s: float = setting(
        "VAPI_TOOL_TIMEOUT_S",
        "15",
        "time limit of one tool call",
        number(0.001),
        hub="VAPI tool timeout (s)",
        kind="number",
        hub_text="Longest a single tool call may run before it answers with an error.",
    )
    vapi_tool_threads: int = setting(
        "VAPI_TOOL_THREADS",
        "4",
        "threads for sync tools and hooks, their own (DNS and the rest of the worker never wait"
        " for them); a sync tool keeps its thread until it returns, even past its timeout, and a"
        " call that finds every thread taken fails at once with an error for that call",
        whole(1),
        hub="VAPI tool threads",
        kind="number",
        hub_text="How many sync VAPI tools may run at once; a call that finds them all busy"
        " fails at once with an error for that call.",
    )
    vapi_transfer_destination: str = setting(
        "VAPI_TRANSFER_DESTINATION",
        "",
        'JSON destination (inline or a file path), e.g. `{"type": "number", "number":'
        ' "+15550123"}`, when the `transfer_destination` hook is absent or returns `None`',
        hub="VAPI transfer destination",
        hub_text="Answer to VAPI transfer-destination-request messages: a destination JSON"
        " object (or a whole answer with destination and message), inline or the path of a"
        " file in the image.",
    )
    vapi_handoff_destination: str = setting(
        "VAPI_HANDOFF_DESTINATION",
        "",
        "JSON destination (inline or a file path) for `handoff-destination-request`, e.g."
        ' `{"type": "assistant", "assistantName": "Billing"}`, when the `handoff_destination`'
        " hook is absent or returns `None`",
        hub="VAPI handoff destination",
        hub_text="Default answer to handoff-destination-request (squad handoffs) when the tools"
        " module has no handoff_destination hook: a destination JSON object, inline or a file"
        " path.",
    )
    vapi_endpointing_timeout_s: float | None = setting(
        "VAPI_ENDPOINTING_TIMEOUT_S",
        "",
        "seconds (`0` to `15`) for `call.endpointing.request` when the `endpointing_timeout`"
        " hook is absent or returns `None`",
        endpointing_timeout,
        hub="VAPI endpointing timeout",
        hub_text="Default answer to call.endpointing.request (seconds, 0 to 15) when the tools"
        " module has no endpointing_timeout hook.",
    )
    runpod_endpoint_id: str = setting(
        "RUNPOD_ENDPOINT_ID",
        "",
        "used for the default custom-LLM URL (and by the relay)",
        shown="set by RunPod",
    )
    # HTTP mode (WORKER_MODE=http, a RunPod load-balancing endpoint; see http_mode.py). PORT,
    # PORT_HEALTH and HEALTH_CHECK_PATH are RunPod's own names and defaults.
    worker_mode: str = setting(
        "WORKER_MODE",
        "queue",
        "`queue`: the RunPod job worker; `http`: a load-balancing endpoint's HTTP server (see"
        " [Load-balancing endpoint](#load-balancing-endpoint-vapi-straight-to-the-worker)); any"
        " other value stops the boot (exit 2)",
        one_of("queue", "http"),
    )
    http_port: int = setting(
        "PORT",
        "80",
        "HTTP mode: the port the server listens on (RunPod's own variable)",
        tcp_port,
    )
    http_health_port: int = setting(
        "PORT_HEALTH",
        "",
        "HTTP mode: the port of the health check; when it differs from `PORT`, a second listener"
        " that serves only the health check (RunPod's own variable)",
        tcp_port,
        shown="`PORT`",
    )
    health_check_path: str = setting(
        "HEALTH_CHECK_PATH",
        "/ping",
        "HTTP mode: the health check's path (RunPod's own variable)",
        url_path,
    )
    http_host: str = setting(
        "WORKER_HTTP_HOST",
        "0.0.0.0",
        "HTTP mode: the address to listen on (RunPod reaches the worker on every interface; the"
        " tests use 127.0.0.1)",
    )
    http_queue_timeout_s: float = setting(
        "HTTP_QUEUE_TIMEOUT_S",
        "5",
        "HTTP mode: how long a generation waits for one of the `MAX_CONCURRENCY` slots before"
        " 429 `WORKER_BUSY`",
        number(0.0),
        hub="Wait for a free slot (s)",
        kind="number",
        hub_text="How long a generation request waits for one of the MAX_CONCURRENCY slots"
        " before it is answered 429 (Retry-After: 1), so that an overloaded worker answers fast"
        " instead of holding calls.",
        listing="lb",
    )
    http_max_body_bytes: int = setting(
        "HTTP_MAX_BODY_BYTES",
        "31457280",
        "HTTP mode: larger request bodies get 413 (30 MiB; RunPod's load balancer allows 30 MB)",
        whole(1),
        hub="Max request body (bytes)",
        kind="number",
        hub_text="Requests with a larger body are refused with 413 (RunPod's load balancer"
        " allows 30 MB).",
        listing="lb",
    )

    @property
    def health_port(self) -> int:
        """The health check's port: PORT_HEALTH, or PORT when unset (RunPod's rule)."""
        return self.http_health_port or self.http_port

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the environment now; raises ConfigError naming the first bad variable."""
        environ = os.environ if environ is None else environ
        parallel = declared("OLLAMA_NUM_PARALLEL").read(environ)
        values = {field.name: spec.read(environ) for field, spec in _fields()}
        # The two rules that join settings. Unset, MAX_CONCURRENCY follows Ollama's parallelism.
        if parallel and not declared("MAX_CONCURRENCY").raw(environ):
            values["max_concurrency"] = parallel
        plan = values["vapi_auth_plan"]
        if plan is not None:
            _check_plan_secret(cast("AuthPlan", plan), cast(str, values["vapi_webhook_secret"]))
        return cls(**values)  # type: ignore[arg-type]


def _check_plan_secret(plan: AuthPlan, secret: str) -> None:
    """A plan needs VAPI_WEBHOOK_SECRET, and one it can use (base64 when it says so)."""
    from ollama_worker.vapi_auth import secret_key

    try:
        if not secret:
            raise ValueError("is set but VAPI_WEBHOOK_SECRET is empty: the plan needs the secret")
        secret_key(secret, plan)
    except ValueError as exc:
        raise ConfigError(f"VAPI_AUTH_PLAN: {exc}") from None


def _fields() -> Iterator[tuple[dataclasses.Field[object], Setting]]:
    for field in dataclasses.fields(Settings):
        yield field, field.metadata["setting"]


def registry() -> tuple[Setting, ...]:
    """Every setting: the worker's (in `Settings` order), then those read outside Python."""
    return tuple(spec for _, spec in _fields()) + OUTSIDE


def declared(env: str) -> Setting:
    """The declaration of one variable."""
    return next(spec for spec in registry() if spec.env == env)


DEFAULTS = Settings()
"""The built-in defaults, as a worker with none of its variables set would read them."""


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read on first call."""
    return Settings.from_env()
