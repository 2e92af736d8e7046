"""Job inputs as pydantic models, one per job type, discriminated by `type`."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import ollama
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from ollama_worker.errors import ErrorCode, WorkerError

if TYPE_CHECKING:
    from ollama_worker.config import Settings

JSONObject = dict[str, Any]
KeepAlive = Annotated[int | float | str, Field(union_mode="left_to_right")]

# Keys that make an untyped job a chat, so older clients need not send `type`.
CHAT_KEYS = ("messages", "prompt", "message")

# Ollama 0.12.10's api.Options outside its embedded api.Runner: read on every request, so a
# caller may set them without touching the model everyone shares.
SAMPLING_OPTIONS = frozenset(
    {
        "num_keep", "seed", "num_predict", "top_k", "top_p", "min_p", "typical_p",
        "repeat_last_n", "temperature", "repeat_penalty", "presence_penalty",
        "frequency_penalty", "stop",
    }
)  # fmt: skip
# api.Runner: fixed when the model loads; a request whose values differ reloads the model
# (server/sched.go needsReload), for every job on the worker. Older releases had more
# (use_mlock, numa, low_vram ...), which 0.12.10 ignores: not sampling, so refused too.
LOAD_OPTIONS = frozenset({"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread"})
# Nesting deeper than this is no conversation; far deeper breaks Python's JSON and pydantic.
MAX_INPUT_DEPTH = 100


@dataclass(frozen=True)
class InputLimits:
    """What a caller may send: sizes, and the names beyond the sampling options it may set."""

    max_input_chars: int = 1_000_000
    max_image_bytes: int = 20_000_000
    # Extra option names (e.g. num_ctx) and top-level fields (keep_alive) callers may set.
    caller_options: frozenset[str] = frozenset()
    max_num_ctx: int = 32768

    @classmethod
    def from_settings(cls, settings: Settings) -> InputLimits:
        """The limits the operator configured."""
        return cls(
            max_input_chars=settings.max_input_chars,
            max_image_bytes=settings.max_image_bytes,
            caller_options=frozenset(settings.caller_options),
            max_num_ctx=settings.max_num_ctx,
        )


def decode_image(value: Any) -> bytes:
    """An image given as base64 text, decoded strictly; raise ValueError for anything else.

    Never a path: ollama-python reads any string naming an existing file, so a string must
    not reach it. Bytes go to the client, which encodes them again.
    """
    if not isinstance(value, str):
        raise ValueError("an image must be a base64 string")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("an image must be base64 data (not a path or URL)") from None
    if not data:
        raise ValueError("an image must not be empty")
    return data


Base64Image = Annotated[bytes, BeforeValidator(decode_image)]


def _tool_call(value: Any) -> Any:
    """A tool call as Ollama's client takes it: OpenAI's JSON-string `arguments` decoded."""
    function = value.get("function") if isinstance(value, dict) else None
    if isinstance(function, dict) and not isinstance(function.get("arguments"), dict):
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else None
            except ValueError:
                raise ValueError("function.arguments is a string but not JSON") from None
        if arguments is None:  # none given: Ollama's own default
            arguments = {}
        if not isinstance(arguments, dict):
            raise ValueError("function.arguments must be a JSON object (or a string of one)")
        value = {**value, "function": {**function, "arguments": arguments}}
    return _valid_for(ollama.Message.ToolCall, value)


def _tool(value: Any) -> Any:
    return _valid_for(ollama.Tool, value)


def _valid_for(model: type[BaseModel], value: Any) -> Any:
    """`value` if the client's own `model` takes it: what it would refuse mid-request is
    refused here, with the field named."""
    try:
        model.model_validate(value)
    except ValidationError as exc:
        raise ValueError(describe_validation_error(exc)) from None
    return value


ToolCall = Annotated[JSONObject, BeforeValidator(_tool_call)]
ToolSpec = Annotated[JSONObject, BeforeValidator(_tool)]


# UTF-16 surrogates: JSON may carry them alone ("\ud800" is valid JSON), UTF-8 cannot, so
# neither Ollama's request nor RunPod's result POST could be encoded with one in it.
SURROGATE = re.compile("[\ud800-\udfff]")


def without_surrogates(value: Any) -> Any:
    """`value` with every lone surrogate in its strings (keys too) replaced by U+FFFD."""
    if isinstance(value, str):
        return value if value.isascii() else SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {without_surrogates(key): without_surrogates(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_surrogates(item) for item in value]
    return value


def nesting_depth(value: Any, limit: int) -> int:
    """How deep containers nest in `value`, counted without recursion; stops past `limit`."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChatMessage(BaseModel):
    """One turn of a conversation, in Ollama's `/api/chat` form."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[Base64Image] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    thinking: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_content_is_empty(cls, data: Any) -> Any:
        # OpenAI-style clients send `content: null` on assistant turns that only call tools.
        if isinstance(data, dict) and data.get("content", "") is None:
            return {**data, "content": ""}
        return data


class ChatJob(_Input):
    """`chat`: messages in, an assistant reply out, whole or streamed."""

    type: Literal["chat"] = "chat"
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    message: str | None = None
    system: str | None = None
    model: str | None = Field(default=None, min_length=1)
    options: JSONObject = Field(default_factory=dict)
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    format: Literal["json"] | JSONObject | None = None
    tools: list[ToolSpec] | None = None
    think: bool | Literal["low", "medium", "high"] | None = None
    keep_alive: KeepAlive | None = None
    stream: bool = False

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens_counts_tokens(cls, value: int | None) -> int | None:
        # Ollama's num_predict also takes -1 (no limit) and -2 (fill the context); as a count
        # of tokens anything below 1 is a mistake, and those two stay reachable in `options`.
        if value is not None and value < 1:
            raise ValueError(
                f"must be at least 1, not {value} (Ollama's num_predict -1, no limit, "
                "or -2, fill the context, go in options.num_predict)"
            )
        return value

    @model_validator(mode="after")
    def _one_conversation(self) -> ChatJob:
        given = [key for key in CHAT_KEYS if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(
                "give the conversation as exactly one of `messages`, `prompt` or `message`"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.messages is not None and not self.messages:
            raise ValueError("`messages` is empty: give at least one message")
        return self

    def conversation(self) -> list[ChatMessage]:
        """The messages to send: `system` first, then `messages` or the single prompt."""
        turns = list(self.messages or [])
        text = self.prompt if self.prompt is not None else self.message
        if text is not None:
            turns.append(ChatMessage(role="user", content=text))
        if self.system is not None:
            turns.insert(0, ChatMessage(role="system", content=self.system))
        return turns

    def text_chars(self) -> int:
        """Characters of message text, for the input size cap."""
        return sum(len(turn.content) for turn in self.conversation())

    def image_bytes(self) -> int:
        """Decoded bytes of every image, for the image size cap."""
        return sum(len(image) for turn in self.conversation() for image in turn.images or [])

    def check_limits(self, limits: InputLimits) -> None:
        """Raise INVALID_INPUT for what this caller may not send or set."""
        check_input_chars(self.text_chars(), limits.max_input_chars)
        if (size := self.image_bytes()) > limits.max_image_bytes:
            raise WorkerError(
                ErrorCode.INVALID_INPUT,
                f"images are {size:,} bytes; the limit is {limits.max_image_bytes:,} "
                "(MAX_IMAGE_BYTES)",
            )
        allowed = SAMPLING_OPTIONS | limits.caller_options
        if refused := sorted(key for key in self.options if key not in allowed):
            raise WorkerError(
                ErrorCode.INVALID_INPUT,
                f"options {', '.join(refused)}: not for callers (load-time options reload the "
                f"model every job shares); callers may set {', '.join(sorted(allowed))}, and "
                "the operator may allow more with CALLER_OPTIONS",
            )
        if self.keep_alive is not None and "keep_alive" not in limits.caller_options:
            raise WorkerError(
                ErrorCode.INVALID_INPUT,
                "keep_alive: the worker keeps its models loaded for every job; a caller may "
                "not set it unless the operator adds keep_alive to CALLER_OPTIONS",
            )
        num_ctx = self.options.get("num_ctx")
        if isinstance(num_ctx, int | float) and num_ctx > limits.max_num_ctx:
            raise WorkerError(
                ErrorCode.INVALID_INPUT,
                f"options.num_ctx is {num_ctx:g}; the limit is {limits.max_num_ctx:,} "
                "(MAX_NUM_CTX)",
            )


class HealthJob(_Input):
    """`health`: what Ollama has installed and loaded, and who we are."""

    type: Literal["health"]


class VapiWebhookJob(_Input):
    """`vapi_webhook`: a VAPI server message or custom-LLM request, as VAPI sent it."""

    type: Literal["vapi_webhook"]
    payload: JSONObject
    headers: dict[str, str] | None = None
    raw_body: str | None = None
    # The HTTP method and URL VAPI called, for an HMAC plan whose payloadFormat signs them.
    method: str | None = None
    url: str | None = None


OPENAI_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/embeddings")


class OpenAIJob(_Input):
    """RunPod's OpenAI-compatible route, as the platform hands it to the handler."""

    # RunPod owns this envelope and may add keys to it: ignore those we do not know.
    model_config = ConfigDict(extra="ignore", frozen=True)

    openai_route: str
    openai_input: JSONObject | None = None

    @model_validator(mode="after")
    def _known_route(self) -> OpenAIJob:
        if self.openai_route not in OPENAI_ROUTES:
            raise ValueError(
                f"unknown openai_route {self.openai_route!r}; known: {', '.join(OPENAI_ROUTES)}"
            )
        return self


