"""The real tier: the real worker on the real `ollama serve` 0.12.10 and the real Gemma 3 270M.

Everything else in the suite talks to our stand-in; these tests are the evidence that what the
stand-in says Ollama does is what Ollama does. Each runs under RunPod's local API and under the
SDK's production loop (the stand-in job API). On a CPU the model answers ~60 tokens/s, so
every generation here is bounded by `max_tokens`.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import time
from typing import Any

import httpx
import pytest
from openai.types import Completion, Model
from openai.types.chat import ChatCompletion

from ollama_worker.ollama_client import parse_parameters
from scripts.real_ollama import wanted_version
from standins.runpod import FakeRunPod
from tests.harness import ROOT, DeployedWorker, WorkerProcess, tagged_processes
from tests.real_ollama import MODEL, RealOllamaServer, is_model_runner, real_boot_env
from tests.test_worker_integration import error_of
from tests.vapi_fixtures import check_response, load, sse_chunks, webhook

pytestmark = pytest.mark.real

Worker = WorkerProcess | DeployedWorker
# A 1x1 PNG, the smallest real image.
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
    )
).decode()
# Greedy decoding and a fixed seed: the same request gives the same tokens, streamed or not.
GREEDY = {"temperature": 0, "seed": 42}


def text_of(items: list[Any]) -> str:
    """A chat stream's reply: every item's `message.content`, the summary's included."""
    return "".join(item.get("message", {}).get("content", "") for item in items)


def modelfile_parameters() -> tuple[dict[str, Any], str]:
    """The project Modelfile's PARAMETERs (as /api/show would list them) and its SYSTEM."""
    text = (ROOT / "Modelfile").read_text()
    lines = [
        line.removeprefix("PARAMETER ").strip()
        for line in text.splitlines()
        if line.startswith("PARAMETER ")
    ]
    system = re.search(r'^SYSTEM """(.*?)"""', text, re.MULTILINE | re.DOTALL)
    assert system, "the Modelfile has a SYSTEM block"
    return parse_parameters("\n".join(lines)), system.group(1)


# --- the project's own Modelfile --------------------------------------------------------


def test_the_modelfile_is_accepted_and_read_back_as_the_worker_reads_it(
    real_ollama: RealOllamaServer,
) -> None:
    shown = real_ollama.api("POST", "/api/show", {"model": MODEL})
    read_back = parse_parameters(shown["parameters"])
    ours, system = modelfile_parameters()
    # Every PARAMETER survives, with its type; gemma3's stop token is added after ours.
    assert {k: v for k, v in read_back.items() if k != "stop"} == {
        k: v for k, v in ours.items() if k != "stop"
    }
    assert read_back["stop"] == [*ours["stop"], "<end_of_turn>"]
    assert read_back["num_ctx"] == 8192
    assert read_back["temperature"] == 0.6
    assert shown["system"] == system
    assert shown["details"]["family"] == "gemma3"


# --- chat -------------------------------------------------------------------------------


def fresh_output(real_ollama: RealOllamaServer, worker: Worker, job: dict[str, Any]) -> list[Any]:
    """The job's items from a freshly loaded model (see RealOllamaServer.restart)."""
    real_ollama.restart()
    return worker.output(job)


