"""The stand-in RunPod job API checked against runpod-python 1.12.0's own client functions.

The SDK reads its URLs from the environment when its modules are imported, so the client
runs in a subprocess started with the stand-in's worker_env(): a small driver that calls
rp_job.get_job / get_stop_signals and rp_http.stream_result / send_result on request,
exactly as JobScaler does, over the same AsyncClientSession.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from standins.runpod import FakeRunPod, clean_environ
from tests.harness import ROOT

WORKER = "worker-t1"

# One JSON command per stdin line, one JSON answer per stdout line.
DRIVER = r"""
import asyncio, json, sys, time
from runpod.http_client import AsyncClientSession
from runpod.serverless.modules import rp_http, rp_job
from runpod.serverless.modules.worker_state import JobsProgress

async def main():
    loop = asyncio.get_running_loop()
    async with AsyncClientSession() as session:
        print(json.dumps({"ready": True}), flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            cmd = json.loads(line)
            op, started, answer = cmd["op"], time.monotonic(), None
            if op == "urls":
                answer = {
                    "get": rp_job._job_get_url(1), "batch": rp_job._job_get_url(3),
                    "stop": rp_job._job_stop_url(), "done": rp_http.JOB_DONE_URL,
                    "stream": rp_http.JOB_STREAM_URL,
                }
            elif op == "get_job":
                answer = await rp_job.get_job(session, cmd["n"])
            elif op == "get_stop_signals":
                answer = await rp_job.get_stop_signals(session)
            elif op == "stream":
                await rp_http.stream_result(session, cmd["data"], cmd["job"])
            elif op == "send":
                await rp_http.send_result(session, cmd["data"], cmd["job"], cmd["is_stream"])
            elif op == "progress":
                JobsProgress().add(cmd["id"])
            print(json.dumps({"answer": answer, "elapsed": time.monotonic() - started}),
                  flush=True)

asyncio.run(main())
"""


class SdkClient:
    """The SDK's job-API client functions in a subprocess pointed at the stand-in."""

    def __init__(self, server: FakeRunPod) -> None:
        env = {**clean_environ(), **server.worker_env(WORKER), "RUNPOD_LOG_LEVEL": "ERROR"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", DRIVER],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.read() == {"ready": True}

    def send(self, op: str, **args: Any) -> None:
        """Ask the driver to run `op` (answer with read())."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.process.stdin.flush()

    def read(self) -> dict[str, Any]:
        """The driver's next answer line."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"the SDK driver exited {self.process.poll()}"
        return json.loads(line)

    def call(self, op: str, **args: Any) -> tuple[Any, float]:
        """Run `op` in the SDK; its return value and how long it took."""
        self.send(op, **args)
        answer = self.read()
        return answer["answer"], answer["elapsed"]

    def close(self) -> None:
        """End the driver."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def server() -> Iterator[FakeRunPod]:
    """A stand-in of this module's own, with short long-polls."""
    with FakeRunPod(take_poll_s=0.3, stop_poll_s=0.3) as fake:
        yield fake


@pytest.fixture(scope="module")
def sdk_client(server: FakeRunPod) -> Iterator[SdkClient]:
    """One SDK driver for the module (importing runpod costs about 1.5 s)."""
    client = SdkClient(server)
    yield client
    client.close()


@pytest.fixture
def sdk(sdk_client: SdkClient, server: FakeRunPod) -> SdkClient:
    """The driver, with the stand-in reset for the test."""
    server.reset()
    return sdk_client


def test_worker_env_templates_every_url_as_the_sdk_expands_it(
    sdk: SdkClient, server: FakeRunPod
) -> None:
    """rp_job.JOB_GET_URL / _job_get_url / _job_stop_url, rp_http.JOB_DONE_URL / STREAM_URL."""
    urls, _ = sdk.call("urls")
    base = server.base_url
    assert urls["get"] == f"{base}/job-take/{WORKER}?gpu=test&job_in_progress=0"
    assert urls["batch"] == (
        f"{base}/job-take-batch/{WORKER}?gpu=test&batch_size=3&job_in_progress=0"
    )
    assert urls["stop"] == f"{base}/job-stop/{WORKER}?gpu=test"
    assert urls["done"] == f"{base}/job-done/{WORKER}/$ID?gpu=test"
    assert urls["stream"] == f"{base}/job-stream/{WORKER}/$ID?gpu=test"
    env = server.worker_env()
    assert env["RUNPOD_SKIP_AUTO_SYSTEM_CHECKS"] == env["RUNPOD_SKIP_GPU_CHECK"] == "true"
    assert all(v.startswith("http://127.0.0.1:") for k, v in env.items() if "WEBHOOK" in k)


def test_clean_environ_drops_the_api_key() -> None:
    """rp_ping.Heartbeat.start_ping and rp_fitness._report_unhealthy dial out only with it."""
    cleaned = clean_environ({"RUNPOD_AI_API_KEY": "k", "RUNPOD_WEBHOOK_PING": "x", "HOME": "/h"})
    assert cleaned == {"HOME": "/h"}


def test_a_submitted_job_is_taken_by_get_job(sdk: SdkClient, server: FakeRunPod) -> None:
    """rp_job.get_job, legacy branch (num_jobs == 1): a dict {id, input} becomes [job]."""
    job_id = server.submit({"prompt": "hi"})
    jobs, _ = sdk.call("get_job", n=1)
    assert jobs == [{"id": job_id, "input": {"prompt": "hi"}}]
    record = server.record(job_id)
    assert record.taken_by == WORKER
    assert record.submitted_at is not None
    assert record.taken_at is not None
    assert record.taken_at >= record.submitted_at
    assert server.takes(WORKER)[-1][1:] == ("0", 1, WORKER)
    assert server.takes("another-worker") == []
    assert server.peak_unfinished() == server.unfinished() == 1
    assert server.stats()["auth_headers_nonempty"] == 0  # no API key reached the SDK


def test_an_empty_take_poll_is_a_204_after_take_poll_s(sdk: SdkClient, server: FakeRunPod) -> None:
    """rp_job.get_job returns None on a 204 (`if response.status == 204`)."""
    server.configure(take_poll_s=0.3)
    jobs, elapsed = sdk.call("get_job", n=1)
    assert jobs is None
    assert elapsed >= 0.3
    assert server.poll_counts() == (1, 0)
    assert server.open_polls() == 0


def test_a_held_take_poll_answers_as_soon_as_a_job_arrives(
    sdk: SdkClient, server: FakeRunPod
) -> None:
    """rp_job.get_job long-polls: the job submitted mid-poll comes back on that same poll."""
    server.configure(take_poll_s=5)
    sdk.send("get_job", n=1)
    server.wait_for_poll(5, worker_id=WORKER)
    assert server.open_polls() == 1
    job_id = server.submit({"prompt": "late"})
    answer = sdk.read()
    assert answer["answer"] == [{"id": job_id, "input": {"prompt": "late"}}]
    assert answer["elapsed"] < 5
    assert server.poll_counts().take == 1


def test_batch_take_returns_a_list_of_at_most_batch_size(
    sdk: SdkClient, server: FakeRunPod
) -> None:
    """rp_job._job_get_url(n > 1): /job-take-batch/ and &batch_size; get_job returns the list."""
    ids = server.submit_many([{"n": 1}, {"n": 2}, {"n": 3}])
    first, _ = sdk.call("get_job", n=2)
    assert [job["id"] for job in first] == ids[:2]
    rest, _ = sdk.call("get_job", n=5)
    assert rest == [{"id": ids[2], "input": {"n": 3}}]
    assert [take.batch_size for take in server.takes()] == [2, 5]
    assert server.peak_unfinished() == 3


def test_job_in_progress_is_logged_per_take(sdk: SdkClient, server: FakeRunPod) -> None:
    """rp_job._job_get_url: job_in_progress=1 while JobsProgress holds a job."""
    sdk.call("progress", id="busy-job")
    server.submit({"x": 1})
    sdk.call("get_job", n=1)
    assert server.takes()[-1].job_in_progress == "1"


def test_streamed_items_and_the_done_result_are_recorded(
    sdk: SdkClient, server: FakeRunPod
) -> None:
    """rp_http.stream_result (isStream=false) per item, then send_result(is_stream=True)."""
    job_id = server.submit({"prompt": "hi", "stream": True})
    [job], _ = sdk.call("get_job", n=1)
    pieces = [{"message": {"content": "Hé "}}, {"message": {"content": "there"}}]
    for piece in pieces:
        sdk.call("stream", job=job, data={"output": piece})
    assert server.record(job_id).done is False
    sdk.call("send", job=job, data={"output": pieces}, is_stream=True)
    record = server.wait_done(job_id, timeout=5)
    assert record.stream_items == pieces  # ensure_ascii=False text survives
    assert [t for t, _ in record.stream] == sorted(t for t, _ in record.stream)
    assert record.status == "COMPLETED"
    assert record.output == pieces
    assert record.error is None
    assert record.is_stream_flags == ["true"]
    assert record.done_posts == 1
    assert record.done_at is not None
    assert record.done_at >= record.stream[-1][0]
    assert server.unfinished() == 0


def test_an_error_result_is_a_failed_job(sdk: SdkClient, server: FakeRunPod) -> None:
    """rp_job.handle_job sends {"error": ...} as the job result when a stream item errs."""
    job_id = server.submit({"prompt": "hi"})
    [job], _ = sdk.call("get_job", n=1)
    sdk.call("send", job=job, data={"error": "OLLAMA_ERROR: boom"}, is_stream=False)
    record = server.wait_done(job_id, timeout=5)
    assert record.status == "FAILED"
    assert record.error == "OLLAMA_ERROR: boom"
    assert record.is_stream_flags == ["false"]


def test_rtt_delays_every_post_and_take_rtt_every_take(sdk: SdkClient, server: FakeRunPod) -> None:
    """rp_http._transmit awaits the POST's answer, so rtt_s is what each yield costs."""
    server.configure(rtt_s=0.25, take_rtt_s=0.2)
    job_id = server.submit({"prompt": "slow"})
    [job], took = sdk.call("get_job", n=1)
    assert took >= 0.2
    _, streamed = sdk.call("stream", job=job, data={"output": "a"})
    _, sent = sdk.call("send", job=job, data={"output": ["a"]}, is_stream=True)
    assert streamed >= 0.25
    assert sent >= 0.25
    record = server.record(job_id)
    assert record.done_at is not None
    assert record.done_at - record.stream[0][0] >= 0.25  # arrival stamped before the delay


def test_stop_signals_reach_get_stop_signals(sdk: SdkClient, server: FakeRunPod) -> None:
    """rp_job.get_stop_signals: 204 is [], {"jobsToStop": [ids]} the ids (job-stop URL)."""
    server.configure(stop_poll_s=0.3)
    nothing, elapsed = sdk.call("get_stop_signals")
    assert nothing == []
    assert elapsed >= 0.3
    job_id = server.submit({"prompt": "stop me"})
    sdk.call("get_job", n=1)
    server.configure(stop_poll_s=5)
    sdk.send("get_stop_signals")
    time.sleep(0.2)
    server.stop_job(job_id)
    answer = sdk.read()
    assert answer["answer"] == [job_id]
    assert answer["elapsed"] < 5
    record = server.record(job_id)
    assert record.stop_delivered_at is not None
    assert record.done is False
    assert server.poll_counts().stop == 2
    assert server.unfinished() == 0


def test_a_queued_job_stopped_is_never_taken(sdk: SdkClient, server: FakeRunPod) -> None:
    """rp_job.get_job after stop_job on a queued job: nothing to take (204)."""
    job_id = server.submit({"prompt": "never"})
    server.stop_job(job_id)
    jobs, _ = sdk.call("get_job", n=1)
    assert jobs is None
    assert server.record(job_id).status == "CANCELLED"


def test_a_poll_whose_client_left_does_not_swallow_a_job(
    sdk: SdkClient, server: FakeRunPod
) -> None:
    """A job-take answer nobody reads is lost on the platform; here the job stays queued."""
    server.configure(take_poll_s=5)
    take_url = server.worker_env()["RUNPOD_WEBHOOK_GET_JOB"].replace("$ID", "gone")
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(take_url + "&job_in_progress=0", timeout=0.3)
    time.sleep(0.3)  # the stand-in notices the closed connection
    job_id = server.submit({"prompt": "kept"})
    jobs, _ = sdk.call("get_job", n=1)
    assert jobs == [{"id": job_id, "input": {"prompt": "kept"}}]
    assert server.record(job_id).taken_by == WORKER


def test_jobs_for_a_worker_go_only_to_that_worker(sdk: SdkClient, server: FakeRunPod) -> None:
    """submit(worker_id=...) routes a job; other workers' polls skip it."""
    other = server.submit({"n": 1}, worker_id="someone-else")
    mine = server.submit({"n": 2}, worker_id=WORKER)
    jobs, _ = sdk.call("get_job", n=5)
    assert [job["id"] for job in jobs] == [mine]
    assert server.record(other).taken_at is None


def test_wait_done_names_the_job_on_timeout(server: FakeRunPod) -> None:
    """wait_done raises TimeoutError naming the job and what it lacked."""
    server.reset()
    job_id = server.submit({"prompt": "forgotten"})
    with pytest.raises(TimeoutError, match=rf"job {job_id}: no job-done POST within 0.2 s"):
        server.wait_done(job_id, timeout=0.2)
    with pytest.raises(KeyError, match="never submitted"):
        server.record("nope")


def test_configure_rejects_unknown_and_negative_settings(server: FakeRunPod) -> None:
    """configure() validates like FakeOllama's."""
    with pytest.raises(TypeError, match="unknown FakeRunPod setting"):
        server.configure(rtt=1)
    with pytest.raises(ValueError, match="rtt_s must be"):
        server.configure(rtt_s=-1)


def test_process_mode_serves_and_takes_control_requests() -> None:
    """`python -m standins.runpod` prints its URL and env, and obeys /_fake/*."""
    process = subprocess.Popen(
        [sys.executable, "-m", "standins.runpod", "--port", "0", "--take-poll-s", "0.2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        hello = json.loads(process.stdout.readline())
        url = hello["url"]
        assert url.startswith("http://127.0.0.1:")
        [job_id] = httpx.post(f"{url}/_fake/submit", json={"input": {"a": 1}}).json()["ids"]
        take = hello["env"]["RUNPOD_WEBHOOK_GET_JOB"].replace("$ID", "w")
        taken = httpx.get(take + "&job_in_progress=0", timeout=5)
        assert taken.json() == {"id": job_id, "input": {"a": 1}}
        assert httpx.get(take + "&job_in_progress=0", timeout=5).status_code == 204
        assert httpx.get(f"{url}/_fake/jobs/{job_id}").json()["taken_by"] == "w"
        assert httpx.get(f"{url}/_fake/stats").json()["take_polls"] == 2
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
