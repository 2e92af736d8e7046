"""Request bodies parsed and checked as Ollama 0.12.10 binds them, with its error texts."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from standins.ollama.models import valid_model_name
from standins.ollama.wire import HandlerError, RequestError, parse_keep_alive

THINK_LEVELS = ("high", "medium", "low")
# api.Options (0.12.10 api/types.go): each option's Go kind, as FromMap checks it.
_INTEGER_OPTIONS = "num_keep seed num_predict top_k repeat_last_n num_ctx num_batch num_gpu"
_FLOAT_OPTIONS = (
    "top_p min_p typical_p temperature repeat_penalty presence_penalty frequency_penalty"
)
OPTION_KINDS: dict[str, str] = {
    **dict.fromkeys(f"{_INTEGER_OPTIONS} main_gpu num_thread".split(), "integer"),
    **dict.fromkeys(_FLOAT_OPTIONS.split(), "float32"),
    "use_mmap": "boolean",
    "stop": "array",
}


def _is_number(value: Any) -> TypeGuard[int | float]:
    """A JSON number (Go's float64), not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def option_type_error(options: Mapping[str, Any]) -> str | None:
    """The error api.Options.FromMap gives an option of the wrong type (unknown options are
    only logged there, null ones skipped), or None."""
    for key, value in options.items():
        kind = OPTION_KINDS.get(key)
        if kind is None or value is None:
            continue
        if kind in ("integer", "float32") and not _is_number(value):
            return f'option "{key}" must be of type {kind}'
        if kind == "boolean" and not isinstance(value, bool):
            return f'option "{key}" must be of type boolean'
        if kind == "array" and not isinstance(value, list):
            return f'option "{key}" must be of type array'
        if kind == "array" and not all(isinstance(item, str) for item in value):
            return f'option "{key}" must be of an array of strings'
    return None


@dataclass
class GenRequest:
    """A generation request reduced to what decides the fake's answer."""

    model: str
    messages: list[dict[str, Any]]
    options: dict[str, Any]
    stream: bool
    keep_alive: float | None = None
    format: Any = None
    think: Any = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    preload: bool = False
    include_usage: bool = False


# --------------------------------------------------------------------------
# request parsing (one per route)


# Python's JSON syntax errors and the context encoding/json names for the same mistake.
_GO_SYNTAX_CONTEXT = {
    "Expecting value": "looking for beginning of value",
    "Expecting property name": "looking for beginning of object key string",
    "Expecting ':' delimiter": "after object key",
    "Invalid control character at": "in string literal",
    "Invalid \\escape": "in string escape code",
}


def _go_char(char: str) -> str:
    """A character as encoding/json's quoteChar writes it."""
    if char == "'":
        return "'\\''"
    if char == '"':
        return "'\"'"
    return "'" + json.dumps(char)[1:-1] + "'"


def _innermost(text: str, pos: int) -> str:
    """The bracket that is open at ``pos`` ("{", "[" or "")."""
    stack: list[str] = []
    in_string = escaped = False
    for char in text[:pos]:
        if in_string:
            in_string = escaped or char != '"'
            escaped = not escaped and char == "\\"
        elif char == '"':
            in_string = True
        elif char in "{[":
            stack.append(char)
        elif char in "}]" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def decode_json(raw: bytes) -> Any:
    """A request body as gin's ShouldBindJSON reads it (json.Decoder: the first value, what
    follows it unread), or a 400 with encoding/json's text: "unexpected EOF" for a body that
    stops early, "invalid character 'x' looking for beginning of value" and the like."""
    text = raw.decode("utf-8", errors="replace")
    start = len(text) - len(text.lstrip())
    try:
        return json.JSONDecoder().raw_decode(text, start)[0]
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
            raise RequestError(400, "unexpected EOF") from None
        context = next(
            (go for py, go in _GO_SYNTAX_CONTEXT.items() if exc.msg.startswith(py)), None
        )
        if context is None:  # Expecting ',' delimiter
            in_object = _innermost(text, exc.pos) == "{"
            context = "after object key:value pair" if in_object else "after array element"
        # Python points at an escape's backslash, Go at the character after it.
        pos = exc.pos + 1 if context == "in string escape code" else exc.pos
        raise RequestError(400, f"invalid character {_go_char(text[pos])} {context}") from None


def _require_object(body: Any, go_type: str) -> dict[str, Any]:
    """Reject non-object bodies the way Go's json.Unmarshal does (null is {})."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        kinds: dict[type, str] = {list: "array", str: "string"}
        kind = kinds.get(type(body), "number")
        raise RequestError(400, f"json: cannot unmarshal {kind} into Go value of type {go_type}")
    return body


_GO_KINDS: dict[str, Callable[[Any], bool]] = {
    "bool": lambda v: isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "int": lambda v: _is_number(v) and float(v).is_integer(),
    "float64": _is_number,
    "float32": _is_number,
}


def _check_fields(body: dict[str, Any], go_struct: str, fields: Mapping[str, str]) -> None:
    """Bind errors of typed struct fields, in the body's order as encoding/json meets them
    (null leaves a field unset): "json: cannot unmarshal string into Go struct field
    ChatCompletionRequest.temperature of type float64"."""
    for key, value in body.items():
        go_type = fields.get(key)
        if go_type is None or value is None or _GO_KINDS[go_type](value):
            continue
        kind = _json_kind(value)
        if kind == "number":  # a number that does not fit: Go quotes its literal
            kind = f"number {value}"
        raise RequestError(
            400,
            f"json: cannot unmarshal {kind} into Go struct field {go_struct}.{key} "
            f"of type {go_type}",
        )


def _bind_error(value: Any, go_field: str, go_type: str) -> RequestError:
    """encoding/json's UnmarshalTypeError for a value of the wrong JSON kind."""
    return RequestError(
        400,
        f"json: cannot unmarshal {_json_kind(value)} into Go struct field {go_field} "
        f"of type {go_type}",
    )


def _check_stream(body: dict[str, Any], default: bool, go_type: str) -> bool:
    """The ``stream`` flag, typed like Go's ``*bool``."""
    value = body.get("stream")
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bind_error(value, f"{go_type}.stream", "bool")
    return value


def _check_think(value: Any) -> Any:
    """Validate ``think`` like api.ThinkValue."""
    if value is None or isinstance(value, bool) or value in THINK_LEVELS:
        return value
    raise RequestError(
        400,
        f'invalid think value: "{value}" (must be "high", "medium", "low", true, or false)',
    )


def _check_format(value: Any) -> Any:
    """``format``: "" is unset; anything but "json" or a schema object is refused only by
    the runner, once the model is loaded (0.12.10 llm/server.go Completion)."""
    return None if value in (None, "") else value


def _check_keep_alive(value: Any) -> float | None:
    """Decode ``keep_alive`` or reject it with Go's error text."""
    if value is None:
        return None
    try:
        return parse_keep_alive(value)
    except (TypeError, ValueError) as exc:
        raise RequestError(400, str(exc)) from None


def _check_options(value: Any, go_field: str = "ChatRequest.options") -> dict[str, Any]:
    """``options`` must be an object (a Go ``map[string]any``)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bind_error(value, go_field, "map[string]interface {}")
    return dict(value)


def _check_model(body: dict[str, Any]) -> str:
    """The requested model name, or 400 "model is required"."""
    name = body.get("model")
    if not valid_model_name(name):
        raise HandlerError(400, "model is required")
    return str(name)


def parse_chat(body: Any) -> GenRequest:
    """Decode a POST /api/chat body (api.ChatRequest)."""
    body = _require_object(body, "api.ChatRequest")
    messages = body.get("messages") or []
    if not isinstance(messages, list):
        raise _bind_error(messages, "ChatRequest.messages", "[]api.Message")
    for message in messages:
        if not isinstance(message, dict):
            # api.Message decodes through an alias type (its UnmarshalJSON), and Go names it.
            raise _bind_error(message, "ChatRequest.messages", "api.Alias")
    tools = body.get("tools") or []
    return GenRequest(
        model=_check_model(body),
        messages=messages,
        options=_check_options(body.get("options")),
        stream=_check_stream(body, True, "ChatRequest"),
        keep_alive=_check_keep_alive(body.get("keep_alive")),
        format=_check_format(body.get("format")),
        think=_check_think(body.get("think")),
        tools=tools if isinstance(tools, list) else [],
        preload=not messages,
    )


def parse_generate(body: Any) -> GenRequest:
    """Decode a POST /api/generate body (api.GenerateRequest)."""
    body = _require_object(body, "api.GenerateRequest")
    prompt = body.get("prompt") or ""
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("system"), str) and body["system"]:
        messages.append({"role": "system", "content": body["system"]})
    messages.append({"role": "user", "content": str(prompt)})
    return GenRequest(
        model=_check_model(body),
        messages=messages,
        options=_check_options(body.get("options"), "GenerateRequest.options"),
        stream=_check_stream(body, True, "GenerateRequest"),
        keep_alive=_check_keep_alive(body.get("keep_alive")),
        format=_check_format(body.get("format")),
        think=_check_think(body.get("think")),
        preload=not prompt and not body.get("images"),
    )


def _openai_options(body: dict[str, Any]) -> dict[str, Any]:
    """Map OpenAI sampling fields onto Ollama options like openai.go does."""
    options: dict[str, Any] = {"temperature": body.get("temperature", 1.0)}
    stop = body.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list):
        options["stop"] = [s for s in stop if isinstance(s, str)]
    # Only max_tokens: 0.12.10 has no max_completion_tokens field, so it goes unread.
    if body.get("max_tokens") is not None:
        options["num_predict"] = body["max_tokens"]
    for key in ("seed", "frequency_penalty", "presence_penalty"):
        if body.get(key) is not None:
            options[key] = body[key]
    options["top_p"] = body.get("top_p", 1.0)
    return options


def _go_type(value: Any) -> str:
    """What Go's ``%T`` prints for a decoded JSON value held in an ``any``."""
    if value is None:
        return "<nil>"
    kinds = {bool: "bool", str: "string", list: "[]interface {}", dict: "map[string]interface {}"}
    return kinds.get(type(value), "float64")


def _json_kind(value: Any) -> str:
    """How encoding/json names a JSON value in an UnmarshalTypeError."""
    if isinstance(value, bool):
        return "bool"
    kinds: dict[type, str] = {dict: "object", list: "array", str: "string"}
    return kinds.get(type(value), "number")


def _check_openai_bind(messages: list[Any]) -> None:
    """Binding errors of ChatCompletionRequest: ``function.arguments`` is a Go string."""
    for message in messages:
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        for call in calls if isinstance(calls, list) else []:
            function = call.get("function") if isinstance(call, dict) else None
            arguments = function.get("arguments") if isinstance(function, dict) else None
            if arguments is not None and not isinstance(arguments, str):
                # The innermost struct is anonymous, so Go prints an empty struct name.
                raise RequestError(
                    400,
                    f"json: cannot unmarshal {_json_kind(arguments)} into Go struct field "
                    ".messages.tool_calls.function.arguments of type string",
                )


def _openai_tool_calls(calls: Any) -> list[dict[str, Any]]:
    """OpenAI tool calls as api.ToolCall, like FromCompletionToolCall: arguments must be a
    JSON object (or null) encoded in a string."""
    converted = []
    for call in calls if isinstance(calls, list) else []:
        function = (call.get("function") if isinstance(call, dict) else None) or {}
        try:
            arguments = json.loads(function.get("arguments") or "")
        except ValueError:
            raise RequestError(400, "invalid tool call arguments") from None
        if arguments is not None and not isinstance(arguments, dict):
            raise RequestError(400, "invalid tool call arguments")
        name = function.get("name") or ""
        converted.append({"function": {"name": name, "arguments": arguments or {}}})
    return converted


_IMAGE_PREFIXES = tuple(f"data:image/{kind};base64," for kind in ("jpeg", "jpg", "png", "webp"))


def _openai_image(part: dict[str, Any]) -> str:
    """The base64 data of an ``image_url`` part, validated like FromChatRequest."""
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise RequestError(400, "invalid message format")
    for prefix in ("data:;base64,", *_IMAGE_PREFIXES):
        if url.startswith(prefix):
            data = url[len(prefix) :]
            break
    else:
        raise RequestError(400, "invalid image input")
    try:
        base64.b64decode(data, validate=True)
    except ValueError:
        raise RequestError(400, "invalid message format") from None
    return data


def _openai_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """OpenAI messages as api.Message, like 0.12.10 openai.FromChatRequest: string content,
    content parts (each ``text`` or ``image_url`` part its own message), or null content
    only beside tool_calls."""
    converted: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict):
            raise RequestError(400, "invalid message format")
        role = message.get("role") or ""
        content = message.get("content")
        calls = message.get("tool_calls")
        if isinstance(content, str):
            converted.append({"role": role, "content": content})
            if calls:
                converted[-1]["tool_calls"] = _openai_tool_calls(calls)
        elif isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    converted.append({"role": role, "content": part["text"]})
                elif kind == "image_url":
                    converted.append({"role": role, "content": "", "images": [_openai_image(part)]})
                else:
                    raise RequestError(400, "invalid message format")
            if converted and calls:
                converted[-1]["tool_calls"] = _openai_tool_calls(calls)
        elif calls is None:  # content may be null only when the message calls tools
            raise RequestError(400, f"invalid message content type: {_go_type(content)}")
        else:
            converted.append({"role": role, "content": "", "tool_calls": _openai_tool_calls(calls)})
    return converted


