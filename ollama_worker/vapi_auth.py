"""Proof that a `vapi_webhook` job comes from VAPI: a shared secret or an HMAC signature.

VAPI sends one of: `X-Vapi-Secret: <secret>` (legacy inline secret), `Authorization: Bearer
<secret>` (a Bearer Token credential), or an HMAC credential's `x-signature` over
`"{x-timestamp}.{raw body}"` (sha256, hex, its defaults). Every comparison is constant-time and
no message here ever contains the secret or a header value.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from ollama_worker.errors import ErrorCode, WorkerError

MAX_SKEW_S = 300.0
# VAPI's docs leave the x-timestamp unit open: read values this large as milliseconds.
MILLISECONDS_FROM = 1e11
HOW_TO = (
    "send X-Vapi-Secret, Authorization: Bearer, or x-signature and x-timestamp with raw_body, "
    "made with VAPI_WEBHOOK_SECRET"
)


def _same(given: str, expected: str) -> bool:
    """Constant-time equality, so timing does not leak how much of a guess was right."""
    return hmac.compare_digest(given.encode(), expected.encode())


def _signature_error(
    secret: str, headers: Mapping[str, str], raw_body: str | None, payload: Any, now: float
) -> str | None:
    """Why the HMAC headers do not prove the job, or None when they do."""
    signature = headers["x-signature"].strip().removeprefix("sha256=")
    stamp = headers.get("x-timestamp", "").strip()
    if raw_body is None or not stamp:
        return "x-signature needs x-timestamp and the job's raw_body"
    try:
        seconds = float(stamp)
    except ValueError:
        return "x-timestamp is not a number"
    if seconds >= MILLISECONDS_FROM:
        seconds /= 1000
    if abs(now - seconds) > MAX_SKEW_S:
        return f"x-timestamp is {abs(now - seconds):.0f} s from now (limit {MAX_SKEW_S:.0f} s)"
    expected = hmac.new(secret.encode(), f"{stamp}.{raw_body}".encode(), hashlib.sha256)
    if not _same(signature.lower(), expected.hexdigest()):
        return "x-signature does not match"
    # The signature covers raw_body only: a replayed body must not carry a different payload.
    try:
        same_body = json.loads(raw_body) == payload
    except (ValueError, RecursionError):
        same_body = False
    return None if same_body else "raw_body is not the JSON of payload"


def check_webhook_auth(
    secret: str,
    headers: Mapping[str, str] | None,
    raw_body: str | None,
    payload: Any,
    *,
    now: float | None = None,
) -> None:
    """Raise UNAUTHORIZED unless `secret` is unset or the headers prove the job knows it."""
    if not secret:
        return
    lowered = {name.lower(): value for name, value in (headers or {}).items()}
    if "x-vapi-secret" in lowered and _same(lowered["x-vapi-secret"], secret):
        return
    scheme, _, token = lowered.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and _same(token.strip(), secret):
        return
    if "x-signature" in lowered:
        reason = _signature_error(
            secret, lowered, raw_body, payload, time.time() if now is None else now
        )
        if reason is None:
            return
    elif "x-vapi-secret" in lowered or "authorization" in lowered:
        reason = "the secret does not match"
    else:
        reason = "no credentials"
    raise WorkerError(ErrorCode.UNAUTHORIZED, f"{reason}; {HOW_TO}")
