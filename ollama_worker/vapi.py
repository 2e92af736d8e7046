"""The `vapi_webhook` job: answer a VAPI server message or custom-LLM request as VAPI expects.

Output: one item `{"response": <the body VAPI expects>, "message_type", "call_id"}`, which a
relay returns verbatim; a streamed custom-LLM request instead yields the SSE text events
(`"data: {...}\\n\\n"` ... `"data: [DONE]\\n\\n"`), one or more whole events per item, exactly
as the OpenAI route does, for the relay to stream straight through.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ollama_worker.config import Settings
from ollama_worker.errors import ErrorCode, WorkerError
from ollama_worker.log_setup import loggable
from ollama_worker.ollama_client import OllamaClient
from ollama_worker.openai_route import run_openai
from ollama_worker.schemas import VapiWebhookJob
from ollama_worker.vapi_auth import check_webhook_auth
from ollama_worker.vapi_messages import (
    ServerMessage,
    ServerMessageAssistantRequest,
    ServerMessageCallEndpointingRequest,
    ServerMessageCampaignPredial,
    ServerMessageFunctionCall,
    ServerMessageHandoffDestinationRequest,
    ServerMessageKnowledgeBaseRequest,
    ServerMessageToolCalls,
    ServerMessageTransferDestinationRequest,
    ServerMessageVoiceRequest,
    ToolCall,
    parse_server_message,
)
from ollama_worker.vapi_tools import (
    NO_HOOK,
    HookFailed,
    Tools,
    call_hook,
    call_tool,
    get_tools,
    knowledge_base_documents,
)

log = logging.getLogger(__name__)

# The Modelfile's SYSTEM prompt is the one voice of the assistant, also sent by VAPI's
# built-in assistant (whose DEFAULT_MODEL need not have been built from the Modelfile).
MODELFILE = Path(__file__).resolve().parents[1] / "Modelfile"
MODELFILE_SYSTEM = re.compile(r'^SYSTEM\s+(?:"""(.*?)"""|(.+?))\s*$', re.MULTILINE | re.DOTALL)
RUNPOD_OPENAI_URL = "https://api.runpod.ai/v2/{endpoint_id}/openai/v1"
# The same API on a load-balancing endpoint (WORKER_MODE=http): the worker's own /v1.
RUNPOD_LB_URL = "https://{endpoint_id}.api.runpod.ai/v1"
NOT_CONFIGURED = "Sorry, this line is not set up to take calls yet. Please try again later."
NO_TRANSFER = "Sorry, I can't transfer this call right now."
NO_HANDOFF = "No handoff destination is available right now; carry on with the caller."
NO_ENDPOINTING = "this worker has no endpointing timeout to give"
NO_SPEECH = (
    "this worker does not synthesise speech: point assistant.voice.server.url at a "
    "text-to-speech server, not at this endpoint"
)
# assistant-request has 7.5 s in all: the model's parameters get this long, then are left out.
SHOW_TIMEOUT_S = 1.0
# VAPI's ranges for a custom-llm model (its API's CustomLLMModel) and an endpointing timeout.
TEMPERATURE_RANGE = (0.0, 2.0)
MAX_TOKENS_RANGE = (50, 10_000)
ENDPOINTING_RANGE = (0.0, 15.0)
# The chat-completions fields a model may see; VAPI's extras (call, metadata, customer,
# phoneNumber, assistant, timestamp...) carry call data the model has no use for.
OPENAI_CHAT_FIELDS = frozenset(
    {
        "model", "messages", "stream", "stream_options", "temperature", "top_p", "max_tokens",
        "max_completion_tokens", "stop", "seed", "frequency_penalty", "presence_penalty",
        "response_format", "tools", "tool_choice", "parallel_tool_calls", "logprobs",
        "top_logprobs", "logit_bias", "n", "user", "reasoning_effort",
    }
)  # fmt: skip
# Logged for informational messages, from the message, else the payload top level (where
# older end-of-call reports put them).
LOGGED_FIELDS = ("status", "endedReason", "cost")


@functools.cache
def system_prompt(modelfile: str) -> str | None:
    """The SYSTEM prompt of the Modelfile at that path, or None when it has none."""
    try:
        match = MODELFILE_SYSTEM.search(Path(modelfile).read_text(encoding="utf-8"))
    except OSError:
        log.warning("no Modelfile at %s: the built-in assistant sends no system prompt", modelfile)
        return None
    return (match.group(1) or match.group(2)).strip() if match else None


def _call_id(payload: dict[str, Any]) -> str | None:
    """The payload's `call.id`, to tie our output and logs to VAPI's call."""
    call = payload.get("call")
    if isinstance(call, dict) and isinstance(call.get("id"), str):
        return str(call["id"])
    return None


def load_json_object(value: str) -> dict[str, Any]:
    """A JSON object given inline or as the path of a file holding it; raise ValueError."""
    text = value if value.lstrip().startswith("{") else Path(value).read_text(encoding="utf-8")
    parsed = json.loads(text)
    if not isinstance(parsed, dict):
        raise ValueError(f"expected a JSON object, got {type(parsed).__name__}")
    return parsed


def _json_setting(name: str, value: str) -> dict[str, Any] | None:
    """The object a JSON setting holds, or None (and a log line) when it is unusable."""
    try:
        return load_json_object(value)
    except (OSError, ValueError) as exc:
        log.error(
            "%s is unusable (%s: %s); answering VAPI with an error", name, type(exc).__name__, exc
        )
        return None


async def model_sampling(client: OllamaClient, model: str) -> dict[str, Any]:
    """`temperature` and `maxTokens` from the model's PARAMETERs in VAPI's ranges; {} if unknown."""
    try:
        parameters = await client.model_parameters(model, timeout_s=SHOW_TIMEOUT_S)
    except WorkerError as exc:
        log.warning(
            "assistant-request: %s's parameters are unknown (%s); VAPI's defaults apply",
            model,
            exc.code,
        )
        return {}
    sampling: dict[str, Any] = {}
    temperature = parameters.get("temperature")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        low, high = TEMPERATURE_RANGE
        sampling["temperature"] = min(max(float(temperature), low), high)
    limit = parameters.get("num_predict")
    # num_predict -1 (no limit) or -2 (fill the context) has no VAPI equivalent.
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        sampling["maxTokens"] = min(max(limit, MAX_TOKENS_RANGE[0]), MAX_TOKENS_RANGE[1])
    return sampling


async def assistant_response(settings: Settings, client: OllamaClient) -> dict[str, Any]:
    """The assistant-request answer, from settings and (briefly) the model's own PARAMETERs."""
    if settings.vapi_assistant_id:
        return {"assistantId": settings.vapi_assistant_id}
    if settings.vapi_assistant_json:
        assistant = _json_setting("VAPI_ASSISTANT_JSON", settings.vapi_assistant_json)
        return {"error": NOT_CONFIGURED} if assistant is None else {"assistant": assistant}
    template = RUNPOD_LB_URL if settings.worker_mode == "http" else RUNPOD_OPENAI_URL
    url = settings.vapi_custom_llm_url or (
        template.format(endpoint_id=settings.runpod_endpoint_id)
        if settings.runpod_endpoint_id
        else ""
    )
    if not url:
        log.error(
            "assistant-request: set VAPI_ASSISTANT_ID, VAPI_ASSISTANT_JSON, VAPI_CUSTOM_LLM_URL "
            "or RUNPOD_ENDPOINT_ID; answering VAPI with an error"
        )
        return {"error": NOT_CONFIGURED}
    model: dict[str, Any] = {
        "provider": "custom-llm",
        "url": url,
        "model": settings.default_model,
        # Without this VAPI adds the large call, customer and phone number objects to every turn.
        "metadataSendMode": "off",
        # VAPI sends these on every turn; unset, its own defaults would override the model's.
        **await model_sampling(client, settings.default_model),
    }
    if prompt := system_prompt(os.environ.get("MODELFILE") or str(MODELFILE)):
        model["messages"] = [{"role": "system", "content": prompt}]
    return {"assistant": {"firstMessage": settings.vapi_first_message, "model": model}}


