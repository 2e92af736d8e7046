"""The job API's records and formats: what one job went through, and the job-take answer."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple


@dataclass(frozen=True)
class RawJSON:
    """A job input given as JSON text and served verbatim in the job-take answer.

    For inputs Python cannot build or dump but RunPod passes on: JSON sets no depth limit
    (RFC 8259 leaves one to implementations; Go's encoding/json allows 10,000 levels), while
    Python's json raises RecursionError near 1,000, and runpod 1.12.0's get_job
    (rp_job.py) catches only ContentTypeError and ValueError around its parse.
    """

    text: str


@dataclass
class JobRecord:
    """Everything the stand-in saw of one job, with time.monotonic() stamps."""

    id: str
    input: Any
    submitted_at: float | None
    taken_at: float | None = None
    taken_by: str | None = None
    stream: list[tuple[float, Any]] = field(default_factory=list)
    done_at: float | None = None
    result: dict[str, Any] | None = None
    status: str | None = None  # "COMPLETED", "FAILED", "CANCELLED" (stopped while queued)
    done_posts: int = 0  # job-done POSTs received: more than one is a protocol bug
    is_stream_flags: list[str | None] = field(default_factory=list)  # isStream of each done
    stop_requested_at: float | None = None
    stop_delivered_at: float | None = None
    for_worker: str | None = None  # only this worker may take it (None: any)

    @property
    def stream_items(self) -> list[Any]:
        """The items streamed to /job-stream, in arrival order."""
        return [item for _, item in self.stream]

    @property
    def output(self) -> Any:
        """The job-done body's `output` (None when absent or not done)."""
        return (self.result or {}).get("output")

    @property
    def error(self) -> Any:
        """The job-done body's `error` (None when absent or not done)."""
        return (self.result or {}).get("error")

    @property
    def done(self) -> bool:
        """Whether a job-done POST arrived for it."""
        return self.done_at is not None


class Take(NamedTuple):
    """One job-take request: when, its ``job_in_progress`` query, its batch size, its worker."""

    at: float
    job_in_progress: str | None
    batch_size: int
    worker_id: str


class Polls(NamedTuple):
    """Job-take and job-stop requests received since the last reset."""

    take: int
    stop: int


def _json_text(value: Any) -> str:
    """A job input as the JSON text of the job-take answer."""
    return value.text if isinstance(value, RawJSON) else json.dumps(value)


def take_body(records: list[JobRecord], batch: bool) -> str:
    """The job-take answer: {"id", "input"} of the one job, or a JSON list of them (batch)."""
    jobs = [
        f'{{"id": {json.dumps(record.id)}, "input": {_json_text(record.input)}}}'
        for record in records
    ]
    return f"[{', '.join(jobs)}]" if batch else jobs[0]


def post_body(raw: bytes) -> dict[str, Any]:
    """A job-stream or job-done body: a JSON object; ValueError says what else it was."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError("body is not JSON text") from None
    if not isinstance(body, dict):
        raise ValueError("body is not a JSON object")
    return body
