"""VAPI's server messages as typed models, parsed once at the edge of the `vapi_webhook` job.

Named after the types of VAPI's SDK (`vapi_server_sdk`: `vapi.types.ServerMessageToolCalls`
and so on), with only the fields the worker reads. VAPI's payloads are read, never trusted:
a field that does not fit counts as absent, a list keeps only its objects, and a message of a
type the worker does not know (VAPI adds them) parses as `ServerMessageOther`, which is
answered `{}`. Parsing a message whose `type` is a string never fails. Every model keeps the
message as VAPI sent it (`raw`), for the tools module's hooks and for the log.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)

T = TypeVar("T")


def _or_absent(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """A field that does not fit its type is read as absent (None)."""
    try:
        return handler(value)
    except ValidationError:
        return None


def _objects(value: Any) -> list[Any]:
    """The JSON objects of a list; anything else is an empty list."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _list(value: Any) -> list[Any]:
    """A list as it is; anything else is an empty list."""
    return value if isinstance(value, list) else []


def _object(value: Any) -> dict[str, Any]:
    """A JSON object as it is; anything else is an empty one."""
    return value if isinstance(value, dict) else {}


# A field read leniently: absent when it is not of its type.
Maybe = Annotated[T | None, WrapValidator(_or_absent)]
Objects = Annotated[list[T], BeforeValidator(_objects)]
AnyList = Annotated[list[Any], BeforeValidator(_list)]


