"""The renderers: a planned reply in each route's wire format, streamed or whole."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from aiohttp import web

from standins.ollama.replies import Plan
from standins.ollama.wire import _dumps, _line, _sse, encoded_json, go_time, openai_error

if TYPE_CHECKING:
    from standins.ollama.requests import GenRequest


# --------------------------------------------------------------------------
# renderers: one wire format per generation route


def _metrics(plan: Plan, timing: dict[str, int]) -> dict[str, int]:
    """The api.Metrics block of a final reply."""
    return {
        "total_duration": timing["total"],
        "load_duration": timing["load"],
        "prompt_eval_count": plan.prompt_eval_count,
        "prompt_eval_duration": timing["prompt"],
        "eval_count": plan.eval_count,
        "eval_duration": timing["eval"],
    }


class Renderer:
    """Turns a Plan into one route's wire format (stream or whole)."""

    content_type: ClassVar[str] = "application/x-ndjson"
    # The Ollama handler behind the route: ChatHandler or GenerateHandler.
    handler: ClassVar[str] = "chat"

    def __init__(self, req: GenRequest) -> None:
        self.req = req
        self.stream = req.stream
        # Text the closing chunk carries (the ``final_text`` fault; /api/chat only).
        self.final_content = ""

    @staticmethod
    def error(
        status: int, message: str, *, middleware: bool = False, channel: bool = False
    ) -> web.Response:
        """An error reply before any byte of the answer was sent (``middleware``: the body
        failed to decode, which only the /v1 routes answer differently; ``channel``: it came
        down a stream's channel, where streamResponse sets a bare ``application/json``)."""
        if channel:
            body = _dumps({"error": message}).encode()
            headers = {"Content-Type": "application/json"}
            return web.Response(body=body, status=status, headers=headers)
        return web.json_response({"error": message}, status=status, dumps=_dumps)

    @staticmethod
    def not_found(model: str) -> str:
        """Error text for a model that is not installed."""
        return f"model '{model}' not found"

    @staticmethod
    def json(value: Any) -> web.Response:
        """A whole reply (gin's c.JSON)."""
        return web.json_response(value, dumps=_dumps)

    def step(self, kind: str, value: Any) -> bytes:
        """One stream chunk for a thinking token, tool-call batch or content token."""
        raise NotImplementedError

    def done(self, plan: Plan, timing: dict[str, int]) -> bytes:
        """The closing chunk(s) of a stream."""
        raise NotImplementedError

    def stream_error(self, message: str) -> bytes:
        """An error reported after the stream began."""
        return _line({"error": message})

    def whole(self, plan: Plan, timing: dict[str, int]) -> dict[str, Any]:
        """The single JSON object of a non-stream reply."""
        raise NotImplementedError

    def preload(self, reason: str) -> web.Response:
        """Answer to a load/unload request (no prompt)."""
        raise NotImplementedError


