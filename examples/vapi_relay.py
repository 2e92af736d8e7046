"""A relay between VAPI's Server URL and a RunPod endpoint running this worker.

VAPI wants the bare answer body back; RunPod wants its API key and wraps the output. This
turns each VAPI POST into a `vapi_webhook` job on `/runsync` (every header, the raw body, the
method and the URL, so the worker can check any VAPI credential) and returns `response`
verbatim. Behind a TLS-terminating proxy, run uvicorn with `--proxy-headers` so the URL is
the one VAPI called (an HMAC plan may sign it).

    RUNPOD_ENDPOINT_ID=... RUNPOD_API_KEY=... uvicorn examples.vapi_relay:app --port 8080
"""

from __future__ import annotations

import json
import os

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

app = FastAPI()


def runsync_url() -> str:
    """The endpoint's `/runsync`; RUNPOD_RUNSYNC_URL overrides it (a local worker, a test)."""
    endpoint_id = os.environ.get("RUNPOD_ENDPOINT_ID", "")
    return os.environ.get("RUNPOD_RUNSYNC_URL") or f"https://api.runpod.ai/v2/{endpoint_id}/runsync"


@app.post("/vapi")
async def vapi(request: Request) -> JSONResponse:
    """Answer one VAPI server message through the worker."""
    try:
        raw = (await request.body()).decode()
        payload = json.loads(raw)
    except ValueError:  # not UTF-8, or not JSON
        return JSONResponse({"error": "the request body is not JSON"}, status_code=400)
    if not isinstance(payload, dict):
        return JSONResponse({"error": "the request body is not a JSON object"}, status_code=400)
    job = {
        "type": "vapi_webhook",
        "payload": payload,
        "raw_body": raw,
        # All of them: which ones prove the request depends on the worker's VAPI_AUTH_PLAN.
        "headers": dict(request.headers.items()),
        "method": request.method,
        "url": str(request.url),
    }
    api_key = os.environ.get("RUNPOD_API_KEY")
    auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}  # a local worker needs none
    # VAPI gives up on assistant-request after 7.5 s; tool calls may take longer.
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            sent = await client.post(runsync_url(), json={"input": job}, headers=auth)
        reply = sent.json()
    except httpx.HTTPError as exc:  # unreachable, timed out, cut off
        return _bad_gateway(f"RunPod could not be reached ({type(exc).__name__})")
    except ValueError:
        return _bad_gateway(f"RunPod answered HTTP {sent.status_code} with a body that is not JSON")
    if not isinstance(reply, dict):
        return _bad_gateway(f"RunPod answered HTTP {sent.status_code} with no job")
    output = reply.get("output")
    if not isinstance(output, list) or not output or not isinstance(output[-1], dict):
        output = [{"error": f"job {reply.get('status')} with no output"}]
    # A deployed endpoint fails the job; the local API keeps the error item in `output`.
    error = reply.get("error") or output[-1].get("error")
    if error:
        status = 401 if str(error).startswith("UNAUTHORIZED") else 502
        return JSONResponse({"error": str(error)}, status_code=status)
    if "response" not in output[0]:
        return _bad_gateway("the job's output has no `response`")
    return JSONResponse(output[0]["response"])


def _bad_gateway(why: str) -> JSONResponse:
    """VAPI's error answer for a RunPod that failed us: `{"error"}` with 502."""
    return JSONResponse({"error": why}, status_code=502)
