"""Shared helpers of the VAPI tests: payload fixtures, VAPI SDK validation, HMAC signing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pydantic
import vapi.types as vt
from openai.types.chat import ChatCompletion, ChatCompletionChunk

FIXTURES = Path(__file__).parent / "fixtures" / "vapi"
SECRET = "s3cr3t-Vapi-9f8e7d6c"
TOOLS_MODULE = "tests.vapi_tools_for_tests"
TRANSFER = {"type": "number", "number": "+15550123", "message": "Transferring you now."}

# Each fixture and the name of the VAPI SDK type of its `message`: names, as the SDK takes
# seconds to import and only the tests that use it should pay. The legacy function-call message
# and the legacy top-level end-of-call report predate the SDK; `future_type` is a type it lacks.
MESSAGE_TYPES: dict[str, str | None] = {
    "assistant_request": "ServerMessageAssistantRequest",
    "tool_calls": "ServerMessageToolCalls",
    "tool_calls_nested_only": "ServerMessageToolCalls",
    "function_call": None,
    "transfer_destination_request": "ServerMessageTransferDestinationRequest",
    "knowledge_base_request": "ServerMessageKnowledgeBaseRequest",
    "handoff_destination_request": "ServerMessageHandoffDestinationRequest",
    "call_endpointing_request": "ServerMessageCallEndpointingRequest",
    "campaign_predial": "ServerMessageCampaignPredial",
    "voice_request": "ServerMessageVoiceRequest",
    "status_update": "ServerMessageStatusUpdate",
    "end_of_call_report": "ServerMessageEndOfCallReport",
    "end_of_call_report_legacy": None,
    "conversation_update": "ServerMessageConversationUpdate",
    "transcript": "ServerMessageTranscript",
    "transcript_final": "ServerMessageTranscript",
    "hang": "ServerMessageHang",
    "speech_update": "ServerMessageSpeechUpdate",
    "user_interrupted": "ServerMessageUserInterrupted",
    "model_output": "ServerMessageModelOutput",
    "voice_input": "ServerMessageVoiceInput",
    "transfer_update": "ServerMessageTransferUpdate",
    "language_change_detected": "ServerMessageLanguageChangeDetected",
    "future_type": None,
}
INFORMATIONAL = [
    "status_update",
    "end_of_call_report",
    "end_of_call_report_legacy",
    "conversation_update",
    "transcript",
    "transcript_final",
    "hang",
    "speech_update",
    "user_interrupted",
    "model_output",
    "voice_input",
    "transfer_update",
    "language_change_detected",
    "future_type",
]
# The SDK type of the body VAPI expects back, per message type that needs one.
RESPONSE_TYPES: dict[str, str] = {
    "assistant-request": "ServerMessageResponseAssistantRequest",
    "tool-calls": "ServerMessageResponseToolCalls",
    "transfer-destination-request": "ServerMessageResponseTransferDestinationRequest",
    "knowledge-base-request": "ServerMessageResponseKnowledgeBaseRequest",
    "handoff-destination-request": "ServerMessageResponseHandoffDestinationRequest",
    "call.endpointing.request": "ServerMessageResponseCallEndpointingRequest",
    "campaign.predial": "ServerMessageResponseCampaignPredial",
}
# Refusals whose type has no error field: VAPI's universal `{"error"}` (voice-request's SDK type
# only documents raw PCM; call.endpointing.request's requires timeoutSeconds).
ERROR_ONLY = ("voice-request", "call.endpointing.request")
# Hashes of the (type, data) pairs the SDK accepted in this run. Loading an SDK class compiles
# a validator of VAPI's whole type graph (about 10 s of CPU, then 0.6 s a message type), so
# the same data is not validated twice in one run.
_accepted: set[str] = set()


def load(name: str) -> dict[str, Any]:
    """A payload fixture, as VAPI would POST it."""
    return json.loads((FIXTURES / f"{name}.json").read_text())


def unknown_fields(value: Any, path: str = "$") -> list[str]:
    """Paths of fields a validated SDK model did not know: misspelt field names, mostly."""
    found: list[str] = []
    if isinstance(value, pydantic.BaseModel):
        found += [f"{path}.{key}" for key in value.model_extra or {}]
        for name in type(value).model_fields:
            found += unknown_fields(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += unknown_fields(item, f"{path}[{index}]")
    return found


def validate(type_name: str, data: Any) -> None:
    """Validate with the VAPI SDK type of that name, refusing fields the type does not define."""
    key = hashlib.sha256(json.dumps([type_name, data], sort_keys=True).encode()).hexdigest()
    if key in _accepted:
        return
    parsed = getattr(vt, type_name).model_validate(data)
    assert unknown_fields(parsed) == [], f"{type_name}: unknown fields"
    _accepted.add(key)


def check_response(message_type: str, response: Any) -> None:
    """Assert `response` is a body VAPI accepts for a message of `message_type`."""
    if message_type in ERROR_ONLY and list(response) == ["error"]:
        assert isinstance(response["error"], str), response
        assert response["error"], response
    elif message_type in RESPONSE_TYPES:
        validate(RESPONSE_TYPES[message_type], response)
    elif message_type == "function-call":
        assert list(response) == ["result"], response
        assert isinstance(response["result"], str), response
    elif message_type == "custom-llm":
        ChatCompletion.model_validate(response)
    else:
        assert response == {}, response


def sse_chunks(items: list[Any]) -> tuple[list[ChatCompletionChunk], str]:
    """Parse streamed SSE items: the validated chunks and their joined `delta.content`."""
    assert all(isinstance(item, str) and item.endswith("\n\n") for item in items), items
    # One item may carry several events, so that a stream is not held back by one POST each.
    events = "".join(items).removesuffix("\n\n").split("\n\n")
    assert events[-1] == "data: [DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(event[6:]) for event in events[:-1]]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks, text


def webhook(payload: dict[str, Any], **job: Any) -> dict[str, Any]:
    """A `vapi_webhook` job input for `payload`."""
    return {"type": "vapi_webhook", "payload": payload, **job}


def signed(payload: dict[str, Any], timestamp: str, secret: str = SECRET) -> dict[str, Any]:
    """A `vapi_webhook` job with VAPI's default HMAC headers over the raw body."""
    raw = json.dumps(payload, separators=(",", ":"))
    digest = hmac.new(secret.encode(), f"{timestamp}.{raw}".encode(), hashlib.sha256)
    headers = {"x-signature": digest.hexdigest(), "x-timestamp": timestamp}
    return webhook(payload, headers=headers, raw_body=raw)