class ChatRenderer(Renderer):
    """POST /api/chat: api.ChatResponse objects as NDJSON."""

    def _chunk(self, message: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {
            "model": self.req.model,
            "created_at": go_time(),
            "message": {"role": "assistant", "content": "", **message},
            **extra,
        }

    def step(self, kind: str, value: Any) -> bytes:
        """One chat chunk."""
        return _line(self._chunk({kind: value}, done=False))

    def done(self, plan: Plan, timing: dict[str, int]) -> bytes:
        """Final chat chunk with done_reason and metrics (and any text held back for it)."""
        message = {"content": self.final_content} if self.final_content else {}
        return _line(
            self._chunk(message, done=True, done_reason=plan.done_reason, **_metrics(plan, timing))
        )

    def whole(self, plan: Plan, timing: dict[str, int]) -> dict[str, Any]:
        """Non-stream chat reply."""
        message: dict[str, Any] = {"content": plan.text}
        if plan.thinking:
            message["thinking"] = "".join(plan.thinking)
        if plan.tool_calls:
            message["tool_calls"] = plan.tool_calls
        return self._chunk(
            message, done=True, done_reason=plan.done_reason, **_metrics(plan, timing)
        )

    def preload(self, reason: str) -> web.Response:
        """Load/unload answer (ChatHandler with no messages)."""
        body = self._chunk({}, done_reason=reason, done=True)
        return web.json_response(body, dumps=_dumps)


class GenerateRenderer(Renderer):
    """POST /api/generate: api.GenerateResponse objects as NDJSON."""

    handler: ClassVar[str] = "generate"

    def _chunk(self, response: str, **extra: Any) -> dict[str, Any]:
        return {
            "model": self.req.model,
            "created_at": go_time(),
            "response": response,
            **extra,
        }

    def step(self, kind: str, value: Any) -> bytes:
        """One generate chunk (thinking goes in its own field)."""
        if kind == "thinking":
            return _line(self._chunk("", thinking=value, done=False))
        return _line(self._chunk(value, done=False))

    def _final(self, plan: Plan, timing: dict[str, int], response: str) -> dict[str, Any]:
        context = [len(t) for t in plan.content] or [0]
        return self._chunk(
            response,
            done=True,
            done_reason=plan.done_reason,
            context=context,
            **_metrics(plan, timing),
        )

    def done(self, plan: Plan, timing: dict[str, int]) -> bytes:
        """Final generate chunk with context and metrics."""
        return _line(self._final(plan, timing, ""))

    def whole(self, plan: Plan, timing: dict[str, int]) -> dict[str, Any]:
        """Non-stream generate reply."""
        body = self._final(plan, timing, plan.text)
        if plan.thinking:
            body["thinking"] = "".join(plan.thinking)
        return body

    def preload(self, reason: str) -> web.Response:
        """Load/unload answer (GenerateHandler with an empty prompt)."""
        body = self._chunk("", done=True, done_reason=reason)
        return web.json_response(body, dumps=_dumps)


class OpenAIRenderer(Renderer):
    """Shared parts of the /v1 generation routes (SSE streams, OpenAI errors)."""

    content_type: ClassVar[str] = "text/event-stream"
    id_prefix: ClassVar[str] = "chatcmpl"

    def __init__(self, req: GenRequest) -> None:
        super().__init__(req)
        self.id = f"{self.id_prefix}-{random.randrange(999)}"
        self.created = int(time.time())

    @staticmethod
    def error(
        status: int, message: str, *, middleware: bool = False, channel: bool = False
    ) -> web.Response:
        """OpenAI-form error (the /v1 writer's, however the handler met it)."""
        return openai_error(status, message, middleware=middleware)

    @staticmethod
    def json(value: Any) -> web.Response:
        """A whole reply, through the /v1 writer."""
        return encoded_json(value)

    def empty_chunk(self) -> dict[str, Any]:
        """The chunk the middleware makes of a response with nothing in it."""
        raise NotImplementedError

    def stream_error(self, message: str) -> bytes:
        """What 0.12.10 makes of an error after the stream began: the handler's error line
        reaches ChatWriter.writeResponse (the status is already 200), decodes as an empty
        response and goes out as one empty chunk with ``"model": ""``; no finish_reason,
        no ``[DONE]``, and the message is lost (middleware/openai.go)."""
        return _sse({**self.empty_chunk(), "model": ""})

    @staticmethod
    def usage(plan: Plan) -> dict[str, int]:
        """The usage block."""
        return {
            "prompt_tokens": plan.prompt_eval_count,
            "completion_tokens": plan.eval_count,
            "total_tokens": plan.prompt_eval_count + plan.eval_count,
        }

    def envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        """Fields every completion object and chunk carries."""
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.req.model,
            "system_fingerprint": "fp_ollama",
            "choices": choices,
        }

    def finish_reason(self, plan: Plan) -> str:
        """OpenAI finish_reason for a plan."""
        return "tool_calls" if plan.tool_calls else plan.done_reason

    def closing(self, last: dict[str, Any], plan: Plan) -> bytes:
        """Final chunk, optional usage chunk and the [DONE] marker."""
        out = _sse(last)
        if self.req.include_usage:
            out += _sse({**last, "choices": [], "usage": self.usage(plan)})
        return out + b"data: [DONE]\n\n"


