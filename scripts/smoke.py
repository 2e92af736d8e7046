"""Send the sample jobs of `.runpod/tests.json` to a running worker and check each answer.

Local container (`docker run -p 8000:8000 IMAGE --rp_serve_api --rp_api_host 0.0.0.0`):
    python scripts/smoke.py http://localhost:8000
Deployed endpoint (needs RUNPOD_API_KEY):
    python scripts/smoke.py --endpoint-id ENDPOINT_ID

A worker with VAPI_WEBHOOK_SECRET set refuses unauthenticated vapi_webhook jobs: the VAPI job is
sent with `X-Vapi-Secret` from --vapi-secret, or from VAPI_WEBHOOK_SECRET in the environment.
(A worker with a VAPI_AUTH_PLAN accepts only that plan's credential, so its VAPI job fails.)

Prints one line per job and exits 1 if any job failed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
# The worker's own rule for "is this model installed" (standard library only, fast to import).
sys.path.insert(0, str(REPO))
from ollama_worker.boot import is_installed  # noqa: E402
from ollama_worker.config import DEFAULTS  # noqa: E402

TESTS_JSON = REPO / ".runpod" / "tests.json"
RUNPOD_API = "https://api.runpod.ai/v2"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
# Deployed /runsync answers IN_QUEUE/IN_PROGRESS when a job outlives its wait; then poll.
POLL_INTERVAL_S = 1.0


class SmokeFailure(Exception):
    """One job's answer did not have the expected shape."""


def load_tests(path: Path = TESTS_JSON) -> list[dict[str, Any]]:
    """The Hub's sample jobs, so the smoke run and the Hub run exactly the same jobs."""
    document = json.loads(path.read_text(encoding="utf-8"))
    tests = document.get("tests")
    if not isinstance(tests, list) or not tests:
        raise SystemExit(f"{path}: no tests")
    return tests


def output_items(output: Any) -> list[Any]:
    """A generator handler's output is the list of what it yielded; anything else is one item."""
    return output if isinstance(output, list) else [output]


def _raise_on_error(items: Sequence[Any]) -> None:
    for item in items:
        if isinstance(item, dict) and item.get("error"):
            raise SmokeFailure(f"error item: {item['error']!r}")


