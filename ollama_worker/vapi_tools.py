"""The user's VAPI tools: a Python module of functions, imported once and called safely.

Every failure (no module, unknown tool, bad arguments, a raising or slow tool) becomes an
`error` text for that one call, so a VAPI call never loses its other tool results.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# Functions the worker itself calls for one kind of VAPI server message: hooks, not tools.
HOOKS: dict[str, str] = {
    "knowledge_base": "knowledge-base-request",
    "transfer_destination": "transfer-destination-request",
    "handoff_destination": "handoff-destination-request",
    "endpointing_timeout": "call.endpointing.request",
    "campaign_predial": "campaign.predial",
}


class NoHook:
    """The tools module defines no such hook (or there is no module)."""


NO_HOOK = NoHook()


class HookFailed(Exception):
    """A hook raised or ran out of time; the message says which and how, never the call."""


@dataclass(frozen=True)
class Tools:
    """The callables of the tools module, or why there are none."""

    functions: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    problem: str = "VAPI_TOOLS_MODULE is not set"
    hooks: Mapping[str, Callable[..., Any]] = field(default_factory=dict)


def _is_tool(module: Any, name: str, value: Any) -> bool:
    """Whether a module attribute is a tool: public, callable, and the module's own."""
    if name.startswith("_") or not callable(value) or name in HOOKS:
        return False
    exported = getattr(module, "__all__", None)
    if exported is not None:
        return bool(name in exported)
    # Names the module merely imports (`from datetime import datetime`) are not tools.
    return bool(getattr(value, "__module__", None) == module.__name__)


@functools.cache
def load_tools(module_name: str) -> Tools:
    """Import the tools module once; an import failure is remembered, not raised."""
    if not module_name:
        return Tools()
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        log.exception("could not import VAPI_TOOLS_MODULE %r", module_name)
        return Tools(problem=f"VAPI_TOOLS_MODULE {module_name!r} failed to import: {exc!r}")
    functions = {
        name: value for name, value in vars(module).items() if _is_tool(module, name, value)
    }
    hooks = {name: hook for name in HOOKS if callable(hook := getattr(module, name, None))}
    log.info(
        "VAPI tools from %s: %s; hooks: %s",
        module_name,
        ", ".join(sorted(functions)) or "none",
        ", ".join(hooks) or "none",
    )
    return Tools(functions=functions, problem=f"{module_name} has no such function", hooks=hooks)


async def get_tools(module_name: str) -> Tools:
    """The tools, imported in a thread on first use so a slow import blocks no other job."""
    return await asyncio.to_thread(load_tools, module_name)


def parse_arguments(arguments: Any) -> dict[str, Any]:
    """Keyword arguments from a JSON string or an object; raise ValueError when neither."""
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError as exc:
            raise ValueError(f"arguments are not valid JSON ({exc})") from None
    if not isinstance(arguments, dict):
        raise ValueError(f"arguments must be a JSON object, not {type(arguments).__name__}")
    return arguments


async def invoke(function: Callable[..., Any], kwargs: dict[str, Any], timeout_s: float) -> Any:
    """Call a sync (in a thread, to keep the event loop free) or async function, with a timeout."""
    # A sync function that overruns keeps its thread until it returns: Python cannot stop it.
    async with asyncio.timeout(timeout_s):
        if inspect.iscoroutinefunction(function):
            value = await function(**kwargs)
        else:
            value = await asyncio.to_thread(function, **kwargs)
        if inspect.isawaitable(value):  # e.g. an object whose __call__ is async
            value = await value
    return value


def as_text(value: Any) -> str:
    """A tool's return value as VAPI wants it: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


async def call_tool(tools: Tools, name: str, arguments: Any, timeout_s: float) -> dict[str, str]:
    """Run one tool: `{"result": text}` on success, `{"error": text}` on any failure."""
    function = tools.functions.get(name)
    if name in HOOKS:
        return {
            "error": f"unknown tool {name!r}: {name} is a hook the worker calls for VAPI's "
            f"{HOOKS[name]} message, not a tool the model can call"
        }
    if function is None:
        return {"error": f"unknown tool {name!r}: {tools.problem}"}
    try:
        kwargs = parse_arguments(arguments)
        # Bind first, so a TypeError raised inside the tool is not mistaken for bad arguments.
        inspect.signature(function).bind(**kwargs)
    except (ValueError, TypeError) as exc:
        return {"error": f"bad arguments for {name!r}: {exc}"}
    try:
        text = as_text(await invoke(function, kwargs, timeout_s))
    except TimeoutError:
        log.warning("VAPI tool %s took longer than %g s", name, timeout_s)
        return {"error": f"tool {name!r} did not finish within {timeout_s:g} s"}
    except Exception as exc:
        log.warning("VAPI tool %s failed", name, exc_info=True)
        return {"error": f"tool {name!r} failed: {type(exc).__name__}: {exc}"}
    return {"result": text}


def _document(item: Any) -> dict[str, Any]:
    """One knowledge-base document in VAPI's form; raise ValueError when it cannot be one."""
    if not isinstance(item, dict) or not isinstance(item.get("content"), str):
        raise ValueError("each document needs a string `content`")
    similarity = item.get("similarity")
    if isinstance(similarity, bool) or not isinstance(similarity, int | float):
        raise ValueError("each document needs a number `similarity`")
    document = {"content": item["content"], "similarity": similarity}
    if isinstance(item.get("uuid"), str):
        document["uuid"] = item["uuid"]
    return document


async def knowledge_base_documents(
    tools: Tools, query: str, messages: list[Any], timeout_s: float
) -> list[dict[str, Any]]:
    """The hook's documents for a knowledge-base request; none when it is missing or fails."""
    try:
        found = await call_hook(tools, "knowledge_base", timeout_s, query=query, messages=messages)
        if found is NO_HOOK:
            return []
        return [_document(item) for item in found or []]
    except Exception:  # HookFailed, or documents of the wrong shape
        # VAPI's answer has no error form: the model goes on without documents.
        log.warning("VAPI knowledge_base hook failed; answering no documents", exc_info=True)
        return []


async def call_hook(tools: Tools, name: str, timeout_s: float, **kwargs: Any) -> Any:
    """A hook's return value, NO_HOOK when the module has none; raise HookFailed on failure."""
    hook = tools.hooks.get(name)
    if hook is None:
        return NO_HOOK
    try:
        return await invoke(hook, kwargs, timeout_s)
    except TimeoutError:
        raise HookFailed(f"the {name} hook did not finish within {timeout_s:g} s") from None
    except Exception as exc:
        # The traceback is the module author's to read; the reason given on is only its type.
        log.warning("VAPI hook %s failed", name, exc_info=True)
        raise HookFailed(f"the {name} hook raised {type(exc).__name__}") from None
