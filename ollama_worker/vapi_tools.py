"""The user's VAPI tools: a Python module of functions, imported once and called safely.

Every failure (no module, unknown tool, bad arguments, a raising or slow tool, no free tool
thread) becomes an `error` text for that one call, so a VAPI call never loses its other tool
results. Sync tools run on threads of their own (VAPI_TOOL_THREADS), and the module is
imported on another, so that a stuck tool holds neither the loop's default executor (DNS and
every other `to_thread` use it) nor the next message's import.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib
import inspect
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ollama_worker.config import get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")

# A module that failed to import is tried again on a message this long after the failure.
IMPORT_RETRY_S = 10.0
# How long a message waits for the module's import before it answers without tools.
IMPORT_WAIT_S = 15.0

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
    import_failed: bool = False


def _is_tool(module: Any, name: str, value: Any) -> bool:
    """Whether a module attribute is a tool: a public function (or, in `__all__`, a callable
    object), and the module's own; never a class."""
    if name.startswith("_") or not callable(value) or inspect.isclass(value) or name in HOOKS:
        return False
    exported = getattr(module, "__all__", None)
    if exported is not None:
        return bool(name in exported)
    # Names the module merely imports (`from datetime import datetime`) are not tools.
    return inspect.isfunction(value) and bool(value.__module__ == module.__name__)


def load_tools(module_name: str) -> Tools:
    """Import the tools module (run on the import thread); a failure is returned, not raised."""
    if not module_name:
        return Tools()
    try:
        importlib.invalidate_caches()  # a retry finds a module file that appeared since
        module = importlib.import_module(module_name)
    except Exception as exc:
        log.exception("could not import VAPI_TOOLS_MODULE %r", module_name)
        return Tools(
            problem=f"VAPI_TOOLS_MODULE {module_name!r} failed to import: {type(exc).__name__} "
            f"(tried again {IMPORT_RETRY_S:g} s after the failure)",
            import_failed=True,
        )
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


def on_daemon_thread(name: str, function: Callable[[], T]) -> concurrent.futures.Future[T]:
    """`function()` on a daemon thread of its own, so that one that never returns (a stuck
    tool, a hanging import) holds up neither a pool nor the process's exit."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(function())
        except BaseException as exc:  # the caller sees it, whatever it is
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


class _Importer:
    """Imports each tools module once, on a thread of its own; again after a failure."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: dict[str, Tools] = {}
        self._failed: dict[str, tuple[float, Tools]] = {}
        self._importing: dict[str, concurrent.futures.Future[Tools]] = {}

    def reset(self) -> None:
        """Forget every import (for tests that change VAPI_TOOLS_MODULE)."""
        with self._lock:
            self._loaded.clear()
            self._failed.clear()
            self._importing.clear()

    def _import(self, module_name: str) -> Tools:
        tools = load_tools(module_name)
        with self._lock:
            self._importing.pop(module_name, None)
            if tools.import_failed:
                self._failed[module_name] = (time.monotonic(), tools)
            else:
                self._loaded[module_name] = tools
        return tools

    def future(self, module_name: str) -> Tools | concurrent.futures.Future[Tools]:
        """The module's tools when known, else the future of its (one) import."""
        with self._lock:
            if (tools := self._loaded.get(module_name)) is not None:
                return tools
            failed = self._failed.get(module_name)
            if failed is not None and time.monotonic() - failed[0] < IMPORT_RETRY_S:
                return failed[1]
            if (pending := self._importing.get(module_name)) is None:
                pending = self._importing[module_name] = on_daemon_thread(
                    "vapi-tools-import", lambda: self._import(module_name)
                )
            return pending


_importer = _Importer()
reset_tools = _importer.reset