class OpenAIChatRenderer(OpenAIRenderer):
    """POST /v1/chat/completions."""

    def _tool_calls(self, plan_calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                "id": call["id"],
                "index": i,
                "type": "function",
                "function": {
                    "name": call["function"]["name"],
                    "arguments": _dumps(call["function"]["arguments"]),
                },
            }
            for i, call in enumerate(plan_calls)
        ]

    def _delta_chunk(self, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": "", **delta},
            "finish_reason": finish,
        }
        return self.envelope("chat.completion.chunk", [choice])

    def empty_chunk(self) -> dict[str, Any]:
        """openai.ToChunk of an empty api.ChatResponse."""
        return self._delta_chunk({}, None)

    def step(self, kind: str, value: Any) -> bytes:
        """One chat.completion.chunk event."""
        deltas: dict[str, Callable[[], dict[str, Any]]] = {
            "thinking": lambda: {"reasoning": value},
            "tool_calls": lambda: {"tool_calls": self._tool_calls(value)},
            "content": lambda: {"content": value},
        }
        delta = deltas[kind]()
        return _sse(self._delta_chunk(delta, None))

    def done(self, plan: Plan, timing: dict[str, int]) -> bytes:
        """Last chunk carries finish_reason; then usage and [DONE]."""
        return self.closing(self._delta_chunk({}, self.finish_reason(plan)), plan)

    def whole(self, plan: Plan, timing: dict[str, int]) -> dict[str, Any]:
        """A chat.completion object."""
        message: dict[str, Any] = {"role": "assistant", "content": plan.text}
        if plan.thinking:
            message["reasoning"] = "".join(plan.thinking)
        if plan.tool_calls:
            message["tool_calls"] = self._tool_calls(plan.tool_calls)
        choice = {"index": 0, "message": message, "finish_reason": self.finish_reason(plan)}
        return {**self.envelope("chat.completion", [choice]), "usage": self.usage(plan)}


class OpenAICompletionRenderer(OpenAIRenderer):
    """POST /v1/completions."""

    id_prefix: ClassVar[str] = "cmpl"
    handler: ClassVar[str] = "generate"

    def _text_chunk(self, text: str, finish: str | None) -> dict[str, Any]:
        chunk = self.envelope(
            "text_completion", [{"text": text, "index": 0, "finish_reason": finish}]
        )
        if self.req.include_usage:
            chunk["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return chunk

    def empty_chunk(self) -> dict[str, Any]:
        """openai.ToCompleteChunk of an empty api.GenerateResponse."""
        return self._text_chunk("", None)

    def step(self, kind: str, value: Any) -> bytes:
        """One text_completion chunk (thinking is not part of completions)."""
        return _sse(self._text_chunk(value if kind == "content" else "", None))

    def done(self, plan: Plan, timing: dict[str, int]) -> bytes:
        """Closing chunk with finish_reason, optional usage, [DONE]."""
        return self.closing(self._text_chunk("", plan.done_reason), plan)

    def whole(self, plan: Plan, timing: dict[str, int]) -> dict[str, Any]:
        """A text_completion object."""
        choice = {"text": plan.text, "index": 0, "finish_reason": plan.done_reason}
        return {**self.envelope("text_completion", [choice]), "usage": self.usage(plan)}

    def preload(self, reason: str) -> web.Response:
        """Empty prompt: Ollama loads the model and answers done_reason "load"."""
        plan = Plan(content=[], done_reason=reason, prompt_eval_count=0)
        if self.stream:
            body = self.done(plan, {})
            return web.Response(body=body, content_type=self.content_type)
        return encoded_json(self.whole(plan, {}))