def tool_calls(*calls: tuple[str, str, Any]) -> dict[str, Any]:
    """A tool-calls payload for `(id, name, arguments)` calls, checked against the SDK."""
    call_list = [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        for call_id, name, arguments in calls
    ]
    message = {"type": "tool-calls", "toolCallList": call_list, "toolWithToolCallList": []}
    # The SDK types `arguments` as a JSON string; objects also come on some wires.
    if all(isinstance(arguments, str) for _, _, arguments in calls):
        validate("ServerMessageToolCalls", message)
    return {"message": message}


def vapi_sign(
    plan: dict[str, Any],
    secret: str,
    body: str,
    *,
    timestamp: str,
    method: str = "POST",
    url: str = "",
    message_id: str = "",
) -> dict[str, str]:
    """The headers VAPI sends for an HMAC credential, written from VAPI's field docs alone.

    `vapi/types/hmac_authentication_plan.py`: the payload is `payloadFormat` (default
    '{timestamp}.{body}', timestamp included by default) with {body}, {timestamp}, {method},
    {url} and {svix-id} filled in; the key is the secret, base64-decoded if `secretIsBase64`;
    the signature goes, after `signaturePrefix`, in `signatureHeader` (default 'x-signature'),
    encoded as `signatureEncoding` (default 'hex'); the timestamp in `timestampHeader`
    (default 'x-timestamp'); the message id in `messageIdHeader`.
    """
    default_format = "{timestamp}.{body}" if plan.get("includeTimestamp", True) else "{body}"
    payload = plan.get("payloadFormat", default_format)
    for placeholder, value in (
        ("{timestamp}", timestamp),
        ("{method}", method),
        ("{url}", url),
        ("{svix-id}", message_id),
        ("{body}", body),  # last, so the body's own text is never substituted
    ):
        payload = payload.replace(placeholder, value)
    key = base64.b64decode(secret) if plan.get("secretIsBase64") else secret.encode()
    mac = hmac.new(key, payload.encode(), getattr(hashlib, plan["algorithm"]))
    if plan.get("signatureEncoding", "hex") == "base64":
        signature = base64.b64encode(mac.digest()).decode()
    else:
        signature = mac.hexdigest()
    prefix = plan.get("signaturePrefix", "")
    headers = {plan.get("signatureHeader", "x-signature"): prefix + signature}
    if plan.get("includeTimestamp", True):
        headers[plan.get("timestampHeader", "x-timestamp")] = timestamp
    if plan.get("messageIdHeader"):
        headers[plan["messageIdHeader"]] = message_id
    return headers
