"""The event-driven job loop runs only on the SDK it was read against, and says when it can't."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest
import runpod
from runpod.serverless.modules import rp_fitness, rp_scale

from ollama_worker import job_loop

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
    assert job_loop.install(ready=None, stop_grace_s=3) is True
    assert rp_scale.JobScaler.__name__ == "EventDrivenJobScaler"
    assert rp_scale.JobScaler.stop_grace_s == 3
