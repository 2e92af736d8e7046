"""Reply planning: the deterministic text, tokens, tool calls, thinking and format filling."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from standins.ollama.requests import THINK_LEVELS
from standins.ollama.wire import _dumps

if TYPE_CHECKING:
    from standins.ollama.requests import GenRequest
DEFAULT_REPLY = "Hello! How can I help you today?"
EMBED_DIM = 8
_TOKEN_RE = re.compile(r"\S+\s*|\s+")


def tokenize(text: str) -> list[str]:
    """Split a reply into word tokens that keep their trailing whitespace."""
    return _TOKEN_RE.findall(text)


def embed_vector(model: str, text: str) -> list[float]:
    """A deterministic unit-length embedding derived from a hash of the text."""
    digest = hashlib.sha256(f"{model}\0{text}".encode()).digest()
    raw = [(byte - 127.5) / 127.5 for byte in digest[:EMBED_DIM]]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [round(v / norm, 6) for v in raw]


def _word_count(text: Any) -> int:
    """Words in a message content (0 for non-text content)."""
    return len(text.split()) if isinstance(text, str) else 0


@dataclass
class Plan:
    """The deterministic outcome of one generation request."""

    content: list[str]
    thinking: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    done_reason: str = "stop"
    prompt_eval_count: int = 10

    @property
    def eval_count(self) -> int:
        """Tokens "generated": content tokens plus the tool-call JSON's."""
        calls = sum(len(tokenize(_dumps(c["function"]))) for c in self.tool_calls)
        return len(self.content) + calls

    @property
    def text(self) -> str:
        """The whole content."""
        return "".join(self.content)

    def steps(self) -> list[tuple[str, Any]]:
        """What is emitted, in order: thinking tokens, tool calls, content tokens."""
        steps: list[tuple[str, Any]] = [("thinking", t) for t in self.thinking]
        if self.tool_calls:
            steps.append(("tool_calls", self.tool_calls))
        steps += [("content", t) for t in self.content]
        return steps


def _last_user(messages: list[dict[str, Any]]) -> str | None:
    """Content of the last user message, if any."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else ""
    return None


def _tool_call(text: str, tools: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The call the user asked for with ``call <tool> {json args}``, if any."""
    best: tuple[int, str, int] | None = None
    for tool in tools:
        name = (tool.get("function") or {}).get("name") if isinstance(tool, dict) else None
        if not isinstance(name, str) or not name:
            continue
        match = re.search(rf"\bcall\s+{re.escape(name)}(?![\w-])", text)
        if match and (best is None or match.start() < best[0]):
            best = (match.start(), name, match.end())
    if best is None:
        return None
    _, name, end = best
    arguments: dict[str, Any] = {}
    brace = text.find("{", end)
    if brace >= 0:
        with contextlib.suppress(ValueError):
            value, _ = json.JSONDecoder().raw_decode(text, brace)
            if isinstance(value, dict):
                arguments = value
    function = {"index": 0, "name": name, "arguments": arguments}
    return {"id": _tool_call_id(), "function": function}


def _fill_value(schema: Any, text: str) -> Any:
    """A value that fits a JSON-schema fragment."""
    if not isinstance(schema, dict):
        return text
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    fillers: dict[str, Callable[[], Any]] = {
        "integer": lambda: 1,
        "number": lambda: 1.0,
        "boolean": lambda: True,
        "array": list,
        "null": lambda: None,
        "object": lambda: _fill_object(schema, text),
    }
    return fillers.get(kind, lambda: text)() if isinstance(kind, str) else text


def _fill_object(schema: Any, text: str) -> dict[str, Any]:
    """A JSON object for ``format``: the schema's properties, or {"reply"}."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict) or not properties:
        return {"reply": text}
    return {key: _fill_value(sub, text) for key, sub in properties.items()}


def plan_reply(req: GenRequest, reply: str | None, system: str) -> Plan:
    """Decide the answer: echo, tool call, JSON format, thinking, stop and caps."""
    messages = req.messages
    last = _last_user(messages)
    prompt_words = _word_count(system) + sum(_word_count(m.get("content")) for m in messages)
    plan = Plan(content=[], prompt_eval_count=prompt_words + 10)
    if req.think in (True, *THINK_LEVELS):
        plan.thinking = tokenize(f"Thinking about: {last or ''}")
    call = _tool_call(last, req.tools) if last and req.tools else None
    if call is not None:
        plan.tool_calls = [call]
        return plan
    echo = DEFAULT_REPLY if last is None else "You said: " + last
    text = reply if reply is not None else echo
    if req.format == "json" or isinstance(req.format, dict):
        text = json.dumps(_fill_object(req.format, text))
    stops = req.options.get("stop") or []
    stops = [stops] if isinstance(stops, str) else stops
    cuts = [text.find(s) for s in stops if isinstance(s, str) and s and s in text]
    if cuts:
        text = text[: min(cuts)]
    tokens = tokenize(text)
    limit = req.options.get("num_predict")
    if isinstance(limit, int | float) and 0 <= limit < len(tokens):
        tokens = tokens[: int(limit)]
        plan.done_reason = "length"
    plan.content = tokens
    return plan


def _tool_call_id() -> str:
    """A tool-call id like Ollama's toolCallId()."""
    alphabet = string.ascii_lowercase + string.digits
    return "call_" + "".join(random.choice(alphabet) for _ in range(8))
