"""A deployed worker's stop and start: no job lost on SIGTERM, no job taken before Ollama answers.

Every test runs the worker as RunPod does (the SDK's production loop against the stand-in job
API), most through ollama_boot.sh with the stand-in `ollama` executable.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from standins.ollama import FakeOllama
from standins.runpod import FakeRunPod, JobRecord
from tests.harness import DeployedWorker, free_port

# 15 words: "You said: " and them is 17 tokens, 1.7 s at 0.1 s a token.
PROMPT = " ".join(f"w{n}" for n in range(15))
REPLY = f"You said: {PROMPT}"


def reply_text(record: JobRecord) -> str:
    """The streamed chat reply: every item's `message.content`, in order."""
    return "".join(item.get("message", {}).get("content", "") for item in record.stream_items)


def wait_streaming(worker: DeployedWorker, job_ids: list[str], timeout: float = 20) -> None:
    """Return once every job has sent its first item: all are in flight."""
    for job_id in job_ids:
        worker.fake_runpod.wait_stream(job_id, 1, timeout)


@pytest.fixture
def patient_runpod(fake_runpod: FakeRunPod) -> Iterator[FakeRunPod]:
    """The job API holding job-take and job-stop polls open for a minute, as RunPod may."""
    fake_runpod.configure(take_poll_s=60, stop_poll_s=60)
    yield fake_runpod
    fake_runpod.reset()


def test_sigterm_lets_streams_in_flight_finish_then_stops_everything(
    patient_runpod: FakeRunPod,
) -> None:
    env = {"FAKE_OLLAMA_TOKEN_DELAY_S": "0.1", "MAX_CONCURRENCY": "4", "OLLAMA_NUM_PARALLEL": "4"}
    with DeployedWorker(patient_runpod, env, boot=True) as worker:
        ids = [worker.submit({"prompt": PROMPT, "stream": True}) for _ in range(4)]
        wait_streaming(worker, ids)
        stopped = time.monotonic()
        worker.signal(signal.SIGTERM)
        code = worker.wait_exit(15)
        took = time.monotonic() - stopped
        log = worker.log()
        records = [patient_runpod.record(job_id) for job_id in ids]
        assert [r.status for r in records] == ["COMPLETED"] * 4, log
        assert all(reply_text(r) == REPLY for r in records), log
        assert code == 143, log
        assert took < 10, log
        assert worker.leftovers() == [], log
        # The handler went before Ollama: every stream ended while Ollama still answered.
        finished = log.index("every job in flight finished")
        assert finished < log.index("the handler has stopped; stopping Ollama"), log


def test_a_job_that_cannot_finish_in_the_grace_fails_with_a_code(
    patient_runpod: FakeRunPod,
) -> None:
    env = {"FAKE_OLLAMA_TOKEN_DELAY_S": "0.5", "WORKER_STOP_GRACE_S": "0.5"}
    with DeployedWorker(patient_runpod, env, boot=True) as worker:
        job_id = worker.submit({"prompt": PROMPT, "stream": True})
        wait_streaming(worker, [job_id])
        worker.signal(signal.SIGTERM)
        worker.wait_exit(15)
        record = worker.wait_done(job_id, 1)
        assert record.status == "FAILED", worker.log()
        assert re.match(r"^WORKER_STOPPED: the worker was stopped", record.error), record.error
        assert "Traceback" not in record.error
        assert worker.leftovers() == []


def test_the_handler_alone_stops_at_once_though_runpod_holds_its_polls_open(
    patient_runpod: FakeRunPod, fake: FakeOllama
) -> None:
    # No boot script: the SDK's own loop would wait up to 90 s for each open long-poll.
    with DeployedWorker(patient_runpod, {"OLLAMA_HOST": fake.host_port}) as worker:
        assert worker.run({"prompt": "hi"}).status == "COMPLETED"
        assert patient_runpod.open_polls() >= 1
        stopped = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.wait_exit(15) == 0, worker.log()
        assert time.monotonic() - stopped < 3, worker.log()
        # A job queued after the stop stays with RunPod for another worker.
        late = worker.submit({"prompt": "too late"})
        time.sleep(0.3)
        assert patient_runpod.record(late).taken_at is None


def test_a_stopped_stream_frees_its_ollama_slot(
    patient_runpod: FakeRunPod, fake: FakeOllama
) -> None:
    fake.configure(token_delay_s=0.5)
    env = {"OLLAMA_HOST": fake.host_port, "WORKER_STOP_GRACE_S": "0.2"}
    with DeployedWorker(patient_runpod, env) as worker:
        job_id = worker.submit({"prompt": PROMPT, "stream": True})
        wait_streaming(worker, [job_id])
        assert fake.in_flight() == 1
        worker.signal(signal.SIGTERM)
        worker.wait_exit(15)
        deadline = time.monotonic() + 2
        while fake.in_flight() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake.in_flight() == 0


def test_fitness_checks_run_while_ollama_starts_and_no_job_is_taken_before_it_answers(
    fake_runpod: FakeRunPod,
) -> None:
    port = free_port()
    env = {
        "OLLAMA_HOST": f"127.0.0.1:{port}",
        "WORKER_WAIT_FOR_OLLAMA_S": "30",
        "SLOW_CHECK_S": "1.0",
    }
    worker = DeployedWorker(fake_runpod, env, script="tests/slow_checks_handler.py").launch()
    try:
        job_id = worker.submit({"prompt": "first"})
        # Ollama comes up only once the check is under way.
        deadline = time.monotonic() + 30
        while "slow check started" not in worker.log():
            assert time.monotonic() < deadline, worker.log()
            assert worker.alive(), worker.log()
            time.sleep(0.02)
        with FakeOllama(port=port) as ollama:
            ollama_up = time.monotonic()
            httpx.get(ollama.url, timeout=5).raise_for_status()
            record = worker.wait_done(job_id, 30)
        log = worker.log()
        check_started = float(re.search(r"slow check started at ([\d.]+)", log)[1])
        check_ended = float(re.search(r"slow check ended at ([\d.]+)", log)[1])
        assert record.status == "COMPLETED", log
        # The check ran while Ollama was not up yet: the two overlap, in that order.
        assert check_started < ollama_up < check_ended, log
        # And no job was taken before both were done.
        assert record.taken_at is not None
        assert record.taken_at > max(check_ended, ollama_up), log
    finally:
        worker.stop()


def test_a_worker_whose_ollama_never_answers_takes_no_job_and_exits_non_zero(
    fake_runpod: FakeRunPod,
) -> None:
    env = {"OLLAMA_HOST": f"127.0.0.1:{free_port()}", "WORKER_WAIT_FOR_OLLAMA_S": "1"}
    worker = DeployedWorker(fake_runpod, env).launch()
    try:
        job_id = worker.submit({"prompt": "anyone?"})
        assert worker.wait_exit(30) == 1, worker.log()
        assert "Ollama did not come up" in worker.log()
        assert fake_runpod.record(job_id).taken_at is None
    finally:
        worker.stop()
