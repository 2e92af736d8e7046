"""VAPI_AUTH_PLAN: each credential plan VAPI defines, signed the way VAPI's docs say it signs."""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ollama_worker.config import ConfigError, Settings, get_settings
from ollama_worker.errors import WorkerError
from ollama_worker.vapi_auth import check_webhook_auth, parse_auth_plan
from rp_handler import handler
from tests.harness import ROOT
from tests.vapi_fixtures import SECRET, load, vapi_sign, webhook

NOW = 1_750_000_000.0
URL = "https://relay.example.com/vapi?assistant=a1"
B64_SECRET = base64.b64encode(b"\x00\x17binary-key\xff\xfe").decode()
PAYLOAD = {"message": {"type": "hang", "call": {"id": "call-1"}}}
BODY = json.dumps(PAYLOAD)

# (plan as VAPI_AUTH_PLAN holds it, the secret, how the timestamp is written)
SIGNED_PLANS: dict[str, tuple[dict[str, Any], str, str]] = {
    "defaults": ({"type": "hmac", "algorithm": "sha256"}, SECRET, str(int(NOW))),
    "milliseconds": ({"type": "hmac", "algorithm": "sha256"}, SECRET, str(int(NOW * 1000))),
    "sha512 base64": (
        {"type": "hmac", "algorithm": "sha512", "signatureEncoding": "base64"},
        SECRET,
        str(int(NOW)),
    ),
    "sha1 prefix custom headers": (
        {
            "type": "hmac",
            "algorithm": "sha1",
            "signatureHeader": "X-Hub-Signature",
            "timestampHeader": "X-Hub-Timestamp",
            "signaturePrefix": "sha1=",
        },
        SECRET,
        str(int(NOW)),
    ),
    "base64 secret": (
        {"type": "hmac", "algorithm": "sha256", "secretIsBase64": True},
        B64_SECRET,
        str(int(NOW)),
    ),
    "method and url": (
        {
            "type": "hmac",
            "algorithm": "sha256",
            "payloadFormat": "{method} {url}\n{timestamp}.{body}",
        },
        SECRET,
        str(int(NOW)),
    ),
    "svix style": (
        {
            "type": "hmac",
            "algorithm": "sha256",
            "signatureHeader": "svix-signature",
            "timestampHeader": "svix-timestamp",
            "messageIdHeader": "svix-id",
            "payloadFormat": "{svix-id}.{timestamp}.{body}",
            "signaturePrefix": "v1,",
            "signatureEncoding": "base64",
            "secretIsBase64": True,
        },
        B64_SECRET,
        str(int(NOW)),
    ),
    "no timestamp": (
        {"type": "hmac", "algorithm": "sha256", "includeTimestamp": False},
        SECRET,
        "",
    ),
}


def check(
    plan: dict[str, Any] | None,
    headers: dict[str, str],
    *,
    secret: str = SECRET,
    body: str = BODY,
    method: str | None = "POST",
    url: str | None = URL,
    now: float = NOW,
) -> str | None:
    """None when the job is proven, else the UNAUTHORIZED message."""
    parsed = parse_auth_plan(json.dumps(plan)) if plan is not None else None
    try:
        check_webhook_auth(
            secret,
            headers,
            body,
            json.loads(body),
            plan=parsed,
            method=method,
            url=url,
            now=now,
        )
    except WorkerError as exc:
        return str(exc)
    return None


def sign(name: str, **changes: Any) -> tuple[dict[str, Any], str, dict[str, str]]:
    """A plan, its secret, and the headers VAPI would send with the body, per SIGNED_PLANS."""
    plan, secret, stamp = SIGNED_PLANS[name]
    options = {"timestamp": stamp, "method": "POST", "url": URL, "message_id": "msg_2Lq"}
    signing_plan = {**plan, **changes.pop("signing_plan", {})}
    headers = vapi_sign(signing_plan, changes.pop("secret", secret), BODY, **{**options, **changes})
    return plan, secret, headers


@pytest.mark.parametrize("name", list(SIGNED_PLANS))
def test_each_plan_accepts_what_vapi_signs(name: str) -> None:
    plan, secret, headers = sign(name)
    assert check(plan, headers, secret=secret) is None
    # Header names are case-insensitive, as HTTP says.
    assert check(plan, {k.upper(): v for k, v in headers.items()}, secret=secret) is None


