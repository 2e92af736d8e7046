"""Unit tests of the `vapi_webhook` job, through the RunPod handler itself (no subprocess)."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletion
from pydantic import TypeAdapter

import tests.vapi_tools_for_tests as test_tools
from ollama_worker import vapi_tools
from ollama_worker.config import ConfigError, Settings, get_settings
from ollama_worker.vapi import MODELFILE, system_prompt
from ollama_worker.vapi_auth import check_webhook_auth
from ollama_worker.vapi_tools import reset_tools
from rp_handler import handler
from standins.ollama import FakeOllama
from tests.harness import ROOT, free_port
from tests.vapi_fixtures import (
    INFORMATIONAL,
    MESSAGE_TYPES,
    SECRET,
    TOOLS_MODULE,
    TRANSFER,
    check_response,
    load,
    signed,
    sse_chunks,
    tool_calls,
    validate,
    webhook,
)

VAPI_VARS = (
    "VAPI_WEBHOOK_SECRET",
    "VAPI_ASSISTANT_ID",
    "VAPI_ASSISTANT_JSON",
    "VAPI_CUSTOM_LLM_URL",
    "VAPI_FIRST_MESSAGE",
    "VAPI_TOOL_TIMEOUT_S",
    "VAPI_TRANSFER_DESTINATION",
    "VAPI_HANDOFF_DESTINATION",
    "VAPI_ENDPOINTING_TIMEOUT_S",
    "VAPI_AUTH_PLAN",
    "RUNPOD_ENDPOINT_ID",
    "DEFAULT_MODEL",
)
SetEnv = Callable[..., None]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, fake: FakeOllama) -> Iterator[SetEnv]:
    """Set worker environment variables (Ollama: conftest's `fake`) and re-read the settings."""

    def set_env(**values: str) -> None:
        for key, value in values.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        reset_tools()

    for key in VAPI_VARS:
        monkeypatch.delenv(key, raising=False)
    test_tools.hook_answers.clear()
    test_tools.hook_messages.clear()
    set_env(OLLAMA_HOST=fake.host_port, VAPI_TOOLS_MODULE=TOOLS_MODULE, OLLAMA_RETRY_DEADLINE_S="5")
    yield set_env
    get_settings.cache_clear()
    reset_tools()


async def run(job_input: dict[str, Any]) -> list[Any]:
    """Every item the handler yields for one job."""
    return [item async for item in handler({"id": "t", "input": job_input})]


async def answer(payload: dict[str, Any], **job: Any) -> dict[str, Any]:
    """The one item a non-streamed `vapi_webhook` job yields, checked against VAPI's types."""
    items = await run(webhook(payload, **job))
    assert len(items) == 1, items
    item = items[0]
    assert "error" not in item, item
    assert set(item) == {"response", "message_type", "call_id"}
    check_response(item["message_type"], item["response"])
    return item


async def failure(job_input: dict[str, Any]) -> str:
    """The error string of a job that fails."""
    items = await run(job_input)
    assert len(items) == 1, items
    assert set(items[0]) == {"error"}, items
    return items[0]["error"]


# --- fixtures follow VAPI's types ---------------------------------------------------------


@pytest.mark.parametrize("name", list(MESSAGE_TYPES))
def test_fixtures_are_valid_vapi_messages(name: str) -> None:
    message = load(name)["message"]
    model = MESSAGE_TYPES[name]
    if model is not None:
        validate(model, message)
    assert isinstance(message["type"], str)


def test_custom_llm_fixture_is_an_openai_request_with_vapi_extras() -> None:
    from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming

    payload = load("custom_llm")
    TypeAdapter(CompletionCreateParamsNonStreaming).validate_python(payload)
    validate("Call", payload["call"])
    validate("CreateCustomerDto", payload["customer"])


# --- assistant-request ----------------------------------------------------------------------


async def test_assistant_id_wins(env: SetEnv) -> None:
    env(VAPI_ASSISTANT_ID="asst-123", RUNPOD_ENDPOINT_ID="ep1")
    item = await answer(load("assistant_request"))
    assert item == {
        "response": {"assistantId": "asst-123"},
        "message_type": "assistant-request",
        "call_id": "call-7f3c",
    }


async def test_assistant_json_inline_or_from_a_file(env: SetEnv, tmp_path: Path) -> None:
    assistant = {"firstMessage": "Hello there", "model": {"provider": "openai", "model": "gpt-4o"}}
    env(VAPI_ASSISTANT_JSON=json.dumps(assistant))
    assert (await answer(load("assistant_request")))["response"] == {"assistant": assistant}
    path = tmp_path / "assistant.json"
    path.write_text(json.dumps(assistant))
    env(VAPI_ASSISTANT_JSON=str(path))
    assert (await answer(load("assistant_request")))["response"] == {"assistant": assistant}


@pytest.mark.parametrize(
    ("extra", "url"),
    [
        ({"RUNPOD_ENDPOINT_ID": "ep42"}, "https://api.runpod.ai/v2/ep42/openai/v1"),
        (
            {"RUNPOD_ENDPOINT_ID": "ep42", "VAPI_CUSTOM_LLM_URL": "https://llm.example/v1"},
            "https://llm.example/v1",
        ),
    ],
)
async def test_built_in_assistant_uses_our_model(
    env: SetEnv, extra: dict[str, str], url: str
) -> None:
    env(DEFAULT_MODEL="voice-assistant", VAPI_FIRST_MESSAGE="Hi, this is Ada.", **extra)
    response = (await answer(load("assistant_request")))["response"]
    prompt = system_prompt(str(MODELFILE))
    assert prompt is not None
    assert prompt.startswith("You are a friendly voice assistant on a phone call.")
    assert prompt.endswith("When a tool can answer, call it instead of guessing.")
    assert response == {
        "assistant": {
            "firstMessage": "Hi, this is Ada.",
            "model": {
                "provider": "custom-llm",
                "url": url,
                "model": "voice-assistant",
                "messages": [{"role": "system", "content": prompt}],
                "metadataSendMode": "off",
            },
        }
    }


def test_system_prompt_forms(tmp_path: Path) -> None:
    one_line = tmp_path / "one"
    one_line.write_text("FROM llama3.1:8b\nSYSTEM Speak briefly.\nPARAMETER num_ctx 4096\n")
    assert system_prompt(str(one_line)) == "Speak briefly."
    absent = tmp_path / "absent"
    absent.write_text("FROM llama3.1:8b\n")
    assert system_prompt(str(absent)) is None
    assert system_prompt(str(tmp_path / "missing")) is None


@pytest.mark.parametrize(
    ("setting", "logged"),
    [
        ({}, "set VAPI_ASSISTANT_ID"),
        ({"VAPI_ASSISTANT_JSON": '{"model": '}, "VAPI_ASSISTANT_JSON is unusable"),
        ({"VAPI_ASSISTANT_JSON": "[1, 2]"}, "VAPI_ASSISTANT_JSON is unusable"),
        ({"VAPI_ASSISTANT_JSON": "/no/such/assistant.json"}, "FileNotFoundError"),
    ],
)
async def test_unusable_assistant_settings_answer_a_spoken_error(
    env: SetEnv, caplog: pytest.LogCaptureFixture, setting: dict[str, str], logged: str
) -> None:
    env(**setting)
    response = (await answer(load("assistant_request")))["response"]
    assert list(response) == ["error"]
    assert response["error"].startswith("Sorry")
    assert logged in caplog.text


# --- tool-calls and function-call -----------------------------------------------------------


async def test_tool_calls_answer_each_call_in_order(env: SetEnv) -> None:
    item = await answer(load("tool_calls"))
    assert item["message_type"] == "tool-calls"
    assert item["response"] == {
        "results": [
            {"name": "echo", "toolCallId": "tc-1", "result": "hi hi"},
            {"name": "add", "toolCallId": "tc-2", "result": '{"sum": 3.5}'},
        ]
    }


async def test_tool_calls_fall_back_to_tool_with_tool_call_list(env: SetEnv) -> None:
    response = (await answer(load("tool_calls_nested_only")))["response"]
    assert response == {"results": [{"name": "echo", "toolCallId": "tc-9", "result": "nested"}]}


async def test_each_failing_call_gets_its_own_error(env: SetEnv) -> None:
    payload = tool_calls(
        ("1", "echo", {"text": "object arguments"}),
        ("2", "nope", "{}"),
        ("3", "explode", "{}"),
        ("4", "inner_type_error", ""),
        ("5", "echo", '{"text": '),
        ("6", "echo", "[1, 2]"),
        ("7", "echo", '{"txt": "x"}'),
        ("8", "_private", "{}"),
        ("9", "dumps", "{}"),
        ("10", "knowledge_base", "{}"),
        ("11", "add", '{"a": 2, "b": 3}'),
    )
    results = (await answer(payload))["response"]["results"]
    assert [r["toolCallId"] for r in results] == [str(n) for n in range(1, 12)]
    assert results[0]["result"] == "object arguments"
    assert results[10]["result"] == '{"sum": 5}'
    errors = {r["toolCallId"]: r["error"] for r in results if "error" in r}
    assert set(errors) == {str(n) for n in range(2, 11)}
    assert errors["2"].startswith("unknown tool 'nope'")
    assert errors["3"] == "tool 'explode' failed: RuntimeError: the tool broke"
    assert errors["4"].startswith("tool 'inner_type_error' failed: TypeError")
    assert errors["5"].startswith("bad arguments for 'echo': arguments are not valid JSON")
    assert errors["6"] == "bad arguments for 'echo': arguments must be a JSON object, not list"
    assert errors["7"].startswith("bad arguments for 'echo': ")
    for private in ("8", "9", "10"):
        assert errors[private].startswith("unknown tool"), errors[private]


async def test_slow_tools_time_out_alone_and_calls_run_concurrently(env: SetEnv) -> None:
    env(VAPI_TOOL_TIMEOUT_S="0.5")
    payload = tool_calls(
        ("slow-async", "sleep_async", '{"seconds": 30}'),
        ("slow-sync", "sleep_sync", '{"seconds": 1}'),
        ("a", "sleep_async", '{"seconds": 0.3}'),
        ("b", "sleep_sync", '{"seconds": 0.3}'),
        ("c", "sleep_sync", '{"seconds": 0.3}'),
    )
    started = time.monotonic()
    results = (await answer(payload))["response"]["results"]
    elapsed = time.monotonic() - started
    # One after another, the five calls would take 1.9 s.
    assert 0.45 < elapsed < 1.4, elapsed
    assert results[0]["error"] == "tool 'sleep_async' did not finish within 0.5 s"
    assert results[1]["error"] == "tool 'sleep_sync' did not finish within 0.5 s"
    assert [r.get("result") for r in results[2:]] == ["slept"] * 3


async def test_a_sync_tool_does_not_block_the_event_loop(env: SetEnv) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        await answer(tool_calls(("1", "sleep_sync", '{"seconds": 0.4}')))
    finally:
        task.cancel()
    # A blocked loop would not tick at all while the tool sleeps.
    assert ticks >= 5, ticks


@pytest.mark.parametrize(
    ("module", "says"),
    [("tests.no_such_tools", "failed to import: ModuleNotFoundError"), ("", "is not set")],
)
async def test_a_missing_tools_module_fails_each_call_not_the_job(
    env: SetEnv, module: str, says: str
) -> None:
    env(VAPI_TOOLS_MODULE=module)
    results = (await answer(load("tool_calls")))["response"]["results"]
    assert [r["toolCallId"] for r in results] == ["tc-1", "tc-2"]
    assert all(says in r["error"] for r in results), results


async def test_tools_are_imported_once(env: SetEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    imports: list[str] = []
    real_load = vapi_tools.load_tools
    monkeypatch.setattr(
        vapi_tools, "load_tools", lambda name: imports.append(name) or real_load(name)
    )
    await answer(load("tool_calls"))
    await answer(load("tool_calls"))
    assert imports == [TOOLS_MODULE]


def test_tools_module_is_not_imported_at_start_up() -> None:
    code = (
        "import sys, rp_handler, ollama_worker.vapi; "
        f"print({TOOLS_MODULE!r} in sys.modules, 'vapi' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"VAPI_TOOLS_MODULE": TOOLS_MODULE, "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["False", "False"]


async def test_the_example_tools_module_works(env: SetEnv) -> None:
    env(VAPI_TOOLS_MODULE="examples.vapi_tools")
    payload = tool_calls(
        ("1", "get_time", '{"timezone": "Europe/Paris"}'),
        ("2", "lookup_order", '{"order_id": "a100"}'),
        ("3", "datetime", "{}"),
    )
    results = (await answer(payload))["response"]["results"]
    assert results[0]["result"].startswith("It is ")
    assert results[0]["result"].endswith(" in Europe/Paris.")
    assert json.loads(results[1]["result"])["status"] == "shipped"
    assert results[2]["error"].startswith("unknown tool 'datetime'")
    documents = (await answer(load("knowledge_base_request")))["response"]["documents"]
    assert documents[0]["uuid"] == "returns"


async def test_function_call_answers_a_result_even_on_failure(env: SetEnv) -> None:
    item = await answer(load("function_call"))
    assert item == {
        "response": {"result": "legacy"},
        "message_type": "function-call",
        "call_id": "call-7f3c",
    }
    payload = load("function_call")
    payload["message"]["functionCall"] = {"name": "explode", "parameters": {}}
    response = (await answer(payload))["response"]
    assert response == {"result": "Error: tool 'explode' failed: RuntimeError: the tool broke"}


# --- transfer-destination-request and knowledge-base-request --------------------------------


async def test_transfer_destination(env: SetEnv) -> None:
    env(VAPI_TRANSFER_DESTINATION=json.dumps(TRANSFER))
    assert (await answer(load("transfer_destination_request")))["response"] == {
        "destination": TRANSFER
    }
    whole = {
        "destination": {"type": "sip", "sipUri": "sip:desk@example.com"},
        "message": {"type": "request-start", "content": "One moment, please."},
    }
    env(VAPI_TRANSFER_DESTINATION=json.dumps(whole))
    assert (await answer(load("transfer_destination_request")))["response"] == whole


@pytest.mark.parametrize("setting", [None, "{not json", '"+15550123"'])
async def test_no_usable_transfer_destination_answers_an_error(
    env: SetEnv, setting: str | None
) -> None:
    if setting is not None:
        env(VAPI_TRANSFER_DESTINATION=setting)
    response = (await answer(load("transfer_destination_request")))["response"]
    assert list(response) == ["error"]


async def test_knowledge_base_hook_gets_the_query_and_gives_documents(env: SetEnv) -> None:
    payload = load("knowledge_base_request")
    response = (await answer(payload))["response"]
    assert response == {"documents": test_tools.DOCUMENTS}
    assert test_tools.seen["query"] == "What is your return policy?"
    assert test_tools.seen["messages"] == payload["message"]["messagesOpenAIFormatted"]


async def test_knowledge_base_without_a_usable_hook_gives_no_documents(
    env: SetEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    env(VAPI_TOOLS_MODULE="")
    assert (await answer(load("knowledge_base_request")))["response"] == {"documents": []}
    for broken in (lambda query, messages: [{"content": 1}], lambda **_: 1 / 0):
        monkeypatch.setattr(test_tools, "knowledge_base", broken)
        env(VAPI_TOOLS_MODULE=TOOLS_MODULE)
        assert (await answer(load("knowledge_base_request")))["response"] == {"documents": []}


# --- message hooks: transfer, handoff, endpointing, campaign pre-dial, voice ------------------

HANDOFF = {"type": "assistant", "assistantName": "Billing"}


async def test_the_transfer_hook_goes_before_the_setting(env: SetEnv) -> None:
    env(VAPI_TRANSFER_DESTINATION=json.dumps(TRANSFER))
    payload = load("transfer_destination_request")
    sip = {"type": "sip", "sipUri": "sip:desk@example.com"}
    test_tools.hook_answers["transfer_destination"] = sip
    assert (await answer(payload))["response"] == {"destination": sip}
    assert test_tools.hook_messages["transfer_destination"] == payload["message"]
    whole = {"destination": sip, "message": {"type": "request-start", "content": "One moment."}}
    test_tools.hook_answers["transfer_destination"] = whole
    assert (await answer(payload))["response"] == whole
    # None defers to VAPI_TRANSFER_DESTINATION; a failure refuses rather than guess.
    test_tools.hook_answers["transfer_destination"] = None
    assert (await answer(payload))["response"] == {"destination": TRANSFER}
    test_tools.hook_answers["transfer_destination"] = RuntimeError("no agents")
    assert list((await answer(payload))["response"]) == ["error"]
    test_tools.hook_answers["transfer_destination"] = "+15550123"
    assert list((await answer(payload))["response"]) == ["error"]


async def test_handoff_destination_from_the_hook_or_the_setting(
    env: SetEnv, caplog: pytest.LogCaptureFixture
) -> None:
    payload = load("handoff_destination_request")
    test_tools.hook_answers["handoff_destination"] = HANDOFF
    assert (await answer(payload))["response"] == {"destination": HANDOFF}
    assert test_tools.hook_messages["handoff_destination"]["parameters"]["destination"] == "billing"
    test_tools.hook_answers["handoff_destination"] = None
    env(VAPI_HANDOFF_DESTINATION=json.dumps({"type": "assistant", "assistantId": "asst-9"}))
    response = (await answer(payload))["response"]
    assert response == {"destination": {"type": "assistant", "assistantId": "asst-9"}}
    # Neither: VAPI's refusal (an empty destination and an error), and a log line saying why
    # that carries none of the call's content.
    env(VAPI_TOOLS_MODULE="", VAPI_HANDOFF_DESTINATION="")
    caplog.set_level(logging.INFO, logger="ollama_worker")
    response = (await answer(payload))["response"]
    assert response == {"destination": {}, "error": response["error"]}
    assert response["error"]
    assert "no handoff_destination hook and no VAPI_HANDOFF_DESTINATION" in caplog.text
    assert "invoice" not in caplog.text


async def test_endpointing_timeout_from_the_hook_or_the_setting(env: SetEnv) -> None:
    payload = load("call_endpointing_request")
    test_tools.hook_answers["endpointing_timeout"] = 0.8
    assert (await answer(payload))["response"] == {"timeoutSeconds": 0.8}
    seen = test_tools.hook_messages["endpointing_timeout"]
    assert seen["messagesOpenAIFormatted"][-1]["content"] == "It is A one hundred and"
    test_tools.hook_answers["endpointing_timeout"] = None
    env(VAPI_ENDPOINTING_TIMEOUT_S="1.5")
    assert (await answer(payload))["response"] == {"timeoutSeconds": 1.5}
    for bad in (99, True, "1", ValueError("boom")):
        test_tools.hook_answers["endpointing_timeout"] = bad
        assert list((await answer(payload))["response"]) == ["error"], bad
    env(VAPI_TOOLS_MODULE="", VAPI_ENDPOINTING_TIMEOUT_S="")
    assert list((await answer(payload))["response"]) == ["error"]


@pytest.mark.parametrize("value", ["16", "-1", "soon"])
def test_a_bad_endpointing_timeout_setting_stops_the_worker(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("VAPI_ENDPOINTING_TIMEOUT_S", value)
    with pytest.raises(ConfigError, match="VAPI_ENDPOINTING_TIMEOUT_S"):
        Settings.from_env()


async def test_campaign_predial_is_eligible_only_when_the_hook_says_so(
    env: SetEnv, caplog: pytest.LogCaptureFixture
) -> None:
    payload = load("campaign_predial")
    test_tools.hook_answers["campaign_predial"] = True
    assert (await answer(payload))["response"] == {"eligible": True}
    assert test_tools.hook_messages["campaign_predial"]["contact"]["number"] == "+15550142"
    test_tools.hook_answers["campaign_predial"] = False
    assert (await answer(payload))["response"] == {"eligible": False}
    env(VAPI_TOOL_TIMEOUT_S="0.2")
    for bad in (None, "yes", 1, LookupError("crm down")):
        test_tools.hook_answers["campaign_predial"] = bad
        assert (await answer(payload))["response"] == {"eligible": False}, bad
    test_tools.hook_answers.update(campaign_predial=True, campaign_predial_delay_s=1)
    assert (await answer(payload))["response"] == {"eligible": False}
    caplog.set_level(logging.INFO, logger="ollama_worker")
    env(VAPI_TOOLS_MODULE="")
    assert (await answer(payload))["response"] == {"eligible": False}
    assert "no campaign_predial hook; skipping the contact" in caplog.text
    assert "+15550142" not in caplog.text


async def test_voice_request_says_this_worker_does_not_speak(env: SetEnv) -> None:
    response = (await answer(load("voice_request")))["response"]
    assert list(response) == ["error"]
    assert "does not synthesise speech" in response["error"]


async def test_hooks_are_not_tools(env: SetEnv) -> None:
    names = ["transfer_destination", "handoff_destination", "endpointing_timeout"]
    payload = tool_calls(*((str(n), name, "{}") for n, name in enumerate(names)))
    results = (await answer(payload))["response"]["results"]
    for name, result in zip(names, results, strict=True):
        assert result["error"].startswith(f"unknown tool {name!r}: {name} is a hook"), result
    assert test_tools.hook_messages == {}  # refused by name, never run


# --- informational messages -----------------------------------------------------------------


@pytest.mark.parametrize("name", INFORMATIONAL)
async def test_informational_messages_are_acknowledged_with_ollama_down(
    env: SetEnv, name: str
) -> None:
    env(OLLAMA_HOST=f"127.0.0.1:{free_port()}")
    payload = load(name)
    started = time.monotonic()
    item = await answer(payload)
    assert time.monotonic() - started < 1.0
    assert item["response"] == {}
    assert item["message_type"] == payload["message"]["type"]


async def test_acknowledgements_log_one_structured_line(
    env: SetEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ollama_worker")
    for name in ("end_of_call_report", "end_of_call_report_legacy", "status_update"):
        await answer(load(name))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("vapi event")]
    assert lines == [
        "vapi event type=end-of-call-report call_id=call-7f3c "
        "endedReason=customer-ended-call cost=0.0421",
        "vapi event type=end-of-call-report call_id=call-legacy-1 "
        "endedReason=assistant-ended-call cost=0.013",
        "vapi event type=status-update call_id=call-7f3c status=ended "
        "endedReason=customer-ended-call",
    ]


@pytest.mark.parametrize(
    ("message", "response"),
    [
        ({"type": "tool-calls", "toolCallList": 5, "toolWithToolCallList": 5}, {"results": []}),
        ({"type": "tool-calls", "toolCallList": [{"id": 7}]}, None),
        ({"type": "function-call", "functionCall": "echo"}, None),
        ({"type": "knowledge-base-request", "messagesOpenAIFormatted": 5}, None),
        ({"type": "transfer-update", "call": "x", "status": "a\nb=c"}, {}),
    ],
)
async def test_odd_shapes_are_answered_not_crashed(
    env: SetEnv, caplog: pytest.LogCaptureFixture, message: dict[str, Any], response: Any
) -> None:
    caplog.set_level(logging.INFO, logger="ollama_worker")
    items = await run(webhook({"message": message}))
    assert "error" not in items[0], items
    if response is not None:
        assert items[0]["response"] == response
    assert all("\n" not in r.getMessage() for r in caplog.records if "vapi event" in r.msg)


@pytest.mark.parametrize("payload", [{}, {"message": {}}, {"message": {"type": 3}}, {"x": 1}])
async def test_a_payload_that_is_neither_is_invalid(env: SetEnv, payload: dict[str, Any]) -> None:
    error = await failure(webhook(payload))
    assert error.startswith("INVALID_INPUT: payload is neither a VAPI server message")


# --- custom LLM ---------------------------------------------------------------------------


async def test_custom_llm_answers_a_chat_completion_without_vapi_extras(
    env: SetEnv, fake: FakeOllama
) -> None:
    item = await answer(load("custom_llm"))
    assert item["message_type"] == "custom-llm"
    assert item["call_id"] == "call-7f3c"
    completion = ChatCompletion.model_validate(item["response"])
    assert completion.choices[0].message.content == "You said: What is your return policy?"
    (sent,) = fake.received()
    assert set(sent) == {"model", "messages", "temperature", "max_tokens", "stream"}


async def test_custom_llm_stream_passes_sse_events_through(env: SetEnv) -> None:
    payload = load("custom_llm")
    whole = (await answer(payload))["response"]["choices"][0]["message"]["content"]
    items = await run(webhook({**payload, "stream": True}))
    chunks, text = sse_chunks(items)
    assert text == whole
    assert len(chunks) > 3
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_custom_llm_stream_items_arrive_one_by_one(env: SetEnv, fake: FakeOllama) -> None:
    fake.configure(token_delay_s=0.05)
    arrivals = []
    job = webhook({**load("custom_llm"), "stream": True})
    async for _item in handler({"id": "t", "input": job}):
        arrivals.append(time.monotonic())
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    # Seven tokens 50 ms apart: batched items would come in one burst at the end. (Events
    # ready together may share an item, so there may be fewer items than events.)
    assert len(arrivals) >= 6
    assert arrivals[-1] - arrivals[0] > 0.25
    assert sum(gap > 0.03 for gap in gaps) >= 4, gaps


async def test_custom_llm_with_a_missing_model_fails_the_job(env: SetEnv) -> None:
    error = await failure(webhook({**load("custom_llm"), "model": "no-such-model"}))
    assert error.startswith("MODEL_NOT_FOUND: model 'no-such-model' is not installed")


# --- authentication -----------------------------------------------------------------------


def _now() -> float:
    """The time, read when a parametrised job is built rather than at collection."""
    return time.time()


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Vapi-Secret": SECRET},
        {"x-vapi-secret": SECRET},
        {"X-VAPI-SECRET": SECRET},
        {"Authorization": f"Bearer {SECRET}"},
        {"authorization": f"bearer {SECRET}"},
        {"X-Vapi-Secret": "wrong", "Authorization": f"Bearer {SECRET}"},
    ],
)
async def test_secret_headers_are_accepted(env: SetEnv, headers: dict[str, str]) -> None:
    env(VAPI_WEBHOOK_SECRET=SECRET)
    assert (await answer(load("hang"), headers=headers))["response"] == {}


@pytest.mark.parametrize(
    ("timestamp", "prefix"),
    [
        (lambda: str(int(_now())), ""),
        (lambda: str(int(_now() * 1000)), ""),
        (lambda: str(int(_now()) - 200), "sha256="),
    ],
)
async def test_hmac_signatures_are_accepted(
    env: SetEnv, timestamp: Callable[[], str], prefix: str
) -> None:
    env(VAPI_WEBHOOK_SECRET=SECRET)
    job = signed(load("tool_calls"), timestamp())
    job["headers"]["x-signature"] = prefix + job["headers"]["x-signature"]
    items = await run(job)
    assert items[0]["response"]["results"][0]["result"] == "hi hi"


def _tampered() -> dict[str, Any]:
    """A validly signed body sent with a different payload."""
    job = signed(load("hang"), str(int(_now())))
    job["payload"] = load("tool_calls")
    return job


def _without_raw_body() -> dict[str, Any]:
    """A signature sent without the body it signs."""
    job = signed(load("hang"), str(int(_now())))
    del job["raw_body"]
    return job


@pytest.mark.parametrize(
    ("job", "reason"),
    [
        (lambda: webhook(load("hang")), "no credentials"),
        (lambda: webhook({}), "no credentials"),
        (lambda: webhook(load("hang"), headers={"X-Vapi-Secret": "nope"}), "the secret does"),
        (lambda: webhook(load("hang"), headers={"Authorization": "Bearer no"}), "the secret does"),
        (lambda: webhook(load("hang"), headers={"Authorization": SECRET}), "the secret does"),
        (lambda: signed(load("hang"), str(int(_now()) - 600)), r"x-timestamp is 60\d s from"),
        (
            lambda: signed(load("hang"), str(int(_now() + 400) * 1000)),
            r"x-timestamp is (39\d|400) s",
        ),
        (lambda: signed(load("hang"), "yesterday"), "x-timestamp is not a number"),
        (lambda: signed(load("hang"), str(int(_now())), "forged"), "x-signature does not match"),
        (_tampered, "raw_body is not the JSON of payload"),
        (_without_raw_body, "x-signature needs the job's raw_body"),
    ],
)
async def test_unproven_jobs_are_unauthorized(
    env: SetEnv, job: Callable[[], dict[str, Any]], reason: str
) -> None:
    env(VAPI_WEBHOOK_SECRET=SECRET)
    error = await failure(job())
    assert re.match(f"UNAUTHORIZED: {reason}", error), error


async def test_the_secret_never_shows_in_logs_or_outputs(
    env: SetEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    env(VAPI_WEBHOOK_SECRET=SECRET)
    good = {"X-Vapi-Secret": SECRET}
    outputs = [
        await run(webhook(load("hang"), headers={"X-Vapi-Secret": SECRET + "x"})),
        await run(webhook(load("hang"), headers={"Authorization": f"Bearer {SECRET[:-1]}"})),
        await run(signed(load("hang"), str(int(_now())), SECRET[::-1])),
        await run(webhook({}, headers=good)),
        await run(webhook(load("end_of_call_report"), headers=good)),
        await run(webhook(load("tool_calls"), headers=good)),
        await run(webhook(load("assistant_request"), headers=good)),
    ]
    assert "UNAUTHORIZED" in json.dumps(outputs)
    assert "end-of-call-report" in caplog.text
    assert SECRET not in json.dumps(outputs)
    assert SECRET not in caplog.text


def test_hmac_timestamps_in_seconds_or_milliseconds() -> None:
    payload = {"message": {"type": "hang"}}
    for stamp in ("1700000000", "1700000000000", "1700000000.5"):
        job = signed(payload, stamp)
        check_webhook_auth(SECRET, job["headers"], job["raw_body"], payload, now=1_700_000_100.0)
