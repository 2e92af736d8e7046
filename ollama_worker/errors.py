"""The coded errors a job can end with: `CODE: what happened and what to do`."""

from __future__ import annotations

import re
from enum import StrEnum

# Runs of whitespace and control characters: an error is one line, whatever text it quotes
# (an HTML error page, a traceback-like message, a caller's newline).
_BREAKS = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")


class ErrorCode(StrEnum):
    """Every code a caller may see in a failed job's `error` string."""

    INVALID_INPUT = "INVALID_INPUT"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    OLLAMA_UNAVAILABLE = "OLLAMA_UNAVAILABLE"
    OLLAMA_ERROR = "OLLAMA_ERROR"
    TIMEOUT = "TIMEOUT"
    UNAUTHORIZED = "UNAUTHORIZED"
    WORKER_STOPPED = "WORKER_STOPPED"
    WORKER_BUSY = "WORKER_BUSY"
    INTERNAL = "INTERNAL"


class WorkerError(Exception):
    """A failure the caller should see, as one coded line and never a traceback."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        message = one_line(message)
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def as_output(self) -> dict[str, str]:
        """The item a failed job yields; a string value, as RunPod reprs anything else."""
        return {"error": str(self)}


def one_line(text: str, limit: int | None = None) -> str:
    """`text` on one line, whitespace runs as one space; cut at `limit` characters with `...`."""
    flat = _BREAKS.sub(" ", text).strip()
    if limit is not None and len(flat) > limit:
        return flat[: limit - 3].rstrip() + "..."
    return flat