Job = Annotated[ChatJob | HealthJob | VapiWebhookJob, Field(discriminator="type")]
JOB_TYPES = ("chat", "health", "vapi_webhook")
_job_adapter: TypeAdapter[ChatJob | HealthJob | VapiWebhookJob] = TypeAdapter(Job)


def describe_validation_error(exc: ValidationError) -> str:
    """Pydantic's errors as one line: `field.path: reason; ...`."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        # Drop the union member name pydantic puts in the path ("chat.messages.0" -> "messages.0").
        location = ".".join(str(part) for part in error["loc"] if part not in JOB_TYPES)
        reason = error["msg"].removeprefix("Value error, ")
        parts.append(f"{location}: {reason}" if location else reason)
    return "; ".join(parts)


def parse_job(
    raw: Any, limits: InputLimits = InputLimits()
) -> ChatJob | HealthJob | VapiWebhookJob | OpenAIJob:
    """Validate a job's `input`, or raise INVALID_INPUT saying what is wrong in one line."""
    if not isinstance(raw, dict):
        raise WorkerError(
            ErrorCode.INVALID_INPUT,
            f"`input` must be a JSON object, not {type(raw).__name__}",
        )
    if nesting_depth(raw, MAX_INPUT_DEPTH) > MAX_INPUT_DEPTH:
        raise WorkerError(
            ErrorCode.INVALID_INPUT,
            f"`input` nests more than {MAX_INPUT_DEPTH} levels deep",
        )
    raw = without_surrogates(raw)  # bounded by the depth check above
    if "openai_route" in raw:
        model: type[OpenAIJob] | TypeAdapter[ChatJob | HealthJob | VapiWebhookJob] = OpenAIJob
    else:
        if "type" not in raw and any(key in raw for key in CHAT_KEYS):
            raw = {**raw, "type": "chat"}
        kind = raw.get("type")
        if kind not in JOB_TYPES:
            shown = "missing" if kind is None else repr(kind)
            raise WorkerError(
                ErrorCode.INVALID_INPUT,
                f"job `type` is {shown}; known types: {', '.join(JOB_TYPES)} "
                "(or send `messages`/`prompt` for a chat, or `openai_route`)",
            )
        model = _job_adapter
    try:
        job = (
            model.validate_python(raw)
            if isinstance(model, TypeAdapter)
            else model.model_validate(raw)
        )
    except ValidationError as exc:
        raise WorkerError(ErrorCode.INVALID_INPUT, describe_validation_error(exc)) from None
    if isinstance(job, ChatJob):
        job.check_limits(limits)
    return job


def check_input_chars(chars: int, limit: int) -> None:
    """Refuse a job carrying more message text than MAX_INPUT_CHARS, with INVALID_INPUT."""
    if chars > limit:
        raise WorkerError(
            ErrorCode.INVALID_INPUT,
            f"message text is {chars:,} characters; the limit is {limit:,} (MAX_INPUT_CHARS)",
        )
