"""Job inputs as pydantic models, one per job type, discriminated by `type`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from ollama_worker.errors import ErrorCode, WorkerError

JSONObject = dict[str, Any]
KeepAlive = Annotated[int | float | str, Field(union_mode="left_to_right")]

# Keys that make an untyped job a chat, so older clients need not send `type`.
CHAT_KEYS = ("messages", "prompt", "message")


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChatMessage(BaseModel):
    """One turn of a conversation, in Ollama's `/api/chat` form."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[JSONObject] | None = None
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
    tools: list[JSONObject] | None = None
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
    raw: Any, *, max_input_chars: int
) -> ChatJob | HealthJob | VapiWebhookJob | OpenAIJob:
    """Validate a job's `input`, or raise INVALID_INPUT saying what is wrong in one line."""
    if not isinstance(raw, dict):
        raise WorkerError(
            ErrorCode.INVALID_INPUT,
            f"`input` must be a JSON object, not {type(raw).__name__}",
        )
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
        check_input_chars(job.text_chars(), max_input_chars)
    return job


def check_input_chars(chars: int, limit: int) -> None:
    """Refuse a job carrying more message text than MAX_INPUT_CHARS, with INVALID_INPUT."""
    if chars > limit:
        raise WorkerError(
            ErrorCode.INVALID_INPUT,
            f"message text is {chars:,} characters; the limit is {limit:,} (MAX_INPUT_CHARS)",
        )