async def _hook_or_default(
    tools: Tools, hook: str, message: ServerMessage, settings: Settings, kind: str, call: str
) -> tuple[Any, str | None]:
    """The hook's answer, NO_HOOK when it has none or returns None, or why it failed."""
    try:
        value = await call_hook(tools, hook, settings.vapi_tool_timeout_s, message=message.raw)
    except HookFailed as exc:
        log.error("%s call_id=%s: %s; refusing", kind, call, exc)
        return None, str(exc)
    return (NO_HOOK if value is None else value), None


async def destination_response(
    message: ServerMessageTransferDestinationRequest | ServerMessageHandoffDestinationRequest,
    settings: Settings,
    *,
    kind: str,
    hook: str,
    setting: tuple[str, str],
    refusal: dict[str, Any],
) -> dict[str, Any]:
    """A transfer or handoff answer: the hook's destination, else the setting's, else `refusal`.

    The hook goes first; when it returns None the setting is used. A whole answer (a dict with
    `destination`, plus VAPI's optional `message`, `result` or `error`) is passed as it is.
    """
    call = loggable(message.call_id or "-")
    tools = await get_tools(settings.vapi_tools_module)
    value, failed = await _hook_or_default(tools, hook, message, settings, kind, call)
    if failed:
        return refusal
    if value is NO_HOOK:
        name, raw = setting
        if not raw:
            log.error("%s call_id=%s: no %s hook and no %s; refusing", kind, call, hook, name)
            return refusal
        value = _json_setting(name, raw)
        if value is None:
            return refusal
    answer = value if isinstance(value, dict) and "destination" in value else {"destination": value}
    if not isinstance(answer["destination"], dict):
        log.error("%s call_id=%s: the destination is not a JSON object; refusing", kind, call)
        return refusal
    return answer


