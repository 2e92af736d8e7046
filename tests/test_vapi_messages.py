"""VAPI's server messages parse into the typed models the handlers take, whatever VAPI sends."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import pytest
import vapi.types
from hypothesis import given
from hypothesis import strategies as st

from ollama_worker import vapi_messages
from ollama_worker.vapi_messages import (
    ServerMessageFunctionCall,
    ServerMessageKnowledgeBaseRequest,
    ServerMessageOther,
    ServerMessageToolCalls,
    parse_server_message,
)

FIXTURES = Path(__file__).parent / "fixtures" / "vapi"
# Ours alone: the legacy function-call left VAPI's SDK, and the fallback is no type of VAPI's.
NOT_IN_THE_SDK = {ServerMessageFunctionCall, ServerMessageOther}
ANSWERED = sorted(
    (
        model
        for _, model in vars(vapi_messages).items()
        if isinstance(model, type)
        and issubclass(model, vapi_messages._ServerMessage)
        and model.__name__.startswith("ServerMessage")
        and model is not ServerMessageOther
    ),
    key=lambda model: model.__name__,
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    ["call", "toolCallList", "toolWithToolCallList", "functionCall", "messages",
     "messagesOpenAIFormatted", "id", "function", "toolCall", "name", "arguments"]
)  # fmt: skip


def _type_of(model: type[Any]) -> str:
    (literal,) = typing.get_args(model.model_fields["type"].annotation)
    return str(literal)


def test_every_answered_type_has_a_model_named_after_vapis() -> None:
    assert len(ANSWERED) == 9
    for model in ANSWERED:
        if model in NOT_IN_THE_SDK:
            continue
        sdk = getattr(vapi.types, model.__name__)  # the same name as VAPI's SDK type
        sdk_type = getattr(vapi.types, f"{model.__name__}Type")
        assert _type_of(model) in typing.get_args(sdk_type)[0].__args__, model.__name__
        assert sdk.model_fields["type"], model.__name__


# Every recorded server message (the custom-LLM request has none).
SERVER_MESSAGES = {
    path.stem: message
    for path in sorted(FIXTURES.glob("*.json"))
    if isinstance(message := json.loads(path.read_text(encoding="utf-8")).get("message"), dict)
}


@pytest.mark.parametrize("name", sorted(SERVER_MESSAGES))
def test_every_fixture_parses_to_the_model_of_its_type(name: str) -> None:
    message = SERVER_MESSAGES[name]
    parsed = parse_server_message(message)
    by_type = {_type_of(model): model for model in ANSWERED}
    assert type(parsed) is by_type.get(message["type"], ServerMessageOther)
    assert parsed.raw is message  # the hooks get what VAPI sent
    assert parsed.type == message["type"]


def test_tool_calls_come_from_either_list_vapi_uses() -> None:
    flat = parse_server_message(
        {
            "type": "tool-calls",
            "toolCallList": [{"id": "a", "function": {"name": "f", "arguments": '{"x": 1}'}}, 7],
        }
    )
    assert isinstance(flat, ServerMessageToolCalls)
    assert [(c.id, c.name_and_arguments()) for c in flat.calls()] == [("a", ("f", '{"x": 1}'))]
    nested = parse_server_message(
        {
            "type": "tool-calls",
            "toolWithToolCallList": [
                {"name": "lookup", "toolCall": {"id": "b", "parameters": {"q": "x"}}},
                {"function": {"name": "g"}, "toolCall": {"id": "c"}},
                {"name": "no call", "toolCall": "nope"},
            ],
        }
    )
    assert isinstance(nested, ServerMessageToolCalls)
    calls = [(c.id, c.name_and_arguments()) for c in nested.calls()]
    assert calls == [("b", ("lookup", {"q": "x"})), ("c", ("g", None))]


def test_a_field_that_does_not_fit_reads_as_absent() -> None:
    message = parse_server_message(
        {
            "type": "knowledge-base-request",
            "call": {"id": 5},
            "messagesOpenAIFormatted": "not a list",
            "messages": [{"role": "user", "content": "opening hours?"}, "noise"],
        }
    )
    assert isinstance(message, ServerMessageKnowledgeBaseRequest)
    assert message.call_id is None
    assert message.query() == "opening hours?"
    legacy = parse_server_message({"type": "function-call", "functionCall": ["x"]})
    assert isinstance(legacy, ServerMessageFunctionCall)
    assert legacy.function_call.name_and_arguments() == ("", None)


@given(
    kind=st.sampled_from([*(_type_of(m) for m in ANSWERED), "status-update", "brand-new"]),
    fields=st.dictionaries(FIELDS | st.text(max_size=8), JSON, max_size=6),
)
def test_a_message_with_a_string_type_always_parses(kind: str, fields: dict[str, Any]) -> None:
    message = {**fields, "type": kind}
    parsed = parse_server_message(message)
    assert parsed.type == kind
    assert parsed.raw is message
    if isinstance(parsed, ServerMessageToolCalls):
        for call in parsed.calls():
            name, _ = call.name_and_arguments()
            assert isinstance(name, str)