async def get_tools(module_name: str) -> Tools:
    """The tools, imported on a thread of their own on first use, so no job waits for it
    longer than IMPORT_WAIT_S and a stuck tool never delays it."""
    if not module_name:
        return Tools()
    found = _importer.future(module_name)
    if isinstance(found, Tools):
        return found
    try:
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(found)), IMPORT_WAIT_S)
    except TimeoutError:
        log.error("VAPI_TOOLS_MODULE %r is still importing after %g s", module_name, IMPORT_WAIT_S)
        return Tools(problem=f"VAPI_TOOLS_MODULE {module_name!r} is still importing; try again")


class ToolThreadsBusy(Exception):
    """Every tool thread is taken (by tools that have not returned yet)."""


class ToolThreads:
    """At most `size` sync tools and hooks at once, each on a thread of its own, never queued:
    a call finds a free slot at once or fails; a slot is free again only when its function
    has returned, which Python cannot force."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = threading.BoundedSemaphore(size)

    async def run(self, function: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        """`function(**kwargs)` on a thread of its own; ToolThreadsBusy when no slot is free."""
        if not self._free.acquire(blocking=False):
            raise ToolThreadsBusy(
                f"all {self.size} tool threads are busy with earlier calls (VAPI_TOOL_THREADS)"
            )

        def call() -> Any:
            try:
                return function(**kwargs)
            finally:
                self._free.release()

        try:
            future = on_daemon_thread("vapi-tool", call)
        except BaseException:  # no thread could be started
            self._free.release()
            raise

        def never_ran(done: concurrent.futures.Future[Any]) -> None:
            # Cancelled before its thread began, `call` never runs: free its slot here.
            if done.cancelled():
                self._free.release()

        future.add_done_callback(never_ran)
        return await asyncio.wrap_future(future)


@functools.cache
def tool_threads(size: int) -> ToolThreads:
    """The process's tool slots (one set of each size asked for: one, in practice)."""
    return ToolThreads(size)


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


class ToolCancelled(Exception):
    """The tool itself raised CancelledError: its failure, not a stop of the job."""


async def invoke(function: Callable[..., Any], kwargs: dict[str, Any], timeout_s: float) -> Any:
    """Call a sync (on a tool thread, to keep the event loop free) or async function, with a
    timeout; raise ToolThreadsBusy when no tool thread is free."""
    # A sync function that overruns keeps its thread until it returns: Python cannot stop it.
    try:
        async with asyncio.timeout(timeout_s):
            if inspect.iscoroutinefunction(function):
                value = await function(**kwargs)
            else:
                value = await tool_threads(get_settings().vapi_tool_threads).run(function, kwargs)
            if inspect.isawaitable(value):  # e.g. an object whose __call__ is async
                value = await value
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # the job is being stopped
        raise ToolCancelled("the tool raised CancelledError") from None
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
    except ToolThreadsBusy as exc:
        log.warning("VAPI tool %s not run: %s", name, exc)
        return {"error": f"tool {name!r} was not run: {exc}; try again shortly"}
    except Exception as exc:
        _log_failure("tool", name, exc)
        return {"error": f"tool {name!r} failed: {type(exc).__name__}: {exc}"}
    return {"result": text}


def _log_failure(kind: str, name: str, exc: Exception) -> None:
    """A tool's or hook's failure in the log: its type only, as its message and traceback
    often carry the call's arguments; the traceback at DEBUG, for the module's author."""
    log.warning("VAPI %s %s failed with %s", kind, name, type(exc).__name__)
    log.debug("VAPI %s %s traceback", kind, name, exc_info=exc)


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
    except Exception as exc:  # HookFailed, or documents of the wrong shape
        # VAPI's answer has no error form: the model goes on without documents. Only our own
        # messages are logged: a raising hook's was logged, by type, in call_hook.
        why = exc if isinstance(exc, HookFailed | ValueError) else type(exc).__name__
        log.warning("VAPI knowledge_base hook failed (%s); answering no documents", why)
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
    except ToolThreadsBusy as exc:
        raise HookFailed(f"the {name} hook was not run: {exc}") from None
    except Exception as exc:
        _log_failure("hook", name, exc)
        raise HookFailed(f"the {name} hook raised {type(exc).__name__}") from None