async def transfer_response(
    message: ServerMessageTransferDestinationRequest, settings: Settings
) -> dict[str, Any]:
    """transfer-destination-request: the `transfer_destination` hook, else the setting."""
    return await destination_response(
        message,
        settings,
        kind="transfer-destination-request",
        hook="transfer_destination",
        setting=("VAPI_TRANSFER_DESTINATION", settings.vapi_transfer_destination),
        refusal={"error": NO_TRANSFER},
    )


async def handoff_response(
    message: ServerMessageHandoffDestinationRequest, settings: Settings
) -> dict[str, Any]:
    """handoff-destination-request: the `handoff_destination` hook, else the setting."""
    # VAPI's docs refuse with an empty destination or an error; its schema requires the first.
    return await destination_response(
        message,
        settings,
        kind="handoff-destination-request",
        hook="handoff_destination",
        setting=("VAPI_HANDOFF_DESTINATION", settings.vapi_handoff_destination),
        refusal={"destination": {}, "error": NO_HANDOFF},
    )


async def endpointing_response(
    message: ServerMessageCallEndpointingRequest, settings: Settings
) -> dict[str, Any]:
    """call.endpointing.request: `{"timeoutSeconds"}` from the hook, else the setting."""
    kind, call = message.type, loggable(message.call_id or "-")
    tools = await get_tools(settings.vapi_tools_module)
    value, failed = await _hook_or_default(
        tools, "endpointing_timeout", message, settings, kind, call
    )
    if failed:
        return {"error": NO_ENDPOINTING}
    if value is NO_HOOK:
        value = settings.vapi_endpointing_timeout_s
        if value is None:
            log.error(
                "%s call_id=%s: no endpointing_timeout hook and VAPI_ENDPOINTING_TIMEOUT_S is "
                "not set; refusing",
                kind,
                call,
            )
            return {"error": NO_ENDPOINTING}
    low, high = ENDPOINTING_RANGE
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        log.error("%s call_id=%s: the timeout is not %g to %g s; refusing", kind, call, low, high)
        return {"error": NO_ENDPOINTING}
    return {"timeoutSeconds": float(value)}


async def predial_response(
    message: ServerMessageCampaignPredial, settings: Settings
) -> dict[str, Any]:
    """campaign.predial: `{"eligible"}` from the hook; without a yes, the contact is skipped."""
    kind, call = message.type, loggable(message.call_id or "-")
    tools = await get_tools(settings.vapi_tools_module)
    value, failed = await _hook_or_default(tools, "campaign_predial", message, settings, kind, call)
    if failed:
        return {"eligible": False}
    if value is NO_HOOK:
        log.error("%s call_id=%s: no campaign_predial hook; skipping the contact", kind, call)
        return {"eligible": False}
    if not isinstance(value, bool):
        log.error("%s call_id=%s: the hook did not return a bool; skipping the contact", kind, call)
        return {"eligible": False}
    return {"eligible": value}


async def tool_calls_response(
    message: ServerMessageToolCalls, settings: Settings
) -> dict[str, Any]:
    """One result per tool call, in order; the calls run concurrently."""
    tools = await get_tools(settings.vapi_tools_module)

    async def one(call: ToolCall) -> dict[str, str]:
        name, arguments = call.name_and_arguments()
        outcome = await call_tool(tools, name, arguments, settings.vapi_tool_timeout_s)
        return {"name": name, "toolCallId": str(call.id or ""), **outcome}

    return {"results": list(await asyncio.gather(*map(one, message.calls())))}