def test_stream_and_whole_reply_agree_and_report_real_usage(
    real_ollama: RealOllamaServer, real_worker: Worker
) -> None:
    job = {"prompt": "Name three colours.", "max_tokens": 24, **GREEDY}
    [whole] = fresh_output(real_ollama, real_worker, job)
    streamed = fresh_output(real_ollama, real_worker, {**job, "stream": True})
    assert whole["message"]["content"], whole
    assert text_of(streamed) == whole["message"]["content"]
    final = streamed[-1]
    assert final["done"] is True
    for reply in (whole, final):
        usage, timings = reply["usage"], reply["timings"]
        assert usage["prompt_tokens"] > 0
        assert 0 < usage["completion_tokens"] <= 24
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert timings["eval_ms"] > 0
        assert timings["total_ms"] >= timings["eval_ms"]
        assert timings["tokens_per_second"] > 0
    assert final["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]


@pytest.mark.parametrize("bound", [{"max_tokens": 5}, {"options": {"num_predict": 5}}])
def test_max_tokens_and_num_predict_bound_the_reply(
    real_worker: Worker, bound: dict[str, Any]
) -> None:
    [reply] = real_worker.output({"prompt": "Tell me a long story about a dragon.", **bound})
    assert reply["usage"]["completion_tokens"] == 5
    assert reply["done_reason"] == "length"


# --- the OpenAI-compatible route ---------------------------------------------------------


def openai_job(route: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"openai_route": route, "openai_input": body or {}}


CHAT_BODY = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, **GREEDY}


def test_openai_chat_completion_whole_and_streamed(
    real_ollama: RealOllamaServer, real_worker: Worker
) -> None:
    [whole] = fresh_output(real_ollama, real_worker, openai_job("/v1/chat/completions", CHAT_BODY))
    completion = ChatCompletion.model_validate(whole)
    assert completion.model == MODEL
    assert completion.usage is not None
    assert 0 < completion.usage.completion_tokens <= 8
    stream_job = openai_job("/v1/chat/completions", {**CHAT_BODY, "stream": True})
    streamed = fresh_output(real_ollama, real_worker, stream_job)
    chunks, text = sse_chunks(streamed)
    assert text == completion.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == completion.choices[0].finish_reason


def test_openai_completions_models_and_embeddings(real_worker: Worker) -> None:
    body = {"prompt": "The sky is", "max_tokens": 6, **GREEDY}
    [completion] = real_worker.output(openai_job("/v1/completions", body))
    assert Completion.model_validate(completion).choices[0].text
    [models] = real_worker.output(openai_job("/v1/models"))
    ids = [Model.model_validate(entry).id for entry in models["data"]]
    assert f"{MODEL}:latest" in ids
    # Gemma 3 270M is a completion model: Ollama 0.12.10 answers 500 "this model does not
    # support embeddings" (server/routes.go EmbedHandler), which reaches the caller coded.
    output = real_worker.output(openai_job("/v1/embeddings", {"input": "hello"}))
    assert "does not support embeddings" in error_of(output)


# --- VAPI --------------------------------------------------------------------------------


def test_vapi_custom_llm_stream(real_worker: Worker) -> None:
    payload = {**load("custom_llm"), "stream": True, "max_tokens": 12, **GREEDY}
    items = real_worker.output(webhook(payload))
    chunks, text = sse_chunks(items)
    assert text, "the real model said something"
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}


def test_vapi_assistant_request_carries_the_models_own_sampling(real_worker: Worker) -> None:
    [item] = real_worker.output(webhook(load("assistant_request")))
    response = item["response"]
    check_response("assistant-request", response)
    model = response["assistant"]["model"]
    # Read from the real /api/show: the Modelfile's temperature 0.6 and num_predict 200.
    assert model["temperature"] == 0.6
    assert model["maxTokens"] == 200


# --- the real error paths ------------------------------------------------------------------


