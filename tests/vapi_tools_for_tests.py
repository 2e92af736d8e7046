"""The tools module the VAPI tests point VAPI_TOOLS_MODULE at: one tool per behaviour tested."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

# Knowledge-base documents, and the arguments the last knowledge_base call received.
DOCUMENTS = [{"content": "Returns are free within 30 days.", "similarity": 0.9, "uuid": "r1"}]
seen: dict[str, Any] = {}


def echo(text: str, times: int = 1) -> str:
    """Sync tool returning a string."""
    return " ".join([text] * times)


async def add(a: float, b: float) -> dict[str, float]:
    """Async tool returning JSON."""
    await asyncio.sleep(0)
    return {"sum": a + b}


def explode() -> str:
    """A tool that raises."""
    raise RuntimeError("the tool broke")


def inner_type_error() -> str:
    """A tool whose own TypeError must not be reported as bad arguments."""
    return len(5)  # type: ignore[arg-type]


def sleep_sync(seconds: float) -> str:
    """Sync tool that blocks its thread, to show the event loop stays free."""
    time.sleep(seconds)
    return "slept"


async def sleep_async(seconds: float) -> str:
    """Async tool that can outlast the tool timeout."""
    await asyncio.sleep(seconds)
    return "slept"


def _private() -> str:
    """Not a tool: the name starts with an underscore."""
    return "never"


def knowledge_base(query: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The knowledge-base hook: records its arguments and returns DOCUMENTS."""
    seen.update(query=query, messages=messages)
    return DOCUMENTS


# What each message hook answers (None: defer to the environment; an exception: raised), set
# by a test, and the message each hook last received.
hook_answers: dict[str, Any] = {}
hook_messages: dict[str, dict[str, Any]] = {}


async def _hook(name: str, message: dict[str, Any]) -> Any:
    hook_messages[name] = message
    answer = hook_answers.get(name)
    if isinstance(answer, BaseException):
        raise answer
    return answer


async def transfer_destination(message: dict[str, Any]) -> Any:
    """The transfer-destination-request hook."""
    return await _hook("transfer_destination", message)


async def handoff_destination(message: dict[str, Any]) -> Any:
    """The handoff-destination-request hook."""
    return await _hook("handoff_destination", message)


def endpointing_timeout(message: dict[str, Any]) -> Any:
    """The call.endpointing.request hook, sync like most user code."""
    hook_messages["endpointing_timeout"] = message
    answer = hook_answers.get("endpointing_timeout")
    if isinstance(answer, BaseException):
        raise answer
    return answer


async def campaign_predial(message: dict[str, Any]) -> Any:
    """The campaign.predial hook; sleeps first when told to, to outlast the hook timeout."""
    await asyncio.sleep(hook_answers.get("campaign_predial_delay_s", 0))
    return await _hook("campaign_predial", message)


# Imported names are not tools, though public and callable.
dumps = json.dumps


async def cancel_itself() -> str:
    """An async tool that raises CancelledError itself: its failure, not a stop of the job."""
    raise asyncio.CancelledError


def leak_arguments(card_number: str) -> str:
    """A tool whose exception message carries its arguments, as many do."""
    raise ValueError(f"card {card_number} declined")


class NotATool:
    """A class in the tools module: callable, public, the module's own, and still no tool."""

    def __init__(self) -> None:
        self.made = True
