"""Example VAPI tools module: copy it, edit it, and point VAPI_TOOLS_MODULE at your copy.

Every public function defined here is a tool, called by name with the arguments the model
chose as keyword arguments. Plain functions run in a worker thread, `async def` ones on the
event loop (so they must not block); either may return a string or anything JSON can encode.
A tool that raises, or runs past VAPI_TOOL_TIMEOUT_S, gives VAPI an error for that call only.
Use with `VAPI_TOOLS_MODULE=examples.vapi_tools`.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# A stand-in for your order system; a real tool would query a database or an API.
_ORDERS = {
    "A100": {"status": "shipped", "carrier": "UPS", "eta": "tomorrow"},
    "A200": {"status": "processing", "carrier": None, "eta": "in 3 days"},
}
_FAQ = [
    {"uuid": "returns", "content": "You can return any item within 30 days for a full refund."},
    {"uuid": "hours", "content": "Our support line is open 9am to 5pm, Monday to Friday."},
    {"uuid": "shipping", "content": "Standard shipping takes 3 to 5 business days."},
]


def get_time(timezone: str = "UTC") -> str:
    """The current local time in an IANA time zone such as "Europe/Paris", to read aloud."""
    try:
        now = datetime.now(ZoneInfo(timezone))
    except (ZoneInfoNotFoundError, ValueError):
        return f"I don't know the time zone {timezone!r}."
    return now.strftime(f"It is %H:%M on %A, %B %d, in {timezone}.")


async def lookup_order(order_id: str) -> dict[str, Any]:
    """An order's status; async because a real lookup would await a database or HTTP call."""
    await asyncio.sleep(0)  # stands in for that awaited call
    order = _ORDERS.get(order_id.strip().upper())
    if order is None:
        return {"found": False, "order_id": order_id}
    return {"found": True, "order_id": order_id, **order}


def knowledge_base(query: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Documents for a `knowledge-base-request`: the FAQ entries sharing words with the query.

    Not a tool: the worker calls it for VAPI's custom knowledge base
    (`assistant.knowledgeBase.provider = "custom-knowledge-base"`). `messages` is the
    conversation so far, in OpenAI form. Return `[{"content", "similarity", "uuid"?}]`.
    """
    words = {word.strip(".,?!").lower() for word in query.split() if len(word) > 3}
    scored = []
    for entry in _FAQ:
        shared = words & {word.strip(".,").lower() for word in entry["content"].split()}
        if shared:
            scored.append({**entry, "similarity": round(len(shared) / len(words), 2)})
    return sorted(scored, key=lambda document: document["similarity"], reverse=True)
