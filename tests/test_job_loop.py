"""The event-driven job loop runs only on the SDK it was read against, and says when it can't."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import runpod
from runpod.serverless.modules import rp_fitness, rp_job, rp_scale

from ollama_worker import job_loop, ollama_client
from tests.test_core_units import client_with

ROOT = Path(__file__).resolve().parent.parent


def test_the_installed_sdk_is_the_one_the_loop_was_read_against() -> None:
    # Fails loudly on an SDK upgrade: read rp_scale.py, rp_job.py, rp_http.py and
    # worker.run_worker again, then update SDK_VERSION and SDK_FINGERPRINT.
    assert runpod.__version__ == job_loop.SDK_VERSION
    assert job_loop.sdk_fingerprint() == job_loop.SDK_FINGERPRINT
    assert job_loop.sdk_supported() is None


def test_the_sdk_is_pinned_to_that_exact_version() -> None:
    requirements = (ROOT / "requirements.txt").read_text().split()
    assert f"runpod=={job_loop.SDK_VERSION}" in requirements


def test_another_sdk_keeps_the_stock_loop_and_still_waits_for_ollama(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(job_loop, "SDK_FINGERPRINT", "0" * 64)
    monkeypatch.setattr(rp_fitness, "_fitness_checks", [])
    stock = rp_scale.JobScaler
    ready: concurrent.futures.Future[None] = concurrent.futures.Future()
    assert job_loop.install(ready=ready, stop_grace_s=5) is False
    assert rp_scale.JobScaler is stock
    assert "running the SDK's stock loop" in caplog.text
    # Jobs must still wait for Ollama: a fitness check (run before the loop) waits for it.
    [check] = rp_fitness._fitness_checks
    ready.set_exception(RuntimeError("Ollama did not answer"))
    with pytest.raises(RuntimeError, match="did not answer"):
        check()


def test_install_replaces_the_sdk_job_scaler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rp_scale, "JobScaler", rp_scale.JobScaler)
    monkeypatch.setattr(rp_job, "send_result", rp_job.send_result)
    assert job_loop.install(ready=None, stop_grace_s=3) is True
    assert rp_scale.JobScaler.__name__ == "EventDrivenJobScaler"
    assert rp_scale.JobScaler.stop_grace_s == 3


async def test_jobs_are_taken_after_ollama_is_ready_and_the_warm_up_ran() -> None:
    steps: list[str] = []
    ready: concurrent.futures.Future[None] = concurrent.futures.Future()

    async def warm_up() -> None:
        steps.append("warm-up")

    scaler_class = job_loop._scaler_class()
    scaler_class.ready, scaler_class.warm_up = ready, staticmethod(warm_up)
    scaler = scaler_class({"handler": None})
    waiting = asyncio.ensure_future(scaler._wait_until_ready())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    assert steps == []  # nothing happens before Ollama answers
    ready.set_result(None)
    await asyncio.wait_for(waiting, 1)
    assert steps == ["warm-up"]


async def test_the_warm_up_call_never_fails_a_start(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        raise httpx.ConnectError("refused", request=request)

    client = client_with(refuse, deadline_s=0.2)
    monkeypatch.setattr(ollama_client, "get_client", lambda: client)
    await ollama_client.warm_up(timeout_s=1.0)
    assert calls
    assert set(calls) == {"/api/version"}


# --- every job taken ends with exactly one job-done --------------------------------------------


def test_parse_jobs_reads_a_batch_job_by_job_when_one_nests_past_the_limit() -> None:
    deep = "[" * 50_000 + "]" * 50_000
    tricky = {"id": "c", "input": {"prompt": 'brackets ]}[{ and "quotes", in a string'}}
    text = (
        f"[{json.dumps({'id': 'a', 'input': {'prompt': 'x'}})}, "
        f'{{"input": {{"nested": {deep}}}, "id": "b"}}, {json.dumps(tricky)}, 5, {{"input": 1}}]'
    )
    jobs = job_loop.parse_jobs(text)
    assert jobs == [
        {"id": "a", "input": {"prompt": "x"}},
        {"id": "b", "input": None, job_loop.UNREADABLE: "nests too deep to read"},
        tricky,
    ]  # the entries without an id cannot be answered, and are only logged
    assert job_loop.parse_jobs(f'{{"id": "z", "input": {deep}}}')[0]["id"] == "z"
    assert job_loop.parse_jobs(json.dumps({"id": "q", "input": 1})) == [{"id": "q", "input": 1}]
    assert job_loop.parse_jobs("") == []
    assert job_loop.parse_jobs("<html>") == []


async def scaled_job(
    monkeypatch: pytest.MonkeyPatch, handler: Any
) -> list[tuple[str, dict[str, Any]]]:
    """Run one job through the scaler's handle_job with `handler` as the SDK's job handler;
    the job-dones it sent, as (job id, body)."""
    sent: list[tuple[str, dict[str, Any]]] = []

    async def post(
        _session: Any, body: dict[str, Any], job: dict[str, Any], is_stream: bool = False
    ) -> None:
        sent.append((job["id"], body))

    scaler_class = job_loop._scaler_class()
    monkeypatch.setattr(rp_job, "send_result", scaler_class.tracking(post))
    scaler = scaler_class({"handler": None})
    scaler.jobs_handler = handler
    job = {"id": "j1", "input": {}}
    scaler.job_progress.add(job)
    await scaler.handle_job(None, job)
    return sent


async def test_a_job_whose_report_failed_gets_one_internal_job_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def cannot_send(_session: Any, _config: Any, _job: dict[str, Any]) -> None:
        # What runpod 1.12.0's _handle_result lets escape: its POST could not encode the body.
        raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")

    sent = await scaled_job(monkeypatch, cannot_send)
    assert sent == [("j1", job_loop.UNREPORTED_ERROR.as_output())]


async def test_a_job_that_was_answered_is_not_answered_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def answered_then_failed(_session: Any, _config: Any, job: dict[str, Any]) -> None:
        await rp_job.send_result(None, {"output": [1]}, job, True)
        raise RuntimeError("after the job-done")

    sent = await scaled_job(monkeypatch, answered_then_failed)
    assert sent == [("j1", {"output": [1]})]