class _Read(BaseModel):
    """A piece of a VAPI payload: VAPI's field names, every other field kept but unread."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Call(_Read):
    """The call a message belongs to (VAPI's `Call`), of which the worker reads the id."""

    id: Maybe[str] = None


class ToolCallFunction(_Read):
    """A tool call's `function`: its name and arguments (a JSON string or an object)."""

    name: Any = None
    arguments: Any = None


class ToolCall(_Read):
    """One tool call (VAPI's `ToolCall`, or the legacy `functionCall`), wherever this VAPI
    version put the name and the arguments."""

    id: Any = None
    name: Any = None
    function: Maybe[ToolCallFunction] = None
    arguments: Any = None
    parameters: Any = None

    def name_and_arguments(self) -> tuple[str, Any]:
        """The tool's name and its raw arguments: the function's, else the call's own."""
        function = self.function
        name = (function.name if function else None) or self.name or ""
        sources = ((function, "arguments"), (self, "arguments"), (self, "parameters"))
        for source, key in sources:
            if source is not None and key in source.model_fields_set:
                return str(name), getattr(source, key)
        return str(name), None


class ToolWithToolCall(_Read):
    """An item of `toolWithToolCallList`: a tool's configuration and the call to it."""

    name: Any = None
    function: Maybe[ToolCallFunction] = None
    tool_call: Maybe[dict[str, Any]] = Field(default=None, alias="toolCall")


class _ServerMessage(_Read):
    """What every server message has: its type and call, and the message as VAPI sent it."""

    type: str
    call: Maybe[Call] = None
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_raw(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        message = handler(data)
        if isinstance(data, dict):
            message._raw = data
        return message

    @property
    def raw(self) -> dict[str, Any]:
        """The message as VAPI sent it."""
        return self._raw

    @property
    def call_id(self) -> str | None:
        """The id of the call, to tie our output and logs to VAPI's."""
        return self.call.id if self.call else None


class ServerMessageAssistantRequest(_ServerMessage):
    """assistant-request: which assistant answers the call."""

    type: Literal["assistant-request"]


class ServerMessageToolCalls(_ServerMessage):
    """tool-calls: the calls the model asks for."""

    type: Literal["tool-calls"]
    tool_call_list: Objects[ToolCall] = Field(default_factory=list, alias="toolCallList")
    tool_with_tool_call_list: Objects[ToolWithToolCall] = Field(
        default_factory=list, alias="toolWithToolCallList"
    )

    def calls(self) -> list[ToolCall]:
        """The calls, from `toolCallList`, else from `toolWithToolCallList`."""
        if self.tool_call_list:
            return self.tool_call_list
        return [
            # The item's own name is the fallback for a toolCall that does not repeat it.
            ToolCall.model_validate(
                {"name": item.name or (item.function.name if item.function else None)}
                | item.tool_call
            )
            for item in self.tool_with_tool_call_list
            if item.tool_call is not None
        ]


class ServerMessageFunctionCall(_ServerMessage):
    """function-call: VAPI's legacy form of one tool call (not in its SDK any more)."""

    type: Literal["function-call"]
    function_call: Annotated[ToolCall, BeforeValidator(_object)] = Field(
        default_factory=ToolCall, alias="functionCall"
    )


class ServerMessageTransferDestinationRequest(_ServerMessage):
    """transfer-destination-request: where to transfer the call."""

    type: Literal["transfer-destination-request"]


class ServerMessageHandoffDestinationRequest(_ServerMessage):
    """handoff-destination-request: which squad member takes over."""

    type: Literal["handoff-destination-request"]


class ServerMessageKnowledgeBaseRequest(_ServerMessage):
    """knowledge-base-request: documents for the conversation so far."""

    type: Literal["knowledge-base-request"]
    messages_open_ai_formatted: AnyList = Field(
        default_factory=list, alias="messagesOpenAIFormatted"
    )
    messages: AnyList = Field(default_factory=list)

    def conversation(self) -> list[Any]:
        """The turns, in OpenAI's format when VAPI sent that."""
        return self.messages_open_ai_formatted or self.messages

    def query(self) -> str:
        """The caller's last words: the content of the last user turn."""
        return next(
            (
                str(turn.get("content") or turn.get("message") or "")
                for turn in reversed(self.conversation())
                if isinstance(turn, dict) and turn.get("role") == "user"
            ),
            "",
        )


class ServerMessageCallEndpointingRequest(_ServerMessage):
    """call.endpointing.request: how long to wait before the caller's turn ends."""

    type: Literal["call.endpointing.request"]


class ServerMessageCampaignPredial(_ServerMessage):
    """campaign.predial: whether to dial a campaign's contact."""

    type: Literal["campaign.predial"]


class ServerMessageVoiceRequest(_ServerMessage):
    """voice-request: speech to synthesise (this worker has none)."""

    type: Literal["voice-request"]


class ServerMessageOther(_ServerMessage):
    """Any other type: informational (status-update, end-of-call-report...) or new."""


ServerMessage = Annotated[
    Annotated[ServerMessageAssistantRequest, Tag("assistant-request")]
    | Annotated[ServerMessageToolCalls, Tag("tool-calls")]
    | Annotated[ServerMessageFunctionCall, Tag("function-call")]
    | Annotated[ServerMessageTransferDestinationRequest, Tag("transfer-destination-request")]
    | Annotated[ServerMessageHandoffDestinationRequest, Tag("handoff-destination-request")]
    | Annotated[ServerMessageKnowledgeBaseRequest, Tag("knowledge-base-request")]
    | Annotated[ServerMessageCallEndpointingRequest, Tag("call.endpointing.request")]
    | Annotated[ServerMessageCampaignPredial, Tag("campaign.predial")]
    | Annotated[ServerMessageVoiceRequest, Tag("voice-request")]
    | Annotated[ServerMessageOther, Tag("other")],
    # A callable, not the field name: a type without a model of its own falls to "other".
    Discriminator(lambda value: _tag(value)),
]
_adapter: TypeAdapter[ServerMessage] = TypeAdapter(ServerMessage)
# The types answered by a model of their own: the union's tags, but the fallback's.
_TYPES = frozenset(get_args(member)[1].tag for member in get_args(get_args(ServerMessage)[0])) - {
    "other"
}


def _tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if isinstance(kind, str) and kind in _TYPES else "other"


def parse_server_message(message: dict[str, Any]) -> ServerMessage:
    """The typed form of a server message whose `type` is a string; never raises for one."""
    return _adapter.validate_python(message)
