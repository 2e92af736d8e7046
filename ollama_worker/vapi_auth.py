"""Proof that a `vapi_webhook` job comes from VAPI: a shared secret or an HMAC signature.

Without `VAPI_AUTH_PLAN` a job may prove itself any of the ways VAPI sends a secret:
`X-Vapi-Secret: <secret>` (the legacy inline secret), `Authorization: Bearer <secret>` (a
Bearer Token credential), or an HMAC credential at its defaults (`x-signature`: hex
HMAC-SHA256 of `"{x-timestamp}.{raw body}"`). With a plan, only the credential it describes is
accepted, read with VAPI's own field names (`vapi/types/webhook_credential_authentication_plan.py`).

Every comparison is constant-time, and no message here ever contains the secret or a header
value. Standard library only: settings parse the plan at start-up.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ollama_worker.errors import ErrorCode, WorkerError

MAX_SKEW_S = 300.0
# VAPI's docs do not state the timestamp's unit: values this large are read as milliseconds.
MILLISECONDS_FROM = 1e11
ALGORITHMS = ("sha256", "sha512", "sha1")
ENCODINGS = ("hex", "base64")
PLACEHOLDER = re.compile(r"\{(timestamp|body|method|url|svix-id)\}")
ANY_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
# RFC 9110 token characters: what a header name may be made of.
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
HOW_TO = (
    "send X-Vapi-Secret, Authorization: Bearer, or x-signature and x-timestamp with raw_body, "
    "made with VAPI_WEBHOOK_SECRET"
)


@dataclass(frozen=True)
class HmacPlan:
    """VAPI's `{"type": "hmac"}` authentication plan, its defaults filled in."""

    algorithm: str
    signature_header: str = "x-signature"
    timestamp_header: str = "x-timestamp"
    signature_prefix: str = ""
    include_timestamp: bool = True
    payload_format: str = "{timestamp}.{body}"
    message_id_header: str = ""
    signature_encoding: str = "hex"
    secret_is_base64: bool = False
    type: Literal["hmac"] = "hmac"

    @property
    def signs_timestamp(self) -> bool:
        """Whether the signed payload holds the timestamp, which then must be fresh."""
        return "{timestamp}" in self.payload_format

    def how_to(self) -> str:
        """What a job must send, for the UNAUTHORIZED message."""
        needs = [f"{self.signature_header} ({self.algorithm}, {self.signature_encoding})"]
        if self.signs_timestamp:
            needs.append(self.timestamp_header)
        if "{svix-id}" in self.payload_format:
            needs.append(self.message_id_header)
        return f"send {' and '.join(needs)} over raw_body, as VAPI_AUTH_PLAN describes"


@dataclass(frozen=True)
class BearerPlan:
    """VAPI's `{"type": "bearer"}` authentication plan, its defaults filled in."""

    header_name: str = "Authorization"
    bearer_prefix_enabled: bool = True
    type: Literal["bearer"] = "bearer"

    def how_to(self) -> str:
        """What a job must send, for the UNAUTHORIZED message."""
        value = "Bearer <secret>" if self.bearer_prefix_enabled else "<secret>"
        return f"send {self.header_name}: {value} with VAPI_WEBHOOK_SECRET, as VAPI_AUTH_PLAN says"


AuthPlan = HmacPlan | BearerPlan

# VAPI's field name -> (our attribute, its JSON type). `secretKey` and `token` are left out
# on purpose: the secret lives in VAPI_WEBHOOK_SECRET, never in a JSON setting.
HMAC_FIELDS: dict[str, tuple[str, type]] = {
    "algorithm": ("algorithm", str),
    "signatureHeader": ("signature_header", str),
    "timestampHeader": ("timestamp_header", str),
    "signaturePrefix": ("signature_prefix", str),
    "includeTimestamp": ("include_timestamp", bool),
    "payloadFormat": ("payload_format", str),
    "messageIdHeader": ("message_id_header", str),
    "signatureEncoding": ("signature_encoding", str),
    "secretIsBase64": ("secret_is_base64", bool),
}
BEARER_FIELDS: dict[str, tuple[str, type]] = {
    "headerName": ("header_name", str),
    "bearerPrefixEnabled": ("bearer_prefix_enabled", bool),
}
SECRET_FIELDS = ("secretKey", "token")