def _content(item: Any) -> str:
    message = item.get("message") if isinstance(item, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else ""


def check_chat(items: Sequence[Any], _default_model: str) -> str:
    """A non-stream chat answers one item whose message.content is not empty."""
    if len(items) != 1:
        raise SmokeFailure(f"expected 1 output item, got {len(items)}")
    text = _content(items[0])
    if not text.strip():
        raise SmokeFailure(f"empty message.content in {items[0]!r}")
    return text


def check_stream(items: Sequence[Any], _default_model: str) -> str:
    """A stream's chunks concatenate to a non-empty reply."""
    text = "".join(_content(item) for item in items)
    if not text.strip():
        raise SmokeFailure(f"{len(items)} chunks but no text")
    return f"{len(items)} chunks: {text}"


def check_health(items: Sequence[Any], default_model: str) -> str:
    """Health lists the default model among the installed ones."""
    if len(items) != 1 or not isinstance(items[0], dict):
        raise SmokeFailure(f"expected one health object, got {items!r}")
    health = items[0]
    wanted = str(health.get("default_model") or default_model)
    models = health.get("models")
    names = [m.get("name") or m.get("model") if isinstance(m, dict) else m for m in models or []]
    if not is_installed(wanted, [n for n in names if isinstance(n, str)]):
        raise SmokeFailure(f"default model {wanted!r} not in models {names!r}")
    return f"ollama {health.get('ollama_version')}, models {names}"


def check_vapi(items: Sequence[Any], _default_model: str) -> str:
    """An informational VAPI message (status-update) is answered with an empty body."""
    if len(items) != 1 or not isinstance(items[0], dict) or items[0].get("response") != {}:
        raise SmokeFailure(f'expected [{{"response": {{}}}}], got {items!r}')
    return "response {}"


def checker_for(job_input: dict[str, Any]) -> Callable[[Sequence[Any], str], str]:
    """Pick the answer check from the job's shape."""
    kind = job_input.get("type", "chat")
    if kind == "health":
        return check_health
    if kind == "vapi_webhook":
        return check_vapi
    return check_stream if job_input.get("stream") else check_chat


def run_job(client: httpx.Client, job_input: dict[str, Any], timeout_s: float) -> Any:
    """POST /runsync and, if the job outlives the sync wait, poll /status until it ends."""
    deadline = time.monotonic() + timeout_s
    response = client.post("/runsync", json={"input": job_input}, timeout=timeout_s)
    response.raise_for_status()
    answer = response.json()
    while answer.get("status") not in TERMINAL:
        job_id = answer.get("id")
        if not job_id or time.monotonic() > deadline:
            raise SmokeFailure(f"job did not finish in {timeout_s:g} s: {answer!r}")
        time.sleep(POLL_INTERVAL_S)
        response = client.get(f"/status/{job_id}", timeout=30.0)
        response.raise_for_status()
        answer = response.json()
    if answer["status"] != "COMPLETED":
        raise SmokeFailure(f"status {answer['status']}: {answer.get('error')!r}")
    return answer.get("output")


def with_vapi_secret(job_input: dict[str, Any], secret: str) -> dict[str, Any]:
    """A vapi_webhook job carrying the secret as VAPI's legacy header; other jobs unchanged."""
    if not secret or job_input.get("type") != "vapi_webhook":
        return job_input
    return {**job_input, "headers": {**job_input.get("headers", {}), "X-Vapi-Secret": secret}}


def smoke(
    base_url: str,
    *,
    headers: dict[str, str],
    default_model: str,
    tests: list[dict[str, Any]],
    vapi_secret: str = "",
) -> int:
    """Run every test job; returns the number that failed."""
    failures = 0
    with httpx.Client(base_url=base_url, headers=headers) as client:
        for test in tests:
            name = test.get("name", "?")
            job_input = with_vapi_secret(test["input"], vapi_secret)
            timeout_s = float(test.get("timeout", 60_000)) / 1000
            started = time.monotonic()
            try:
                items = output_items(run_job(client, job_input, timeout_s))
                _raise_on_error(items)
                detail = checker_for(job_input)(items, default_model)
            except (SmokeFailure, httpx.HTTPError, ValueError, KeyError) as exc:
                failures += 1
                print(f"FAIL {name} ({time.monotonic() - started:.1f} s): {exc}", flush=True)
            else:
                summary = " ".join(detail.split())
                summary = summary if len(summary) <= 100 else summary[:97] + "..."
                print(f"ok   {name} ({time.monotonic() - started:.1f} s): {summary}", flush=True)
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the jobs, and exit 1 if any failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("url", nargs="?", help="worker base URL, e.g. http://localhost:8000")
    target.add_argument("--endpoint-id", help="a deployed RunPod endpoint (uses RUNPOD_API_KEY)")
    parser.add_argument(
        "--model",
        default=os.environ.get("DEFAULT_MODEL", DEFAULTS.default_model),
        help="the default model health must list (if health does not name one)",
    )
    parser.add_argument("--tests", type=Path, default=TESTS_JSON, help="tests.json to run")
    parser.add_argument(
        "--vapi-secret",
        default=os.environ.get("VAPI_WEBHOOK_SECRET", ""),
        help="sent as X-Vapi-Secret with the vapi_webhook job; default: $VAPI_WEBHOOK_SECRET "
        "(needed when the worker has VAPI_WEBHOOK_SECRET set)",
    )
    args = parser.parse_args(argv)

    headers: dict[str, str] = {}
    if args.endpoint_id:
        api_key = os.environ.get("RUNPOD_API_KEY", "")
        if not api_key:
            print("smoke: RUNPOD_API_KEY is not set", file=sys.stderr)
            return 2
        base_url = f"{RUNPOD_API}/{args.endpoint_id}"
        headers["Authorization"] = f"Bearer {api_key}"
    else:
        base_url = args.url.rstrip("/")

    tests = load_tests(args.tests)
    failures = smoke(
        base_url,
        headers=headers,
        default_model=args.model,
        tests=tests,
        vapi_secret=args.vapi_secret,
    )
    print(f"{len(tests) - failures}/{len(tests)} jobs passed against {base_url}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
