"""The coded errors a job can end with: `CODE: what happened and what to do`."""

from __future__ import annotations

from enum import StrEnum


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
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def as_output(self) -> dict[str, str]:
        """The item a failed job yields; a string value, as RunPod reprs anything else."""
        return {"error": str(self)}