def test_unknown_model(real_worker: Worker) -> None:
    error = error_of(real_worker.output({"prompt": "hi", "model": "no-such-model"}))
    assert error.startswith("MODEL_NOT_FOUND: ")
    assert f"{MODEL}:latest" in error  # names what is installed


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
            "does not support tools",
        ),
        ({"think": True}, "does not support thinking"),
    ],
)
def test_capabilities_the_model_lacks_are_invalid_input(
    real_worker: Worker, extra: dict[str, Any], says: str
) -> None:
    for stream in (False, True):
        started = time.monotonic()
        error = error_of(real_worker.output({"prompt": "hi", "stream": stream, **extra}))
        assert error.startswith("INVALID_INPUT: ")
        assert says in error
        assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("job", "says"),
    [
        ({"prompt": "hi", "options": {"temperature": "hot"}}, 'option "temperature" must be'),
        (
            {"messages": [{"role": "user", "content": "hi", "images": [PNG]}], "max_tokens": 2},
            "missing data required for image input",
        ),
        (openai_job("/v1/embeddings", {"input": "hello"}), "does not support embeddings"),
    ],
    ids=["option-type", "image", "embeddings"],
)
def test_requests_ollama_fails_with_a_500_no_retry_can_cure_are_invalid_input(
    real_worker: Worker, job: dict[str, Any], says: str
) -> None:
    """Ollama 0.12.10 answers these with HTTP 500 (tests/test_conformance.py), though only a
    different request can succeed: the caller is told to fix it, not to retry."""
    error = error_of(real_worker.output(job))
    assert error.startswith("INVALID_INPUT: "), error
    assert says in error


def test_a_context_longer_than_num_ctx_is_truncated_by_ollama_not_refused(
    real_ollama: RealOllamaServer, real_worker: Worker
) -> None:
    """Ollama 0.12.10 drops what does not fit num_ctx (server/prompt.go chatPrompt, the
    runner's truncation when one message alone is too long) and answers normally: no error,
    no hang. A small-context copy of our model keeps the CPU prompt evaluation short."""
    small = f"{MODEL}-ctx256"
    installed = {m["name"] for m in real_ollama.api("GET", "/api/tags")["models"]}
    if f"{small}:latest" not in installed:
        shown = real_ollama.api("POST", "/api/show", {"model": MODEL})
        real_ollama.create(small, shown["modelfile"] + "\nPARAMETER num_ctx 256\n")
    job = {"model": small, "prompt": "hello " * 600, "max_tokens": 3}
    started = time.monotonic()
    try:
        [reply] = real_worker.output(job)
    finally:
        # On a CPU, Ollama 0.12.10 keeps one model loaded: the other test model evicted ours.
        real_ollama.preload()
    assert time.monotonic() - started < 60
    assert 0 < reply["usage"]["prompt_tokens"] <= 256
    assert reply["usage"]["completion_tokens"] <= 3


# --- health ----------------------------------------------------------------------------------


def test_health_from_the_real_ps(real_ollama: RealOllamaServer, real_worker: Worker) -> None:
    [health] = real_worker.output({"type": "health"})
    assert health["ollama_version"] == real_ollama.real.version
    assert f"{MODEL}:latest" in health["models"]
    assert f"{MODEL}:latest" in health["loaded"]
    # On a CPU the real /api/ps says size_vram 0: nothing of the model is in GPU memory.
    assert health["gpu_fraction"][f"{MODEL}:latest"] == 0.0


# --- cancellation -----------------------------------------------------------------------------


def test_a_stopped_stream_frees_the_only_slot(
    real_ollama: RealOllamaServer,
    real_deployed_worker_process: DeployedWorker,
    fake_runpod: FakeRunPod,
) -> None:
    """OLLAMA_NUM_PARALLEL=1: were the stopped generation still running, the short job sent
    right after it would wait for the rest of its 4000 tokens (about a minute on this CPU).
    Quiet, the short job answers in under a second; the bound leaves room for a busy CPU."""
    worker = real_deployed_worker_process
    long_job = {"prompt": "Count from one to one thousand.", "max_tokens": 4000, **GREEDY}
    job_id = worker.submit({**long_job, "stream": True})
    fake_runpod.wait_stream(job_id, 2, timeout=60)
    fake_runpod.stop_job(job_id)
    deadline = time.monotonic() + 10
    while fake_runpod.record(job_id).stop_delivered_at is None:
        assert time.monotonic() < deadline, "the stop signal never reached the worker"
        time.sleep(0.02)
    started = time.monotonic()
    record = worker.run({"prompt": "Say yes.", "max_tokens": 3, **GREEDY}, timeout=60)
    waited = time.monotonic() - started
    assert record.status == "COMPLETED", record
    assert waited < 15, f"the short job waited {waited:.1f} s behind a stopped generation"
    assert fake_runpod.record(job_id).done_posts == 0