async def function_call_response(
    message: ServerMessageFunctionCall, settings: Settings
) -> dict[str, str]:
    """The legacy function-call answer: always `{"result": text}`, a failure's text included."""
    # The legacy form has no error field, and the model should still hear why a call failed.
    name, arguments = message.function_call.name_and_arguments()
    tools = await get_tools(settings.vapi_tools_module)
    outcome = await call_tool(tools, name, arguments, settings.vapi_tool_timeout_s)
    return {"result": outcome.get("result", f"Error: {outcome.get('error')}")}


async def knowledge_base_response(
    message: ServerMessageKnowledgeBaseRequest, settings: Settings
) -> dict[str, Any]:
    """Documents from the tools module's `knowledge_base(query, messages)` hook, if any."""
    tools = await get_tools(settings.vapi_tools_module)
    documents = await knowledge_base_documents(
        tools, message.query(), message.conversation(), settings.vapi_tool_timeout_s
    )
    return {"documents": documents}


def acknowledge(kind: str, call_id: str | None, *sources: dict[str, Any]) -> dict[str, Any]:
    """Log an informational message in one line and answer `{}`: VAPI needs no more."""
    fields: dict[str, Any] = {"type": kind, "call_id": call_id or "-"}
    for key in LOGGED_FIELDS:
        value = next((s[key] for s in sources if s.get(key) is not None), None)
        if value is not None:
            fields[key] = value
    # Quoted unless plain, so that no value can break the line or fake a field.
    log.info("vapi event %s", " ".join(f"{key}={loggable(value)}" for key, value in fields.items()))
    return {}


async def message_response(
    message: ServerMessage,
    payload: dict[str, Any],
    call_id: str | None,
    settings: Settings,
    client: OllamaClient,
) -> dict[str, Any]:
    """The body VAPI expects back for a server message, chosen by its type."""
    match message:
        case ServerMessageAssistantRequest():
            return await assistant_response(settings, client)
        case ServerMessageToolCalls():
            return await tool_calls_response(message, settings)
        case ServerMessageFunctionCall():
            return await function_call_response(message, settings)
        case ServerMessageTransferDestinationRequest():
            return await transfer_response(message, settings)
        case ServerMessageKnowledgeBaseRequest():
            return await knowledge_base_response(message, settings)
        case ServerMessageHandoffDestinationRequest():
            return await handoff_response(message, settings)
        case ServerMessageCallEndpointingRequest():
            return await endpointing_response(message, settings)
        case ServerMessageCampaignPredial():
            return await predial_response(message, settings)
        case ServerMessageVoiceRequest():
            # VAPI wants raw PCM here; an error at least says why there is none.
            log.error("voice-request call_id=%s: %s", loggable(call_id or "-"), NO_SPEECH)
            return {"error": NO_SPEECH}
        case _:
            # Informational, or a type newer than this worker: VAPI needs no more than {}.
            return acknowledge(message.type, call_id, message.raw, payload)


def custom_llm_body(payload: dict[str, Any]) -> dict[str, Any]:
    """A custom-LLM request as the model sees it: VAPI's call-data extras left out."""
    return {key: value for key, value in payload.items() if key in OPENAI_CHAT_FIELDS}


async def run_vapi(
    job: VapiWebhookJob, client: OllamaClient, settings: Settings
) -> AsyncIterator[Any]:
    """Authenticate, then answer the server message or custom-LLM request in `job.payload`."""
    payload = job.payload
    check_webhook_auth(
        settings.vapi_webhook_secret,
        job.headers,
        job.raw_body,
        payload,
        plan=settings.vapi_auth_plan,
        method=job.method,
        url=job.url,
    )
    raw = payload.get("message")
    if isinstance(raw, dict) and isinstance(raw.get("type"), str):
        message = parse_server_message(raw)
        call_id = message.call_id or _call_id(payload)
        response = await message_response(message, payload, call_id, settings, client)
        yield {"response": response, "message_type": message.type, "call_id": call_id}
        return
    if not isinstance(payload.get("messages"), list):
        raise WorkerError(
            ErrorCode.INVALID_INPUT,
            "payload is neither a VAPI server message (`message.type`) nor a custom-LLM "
            "request (`messages`)",
        )
    body = custom_llm_body(payload)
    call_id = _call_id(payload)
    async for item in run_openai("/v1/chat/completions", body, client, settings):
        # SSE text passes through as it is; the one non-stream body is wrapped like the rest.
        if isinstance(item, str):
            yield item
        else:
            yield {"response": item, "message_type": "custom-llm", "call_id": call_id}
