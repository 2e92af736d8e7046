"""Shared fixtures: one stand-in Ollama and one stand-in RunPod job API for the session, each
reset before each test, and the real worker under RunPod's local API and under the SDK's
production job loop."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from tests.fake_ollama import FakeConfig, FakeOllama
from tests.fake_runpod import FakeRunPod
from tests.harness import DeployedWorker, WorkerProcess

# Every switch of the stand-in but its installed models, at the values tests start from.
FAKE_DEFAULTS = {
    key: value
    for key, value in dataclasses.asdict(FakeConfig(num_parallel=8)).items()
    if key not in {"models", "state_file"}
}
# Long-polls short enough that a deployed worker told to stop exits within a few seconds
# (the SDK's loop ends only once its open polls return), long enough not to spin.
FAKE_RUNPOD_DEFAULTS = {"take_poll_s": 2.0, "stop_poll_s": 2.0}


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeOllama]:
    """The session's stand-in Ollama."""
    with FakeOllama(**FAKE_DEFAULTS) as server:
        yield server


@pytest.fixture
def fake(fake_server: FakeOllama) -> FakeOllama:
    """The stand-in with default switches and zeroed counters."""
    fake_server.configure(**FAKE_DEFAULTS)
    fake_server.reset_stats()
    return fake_server


@pytest.fixture(scope="session")
def worker_process(fake_server: FakeOllama) -> Iterator[WorkerProcess]:
    """The real worker under RunPod's local API, talking to the stand-in."""
    env = {
        "OLLAMA_HOST": fake_server.host_port,
        "OLLAMA_RETRY_DEADLINE_S": "30",
        "MAX_CONCURRENCY": "16",
    }
    with WorkerProcess(env) as worker:
        yield worker


@pytest.fixture(params=["local_api", "deployed"])
def worker(request: pytest.FixtureRequest, fake: FakeOllama) -> WorkerProcess | DeployedWorker:
    """The running worker, its stand-ins reset: under RunPod's local API, then as deployed.

    Both answer `output(job_input)` alike, so a test states a behaviour once and it holds
    where developers try the worker (`--rp_serve_api`) and where users meet it (the SDK's
    production loop).
    """
    if request.param == "local_api":
        return request.getfixturevalue("worker_process")
    request.getfixturevalue("fake_runpod")
    deployed_worker = request.getfixturevalue("deployed_worker_process")
    assert deployed_worker.alive(), deployed_worker.log()
    return deployed_worker


@pytest.fixture(scope="session")
def fake_runpod_server() -> Iterator[FakeRunPod]:
    """The session's stand-in RunPod job API (job-take, stream, done, stop)."""
    with FakeRunPod(**FAKE_RUNPOD_DEFAULTS) as server:
        yield server


@pytest.fixture
def fake_runpod(fake_runpod_server: FakeRunPod) -> FakeRunPod:
    """The stand-in job API with no jobs, zeroed counters and its default timings."""
    fake_runpod_server.reset()
    return fake_runpod_server


@pytest.fixture(scope="session")
def deployed_worker_process(
    fake_server: FakeOllama, fake_runpod_server: FakeRunPod
) -> Iterator[DeployedWorker]:
    """The real worker under the SDK's production loop, on both stand-ins."""
    env = {
        "OLLAMA_HOST": fake_server.host_port,
        "OLLAMA_RETRY_DEADLINE_S": "30",
        "MAX_CONCURRENCY": "8",
        "VAPI_TOOLS_MODULE": "tests.vapi_tools_for_tests",
    }
    with DeployedWorker(fake_runpod_server, env) as worker:
        yield worker


@pytest.fixture
def deployed(
    deployed_worker_process: DeployedWorker, fake: FakeOllama, fake_runpod: FakeRunPod
) -> DeployedWorker:
    """The running deployed worker, both stand-ins reset for this test."""
    assert deployed_worker_process.alive(), deployed_worker_process.log()
    return deployed_worker_process