def _fields(raw: dict[str, Any], known: dict[str, tuple[str, type]], kind: str) -> dict[str, Any]:
    """Our attributes from VAPI's fields, each checked for its type; ValueError names the field."""
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "type":
            continue
        if name in SECRET_FIELDS:
            raise ValueError(
                f"`{name}`: keep the secret out of VAPI_AUTH_PLAN and set VAPI_WEBHOOK_SECRET"
            )
        if name not in known:
            raise ValueError(
                f"`{name}` is not a field of VAPI's {kind} plan (known: {', '.join(known)})"
            )
        attribute, kind_of = known[name]
        # JSON true is not a string and "true" is not a boolean: no silent coercion.
        if not isinstance(value, kind_of):
            wanted = "boolean" if kind_of is bool else "string"
            raise ValueError(f"`{name}` must be a JSON {wanted}")
        if isinstance(value, str) and name.endswith("Header") and not HEADER_NAME.fullmatch(value):
            raise ValueError(f"`{name}` {value!r} is not a header name")
        values[attribute] = value
    return values


def _hmac_plan(raw: dict[str, Any]) -> HmacPlan:
    """An HmacPlan from VAPI's fields, refusing what VAPI would not sign with."""
    values = _fields(raw, HMAC_FIELDS, "hmac")
    if values.get("algorithm") not in ALGORITHMS:
        raise ValueError(f"`algorithm` is required, one of {', '.join(ALGORITHMS)}")
    if values.get("signature_encoding", "hex") not in ENCODINGS:
        raise ValueError(f"`signatureEncoding` must be one of {', '.join(ENCODINGS)}")
    include_timestamp = values.get("include_timestamp", True)
    if "payload_format" not in values:
        values["payload_format"] = "{timestamp}.{body}" if include_timestamp else "{body}"
    payload_format = values["payload_format"]
    for name in ANY_PLACEHOLDER.findall(payload_format):
        if not PLACEHOLDER.fullmatch(f"{{{name}}}"):
            raise ValueError(
                f"`payloadFormat` has an unknown placeholder {{{name}}} "
                "(known: {timestamp}, {body}, {method}, {url}, {svix-id})"
            )
    if "{body}" not in payload_format:
        # A signature that does not cover the body proves nothing about the message.
        raise ValueError("`payloadFormat` must contain {body}")
    if not include_timestamp and "{timestamp}" in payload_format:
        raise ValueError("`includeTimestamp` is false but `payloadFormat` contains {timestamp}")
    if "{svix-id}" in payload_format and not values.get("message_id_header"):
        raise ValueError("`payloadFormat` uses {svix-id}: set `messageIdHeader` to its header")
    return HmacPlan(**values)


def parse_auth_plan(text: str) -> AuthPlan:
    """VAPI_AUTH_PLAN's JSON as a plan; raise ValueError naming the field that is wrong."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"must be a JSON object, not {type(raw).__name__}")
    kind = raw.get("type")
    if kind == "hmac":
        return _hmac_plan(raw)
    if kind == "bearer":
        return BearerPlan(**_fields(raw, BEARER_FIELDS, "bearer"))
    if kind == "oauth2":
        raise ValueError(
            "`type` oauth2 cannot be checked here (VAPI sends a token your OAuth server issued); "
            "use hmac or bearer"
        )
    raise ValueError(f"`type` must be hmac or bearer, not {kind!r}")


def secret_key(secret: str, plan: AuthPlan | None) -> bytes:
    """The HMAC key: the secret's bytes, base64-decoded when the plan says so (ValueError)."""
    if isinstance(plan, HmacPlan) and plan.secret_is_base64:
        try:
            return base64.b64decode(secret.strip(), validate=True)
        except (binascii.Error, ValueError):
            # Never the value: the message may reach a log.
            raise ValueError(
                "VAPI_WEBHOOK_SECRET is not base64, but VAPI_AUTH_PLAN has `secretIsBase64`"
            ) from None
    return secret.encode()


def _same(given: str, expected: str) -> bool:
    """Constant-time equality, so timing does not leak how much of a guess was right."""
    return hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True)
class Request:
    """What a job carries of VAPI's HTTP request: headers (lower-cased names) and the rest."""

    headers: Mapping[str, str]
    raw_body: str | None
    payload: Any
    method: str | None
    url: str | None


def _stale(plan: HmacPlan, stamp: str, now: float) -> str | None:
    """Why a signed timestamp is unusable (not a number, too old or too new), or None."""
    try:
        seconds = float(stamp)
    except ValueError:
        return f"{plan.timestamp_header} is not a number"
    if seconds >= MILLISECONDS_FROM:
        seconds /= 1000
    if abs(now - seconds) > MAX_SKEW_S:
        return (
            f"{plan.timestamp_header} is {abs(now - seconds):.0f} s from now "
            f"(limit {MAX_SKEW_S:.0f} s)"
        )
    return None