@pytest.mark.parametrize(
    ("name", "changes", "reason"),
    [
        ("defaults", {"secret": "another-secret"}, "x-signature does not match"),
        ("sha512 base64", {"signing_plan": {"algorithm": "sha256"}}, "x-signature does not match"),
        ("sha512 base64", {"signing_plan": {"signatureEncoding": "hex"}}, "does not match"),
        (
            "sha1 prefix custom headers",
            {"signing_plan": {"signaturePrefix": ""}},
            "lacks its prefix",
        ),
        ("base64 secret", {"signing_plan": {"secretIsBase64": False}}, "does not match"),
        ("method and url", {"url": "https://relay.example.com/other"}, "does not match"),
        ("method and url", {"method": "PUT"}, "does not match"),
        ("defaults", {"timestamp": str(int(NOW) - 301)}, "x-timestamp is 301 s from now"),
        ("milliseconds", {"timestamp": str(int(NOW + 400) * 1000)}, "x-timestamp is 400 s from"),
        ("defaults", {"timestamp": "soon"}, "x-timestamp is not a number"),
    ],
)
def test_what_vapi_did_not_sign_is_refused(name: str, changes: dict[str, Any], reason: str) -> None:
    plan, secret, headers = sign(name, **changes)
    error = check(plan, headers, secret=secret)
    assert error is not None
    assert error.startswith("UNAUTHORIZED: "), error
    assert reason in error.split(";")[0], error


def test_a_signature_under_another_header_name_is_refused() -> None:
    plan, secret, headers = sign("sha1 prefix custom headers")
    renamed = {"x-signature": headers["X-Hub-Signature"], "x-timestamp": headers["X-Hub-Timestamp"]}
    assert check(plan, renamed, secret=secret) == (
        "UNAUTHORIZED: no X-Hub-Signature header; send X-Hub-Signature (sha1, hex) and "
        "X-Hub-Timestamp over raw_body, as VAPI_AUTH_PLAN describes"
    )
    # The timestamp under a name the plan does not use counts as absent.
    mixed = {"X-Hub-Signature": headers["X-Hub-Signature"], "x-timestamp": "1"}
    assert check(plan, mixed, secret=secret).startswith(  # type: ignore[union-attr]
        "UNAUTHORIZED: X-Hub-Signature needs X-Hub-Timestamp"
    )


def test_a_plan_needs_what_its_payload_format_names() -> None:
    plan, secret, headers = sign("method and url")
    assert "needs the job's method and the job's url" in str(
        check(plan, headers, secret=secret, method=None, url=None)
    )
    plan, secret, headers = sign("svix style")
    other_id = {**headers, "svix-id": "msg_other"}
    assert "svix-signature does not match" in str(check(plan, other_id, secret=secret))
    del headers["svix-id"]
    assert "svix-signature needs svix-id" in str(check(plan, headers, secret=secret))


def test_a_signed_body_must_be_the_payload() -> None:
    plan, secret, headers = sign("defaults")
    parsed = parse_auth_plan(json.dumps(plan))
    other = {"message": {"type": "tool-calls", "toolCallList": []}}
    with pytest.raises(WorkerError, match="raw_body is not the JSON of payload"):
        check_webhook_auth(secret, headers, BODY, other, plan=parsed, now=NOW)


def test_with_a_plan_no_other_credential_is_accepted() -> None:
    hmac_plan = SIGNED_PLANS["defaults"][0]
    for headers in ({"X-Vapi-Secret": SECRET}, {"Authorization": f"Bearer {SECRET}"}):
        assert "no x-signature header" in str(check(hmac_plan, headers))
    bearer = {"type": "bearer"}
    assert "no Authorization header" in str(check(bearer, {"X-Vapi-Secret": SECRET}))
    _plan, _secret, signed = sign("defaults")
    assert "no Authorization header" in str(check(bearer, signed))


@pytest.mark.parametrize(
    ("plan", "accepted", "refused"),
    [
        (
            {"type": "bearer"},
            [{"Authorization": f"Bearer {SECRET}"}, {"authorization": f"bearer  {SECRET} "}],
            [{"Authorization": SECRET}, {"Authorization": "Bearer guess"}],
        ),
        (
            {"type": "bearer", "headerName": "X-Vapi-Secret", "bearerPrefixEnabled": False},
            [{"X-Vapi-Secret": SECRET}, {"x-vapi-secret": SECRET}],
            [{"X-Vapi-Secret": f"Bearer {SECRET}"}, {"Authorization": f"Bearer {SECRET}"}],
        ),
        (
            {"type": "bearer", "headerName": "X-Api-Key"},
            [{"x-api-key": f"Bearer {SECRET}"}],
            [{"X-Api-Key": SECRET}, {"X-Other-Key": f"Bearer {SECRET}"}],
        ),
    ],
)
def test_bearer_plans(
    plan: dict[str, Any], accepted: list[dict[str, str]], refused: list[dict[str, str]]
) -> None:
    for headers in accepted:
        assert check(plan, headers) is None, headers
    for headers in refused:
        assert check(plan, headers) is not None, headers