# --- ollama_boot.sh with the real `ollama serve` ---------------------------------------------


def boot_worker(
    real_ollama: RealOllamaServer, fake_runpod: FakeRunPod, **env: str
) -> DeployedWorker:
    return DeployedWorker(
        fake_runpod,
        {**real_boot_env(real_ollama), "OLLAMA_BOOT_TIMEOUT_S": "60", **env},
        boot=True,
        startup_timeout_s=90,
    )


def test_boot_script_with_the_real_ollama(
    real_ollama: RealOllamaServer, fake_runpod: FakeRunPod
) -> None:
    with boot_worker(real_ollama, fake_runpod, OLLAMA_NUM_PARALLEL="2", MAX_CONCURRENCY="2") as w:
        record = w.run({"prompt": "Say hello.", "max_tokens": 4, **GREEDY}, timeout=60)
        assert record.status == "COMPLETED", (record, w.log())
        log = w.log()
        version = re.escape(real_ollama.real.version)
        assert re.search(rf"boot: Ollama {version} answered after [\d.]+ s", log), log
        assert re.search(rf"boot: {MODEL} loaded in [\d.]+ s and kept in memory", log), log
        # The CPU run's truth, as the GPU check reports it.
        assert f"boot: {MODEL}:latest: 0% in GPU memory, the rest on the CPU" in log, log
        assert "[ollama] " in log
        assert any(is_model_runner(cmd) for cmd in tagged_commands(w)), "a model runner is up"

        # SIGTERM with two streams in flight: each completes or fails WORKER_STOPPED.
        long_job = {"prompt": "Count slowly to fifty.", "max_tokens": 120, "stream": True}
        ids = [w.submit(long_job) for _ in range(2)]
        for job_id in ids:
            fake_runpod.wait_stream(job_id, 1, timeout=60)
        stopped_at = time.monotonic()
        w.signal(signal.SIGTERM)
        assert w.wait_exit(timeout=15) in {0, 143}
        assert time.monotonic() - stopped_at < 10
        for job_id in ids:
            record = fake_runpod.record(job_id)
            assert record.done_posts == 1, record
            assert record.status == "COMPLETED" or "WORKER_STOPPED" in (record.error or ""), record
        assert w.leftovers() == [], tagged_commands(w)  # ollama serve and its runner included


def tagged_commands(worker: DeployedWorker) -> list[str]:
    return list(tagged_processes("DEPLOYED_TEST_TAG", worker.tag).values())


def test_ollama_dying_under_a_running_worker_stops_it(
    real_ollama: RealOllamaServer, fake_runpod: FakeRunPod
) -> None:
    with boot_worker(real_ollama, fake_runpod) as w:
        assert w.run({"prompt": "hi", "max_tokens": 2}, timeout=60).status == "COMPLETED"
        serve = [
            pid
            for pid, cmd in tagged_processes("DEPLOYED_TEST_TAG", w.tag).items()
            if cmd.endswith("ollama serve")
        ]
        assert len(serve) == 1, tagged_commands(w)
        os.kill(serve[0], signal.SIGKILL)
        status = w.wait_exit(timeout=15)
        assert status != 0
        assert "ollama serve exited with status" in w.log()
        deadline = time.monotonic() + 5
        while w.leftovers() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert w.leftovers() == [], tagged_commands(w)


def test_the_real_ollama_is_the_version_asked_for(real_ollama: RealOllamaServer) -> None:
    version = httpx.get(f"{real_ollama.url}/api/version").json()["version"]
    assert version == real_ollama.real.version == wanted_version()