# The typed fields of openai.ChatCompletionRequest and openai.CompletionRequest (0.12.10
# openai/openai.go); the others are `any`, structs or slices, checked where they are read.
OPENAI_CHAT_FIELDS = {
    "model": "string",
    "stream": "bool",
    "max_tokens": "int",
    "seed": "int",
    "temperature": "float64",
    "frequency_penalty": "float64",
    "presence_penalty": "float64",
    "top_p": "float64",
    "reasoning_effort": "string",
}
OPENAI_COMPLETION_FIELDS = {
    **dict.fromkeys(("model", "prompt", "suffix"), "string"),
    **dict.fromkeys(("frequency_penalty", "presence_penalty", "temperature", "top_p"), "float32"),
    **dict.fromkeys(("max_tokens", "seed"), "int"),
    "stream": "bool",
}


def parse_openai_chat(body: Any) -> GenRequest:
    """Decode a POST /v1/chat/completions body (openai.ChatCompletionRequest)."""
    body = _require_object(body, "openai.ChatCompletionRequest")
    _check_fields(body, "ChatCompletionRequest", OPENAI_CHAT_FIELDS)
    messages = body.get("messages")
    if messages is not None and not isinstance(messages, list):
        raise _bind_error(messages, "ChatCompletionRequest.messages", "[]openai.Message")
    if isinstance(messages, list):
        _check_openai_bind(messages)  # gin's ShouldBindJSON runs before any other check
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "[] is too short - 'messages'")
    converted = _openai_messages(messages)
    fmt = None
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        kind = str(response_format.get("type", "")).strip().lower()
        if kind == "json_object":
            fmt = "json"
        elif kind == "json_schema":
            fmt = (response_format.get("json_schema") or {}).get("schema")
    effort = (body.get("reasoning") or {}).get("effort") or body.get("reasoning_effort")
    think: Any = None
    if effort:
        if effort not in (*THINK_LEVELS, "none"):
            raise RequestError(
                400,
                f"invalid reasoning value: '{effort}' "
                '(must be "high", "medium", "low", or "none")',
            )
        think = False if effort == "none" else effort
    tools = body.get("tools") or []
    return GenRequest(
        model=_check_model(body),
        messages=converted,
        options=_openai_options(body),
        stream=_check_stream(body, False, "ChatCompletionRequest"),
        format=fmt,
        think=think,
        tools=tools if isinstance(tools, list) else [],
        include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
    )


def parse_openai_completion(body: Any) -> GenRequest:
    """Decode a POST /v1/completions body (openai.CompletionRequest)."""
    body = _require_object(body, "openai.CompletionRequest")
    _check_fields(body, "CompletionRequest", OPENAI_COMPLETION_FIELDS)
    prompt = body.get("prompt") or ""
    return GenRequest(
        model=_check_model(body),
        messages=[{"role": "user", "content": prompt}],
        options=_openai_options(body),
        stream=_check_stream(body, False, "CompletionRequest"),
        include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
        preload=not prompt,
    )
