"""Shared fixtures: one stand-in Ollama and one stand-in RunPod job API for the session, each
reset before each test, and the real worker under RunPod's local API and under the SDK's
production job loop."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from standins.ollama import FakeConfig, FakeOllama
from standins.runpod import FakeRunPod
from tests.harness import DeployedWorker, WorkerProcess
from tests.real_ollama import RealOllamaServer, real_ollama_with_model

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
    return pick_worker(request, "worker_process", "deployed_worker_process")


def pick_worker(
    request: pytest.FixtureRequest, local_api: str, deployed: str
) -> WorkerProcess | DeployedWorker:
    """The session worker fixture named for `request.param`; deployed, with its job API reset."""
    if request.param == "local_api":
        return request.getfixturevalue(local_api)
    request.getfixturevalue("fake_runpod")
    deployed_worker = request.getfixturevalue(deployed)
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


# --- the real tier: the real `ollama serve` and the real Gemma 3 270M model --------------------


@pytest.fixture(scope="session")
def real_ollama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealOllamaServer]:
    """The session's real Ollama with `voice-assistant` built from our Modelfile and loaded.

    One request at a time (OLLAMA_NUM_PARALLEL=1, Ollama's own default), which also lets the
    cancellation tests see whether a stopped generation still holds the only slot. Skipped
    (failed under CI) when `make ollama` has not provided a real Ollama.
    """
    models = tmp_path_factory.mktemp("real-models")
    with real_ollama_with_model(models, env={"OLLAMA_NUM_PARALLEL": "1"}) as server:
        yield server


def real_worker_env(server: RealOllamaServer) -> dict[str, str]:
    """A worker's settings against the real Ollama."""
    return {
        "OLLAMA_HOST": server.host_port,
        "OLLAMA_RETRY_DEADLINE_S": "30",
        "MAX_CONCURRENCY": "4",
        "VAPI_TOOLS_MODULE": "tests.vapi_tools_for_tests",
        # The built-in assistant's custom-LLM URL is the endpoint's OpenAI route.
        "RUNPOD_ENDPOINT_ID": "ep-real",
    }


@pytest.fixture(scope="session")
def real_worker_process(real_ollama: RealOllamaServer) -> Iterator[WorkerProcess]:
    """The real worker under RunPod's local API, on the real Ollama."""
    with WorkerProcess(real_worker_env(real_ollama)) as worker:
        yield worker


@pytest.fixture(scope="session")
def real_deployed_worker_process(
    real_ollama: RealOllamaServer, fake_runpod_server: FakeRunPod
) -> Iterator[DeployedWorker]:
    """The real worker under the SDK's production loop (stand-in job API), on the real Ollama."""
    with DeployedWorker(fake_runpod_server, real_worker_env(real_ollama)) as worker:
        yield worker


@pytest.fixture(params=["local_api", "deployed"])
def real_worker(request: pytest.FixtureRequest) -> WorkerProcess | DeployedWorker:
    """The running worker on the real Ollama: under the local API, then as deployed."""
    return pick_worker(request, "real_worker_process", "real_deployed_worker_process")