def _signed_text(plan: HmacPlan, request: Request) -> tuple[str | None, str | None]:
    """The text VAPI signed, from payloadFormat, or None and why it cannot be rebuilt."""
    values = {
        "body": request.raw_body,
        "timestamp": request.headers.get(plan.timestamp_header.lower(), "").strip() or None,
        "method": request.method,
        "url": request.url,
        "svix-id": request.headers.get(plan.message_id_header.lower(), "").strip() or None,
    }
    missing = {
        "body": "the job's raw_body",
        "timestamp": plan.timestamp_header,
        "method": "the job's method",
        "url": "the job's url",
        "svix-id": plan.message_id_header,
    }
    needed = PLACEHOLDER.findall(plan.payload_format)
    absent = [missing[name] for name in dict.fromkeys(needed) if values[name] is None]
    if absent:
        return None, f"{plan.signature_header} needs {' and '.join(absent)}"
    # One pass, so a body that itself contains "{timestamp}" is not substituted again.
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), plan.payload_format), None


def _signature_error(
    plan: HmacPlan, key: bytes, request: Request, now: float, *, lenient_prefix: bool
) -> str | None:
    """Why the HMAC headers do not prove the job, or None when they do."""
    given = request.headers[plan.signature_header.lower()].strip()
    text, problem = _signed_text(plan, request)
    if text is None:
        return problem
    if plan.signs_timestamp:
        stamp = request.headers[plan.timestamp_header.lower()].strip()
        if (problem := _stale(plan, stamp, now)) is not None:
            return problem
    if plan.signature_prefix:
        if not given.startswith(plan.signature_prefix):
            return f"{plan.signature_header} lacks its prefix"
        given = given.removeprefix(plan.signature_prefix)
    elif lenient_prefix:  # without a plan, as before: GitHub-style "sha256=" is tolerated
        given = given.removeprefix(f"{plan.algorithm}=")
    digest = hmac.new(key, text.encode(), plan.algorithm).digest()
    if plan.signature_encoding == "hex":
        matches = _same(given.lower(), digest.hex())
    else:
        matches = _same(given, base64.b64encode(digest).decode())
    if not matches:
        return f"{plan.signature_header} does not match"
    # The signature covers raw_body only: a replayed body must not carry a different payload.
    try:
        same_body = json.loads(request.raw_body or "") == request.payload
    except (ValueError, RecursionError):
        same_body = False
    return None if same_body else "raw_body is not the JSON of payload"


def _bearer_error(plan: BearerPlan, secret: str, headers: Mapping[str, str]) -> str | None:
    """Why the bearer header does not prove the job, or None when it does."""
    value = headers.get(plan.header_name.lower())
    if value is None:
        return f"no {plan.header_name} header"
    if plan.bearer_prefix_enabled:
        scheme, _, token = value.strip().partition(" ")
        proven = scheme.lower() == "bearer" and _same(token.strip(), secret)
    else:
        proven = _same(value.strip(), secret)
    return None if proven else "the secret does not match"


def _planned_error(plan: AuthPlan, secret: str, request: Request, now: float) -> str | None:
    """Why the job does not prove itself the one way the plan allows, or None."""
    if isinstance(plan, BearerPlan):
        return _bearer_error(plan, secret, request.headers)
    if plan.signature_header.lower() not in request.headers:
        return f"no {plan.signature_header} header"
    return _signature_error(plan, secret_key(secret, plan), request, now, lenient_prefix=False)


def _default_error(secret: str, request: Request, now: float) -> str | None:
    """Why the job proves itself none of VAPI's default ways, or None when one works."""
    headers = request.headers
    if "x-vapi-secret" in headers and _same(headers["x-vapi-secret"], secret):
        return None
    if _bearer_error(BearerPlan(), secret, headers) is None:
        return None
    if "x-signature" in headers:
        plan = HmacPlan(algorithm="sha256")
        return _signature_error(plan, secret.encode(), request, now, lenient_prefix=True)
    if "x-vapi-secret" in headers or "authorization" in headers:
        return "the secret does not match"
    return "no credentials"


def check_webhook_auth(
    secret: str,
    headers: Mapping[str, str] | None,
    raw_body: str | None,
    payload: Any,
    *,
    plan: AuthPlan | None = None,
    method: str | None = None,
    url: str | None = None,
    now: float | None = None,
) -> None:
    """Raise UNAUTHORIZED unless `secret` is unset or the headers prove the job knows it."""
    if not secret:
        return
    request = Request(
        headers={name.lower(): value for name, value in (headers or {}).items()},
        raw_body=raw_body,
        payload=payload,
        method=method,
        url=url,
    )
    now = time.time() if now is None else now
    if plan is None:
        reason, how_to = _default_error(secret, request, now), HOW_TO
    else:
        reason, how_to = _planned_error(plan, secret, request, now), plan.how_to()
    if reason is not None:
        raise WorkerError(ErrorCode.UNAUTHORIZED, f"{reason}; {how_to}")