@pytest.mark.parametrize(
    ("plan", "named"),
    [
        ("not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ({"type": "oauth2", "url": "https://x", "clientId": "a", "clientSecret": "b"}, "`type`"),
        ({"algorithm": "sha256"}, "`type` must be hmac or bearer"),
        ({"type": "hmac"}, "`algorithm` is required"),
        ({"type": "hmac", "algorithm": "md5"}, "`algorithm` is required, one of sha256"),
        ({"type": "hmac", "algorithm": "sha256", "secretKey": SECRET}, "`secretKey`: keep"),
        ({"type": "bearer", "token": SECRET}, "`token`: keep the secret out"),
        (
            {"type": "hmac", "algorithm": "sha256", "signatureEncoding": "b64"},
            "`signatureEncoding`",
        ),
        ({"type": "hmac", "algorithm": "sha256", "includeTimestamp": "no"}, "`includeTimestamp`"),
        ({"type": "hmac", "algorithm": "sha256", "signatureHeader": "x sig"}, "`signatureHeader`"),
        ({"type": "hmac", "algorithm": "sha256", "payloadFormat": "{timestamp}"}, "{body}"),
        ({"type": "hmac", "algorithm": "sha256", "payloadFormat": "{ts}.{body}"}, "{ts}"),
        (
            {"type": "hmac", "algorithm": "sha256", "payloadFormat": "{svix-id}.{body}"},
            "`messageId",
        ),
        (
            {"type": "hmac", "algorithm": "sha256", "includeTimestamp": False},
            None,  # valid: the payload is then the body alone
        ),
        (
            {
                "type": "hmac",
                "algorithm": "sha256",
                "includeTimestamp": False,
                "payloadFormat": "{timestamp}{body}",
            },
            "`includeTimestamp` is false",
        ),
        (
            {"type": "bearer", "headerName": "Authorization", "prefix": True},
            "`prefix` is not a field",
        ),
        ({"type": "bearer", "bearerPrefixEnabled": "false"}, "`bearerPrefixEnabled` must be"),
    ],
)
def test_a_bad_plan_is_a_config_error_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, plan: Any, named: str | None
) -> None:
    monkeypatch.setenv("VAPI_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("VAPI_AUTH_PLAN", plan if isinstance(plan, str) else json.dumps(plan))
    if named is None:
        assert Settings.from_env().vapi_auth_plan is not None
        return
    with pytest.raises(ConfigError) as caught:
        Settings.from_env()
    message = str(caught.value)
    assert message.startswith("VAPI_AUTH_PLAN: "), message
    assert named in message, message
    assert SECRET not in message


def test_a_plan_needs_a_secret_and_a_base64_one_when_it_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VAPI_AUTH_PLAN", json.dumps(SIGNED_PLANS["base64 secret"][0]))
    monkeypatch.delenv("VAPI_WEBHOOK_SECRET", raising=False)
    with pytest.raises(ConfigError, match="VAPI_WEBHOOK_SECRET is empty"):
        Settings.from_env()
    monkeypatch.setenv("VAPI_WEBHOOK_SECRET", "not base64!")
    with pytest.raises(ConfigError, match="VAPI_WEBHOOK_SECRET is not base64") as caught:
        Settings.from_env()
    assert "not base64!" not in str(caught.value)
    monkeypatch.setenv("VAPI_WEBHOOK_SECRET", B64_SECRET)
    assert Settings.from_env().vapi_auth_plan == parse_auth_plan(
        json.dumps(SIGNED_PLANS["base64 secret"][0])
    )


def test_a_bad_plan_stops_the_worker_at_start() -> None:
    env = {
        "PATH": "",
        "VAPI_WEBHOOK_SECRET": SECRET,
        "VAPI_AUTH_PLAN": json.dumps(
            {"type": "hmac", "algorithm": "sha256", "signatureHeadr": "x"}
        ),
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "rp_handler.py", "--rp_serve_api"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "VAPI_AUTH_PLAN: `signatureHeadr` is not a field of VAPI's hmac plan" in done.stderr
    assert SECRET not in done.stderr + done.stdout
    assert time.monotonic() - started < 30


# --- through the handler, the plan read from the environment --------------------------------


@pytest.fixture
def planned(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A worker environment with the "method and url" HMAC plan."""
    monkeypatch.setenv("VAPI_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("VAPI_AUTH_PLAN", json.dumps(SIGNED_PLANS["method and url"][0]))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


async def run(job_input: dict[str, Any]) -> list[Any]:
    """Every item the handler yields for one job."""
    return [item async for item in handler({"id": "t", "input": job_input})]


async def test_the_handler_checks_the_plan_with_the_jobs_method_and_url(
    planned: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    payload = load("hang")
    body = json.dumps(payload)
    headers = vapi_sign(
        SIGNED_PLANS["method and url"][0], SECRET, body, timestamp=str(int(time.time())), url=URL
    )
    job = webhook(payload, headers=headers, raw_body=body, method="POST", url=URL)
    assert await run(job) == [{"response": {}, "message_type": "hang", "call_id": "call-7f3c"}]
    [refused] = await run({**job, "url": URL + "&x=1"})
    assert refused["error"].startswith("UNAUTHORIZED: x-signature does not match")
    [refused] = await run(webhook(payload, headers={"X-Vapi-Secret": SECRET}))
    assert refused["error"].startswith("UNAUTHORIZED: no x-signature header")
    assert SECRET not in caplog.text
    assert SECRET not in json.dumps(refused)
