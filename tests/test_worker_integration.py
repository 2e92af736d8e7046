"""The real worker driven through RunPod's local API (`/runsync`), as curl would drive it."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from openai.types import Completion, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from standins.ollama import FakeOllama
from tests.harness import ROOT, WorkerProcess, free_port

CODED_ERROR = re.compile(
    r"^(INVALID_INPUT|MODEL_NOT_FOUND|OLLAMA_UNAVAILABLE|OLLAMA_ERROR|TIMEOUT): "
)


def error_of(output: list[Any]) -> str:
    """The coded error a failed job yielded last (under the local API it lands in `output`)."""
    assert output, "a failed job yields one error item"
    last = output[-1]
    assert isinstance(last, dict)
    assert set(last) == {"error"}, last
    assert isinstance(last["error"], str)
    assert CODED_ERROR.match(last["error"]), last["error"]
    assert "Traceback" not in last["error"]
    return last["error"]


# --- chat --------------------------------------------------------------------------------


def test_chat_whole_reply(worker: WorkerProcess, fake: FakeOllama) -> None:
    output = worker.output({"prompt": "hello there", "temperature": 0.3, "max_tokens": 50})
    assert len(output) == 1
    item = output[0]
    assert item["message"] == {"role": "assistant", "content": "You said: hello there"}
    assert item["model"] == "voice-assistant"
    assert item["done_reason"] == "stop"
    usage = item["usage"]
    assert usage["completion_tokens"] == 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert set(item["timings"]) == {
        "total_ms",
        "load_ms",
        "prompt_eval_ms",
        "eval_ms",
        "tokens_per_second",
    }
    sent = fake.received()[-1]
    assert sent["options"] == {"temperature": 0.3, "num_predict": 50}
    assert sent["stream"] is False


def test_chat_stream_pieces_add_up_to_the_reply(worker: WorkerProcess) -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "tell me a story"},
    ]
    output = worker.output({"type": "chat", "messages": messages, "stream": True})
    *pieces, final = output
    # Pieces that arrive together may leave as one item; the last may ride with the summary.
    assert all(p["done"] is False and p["message"]["role"] == "assistant" for p in pieces)
    text = "".join(item.get("message", {}).get("content", "") for item in output)
    assert text == "You said: tell me a story"
    assert final["done"] is True
    assert final["done_reason"] == "stop"
    assert final["usage"]["completion_tokens"] == 6


def test_chat_length_cap_and_legacy_message_field(worker: WorkerProcess) -> None:
    [item] = worker.output({"message": "one two three four five", "max_tokens": 2})
    assert item["message"]["content"] == "You said: "
    assert item["done_reason"] == "length"


def test_health(worker: WorkerProcess) -> None:
    [item] = worker.output({"type": "health"})
    assert item["ollama_version"] == "0.12.10"
    assert set(item["models"]) == {"llama3.1:8b", "voice-assistant:latest"}
    assert isinstance(item["loaded"], list)
    assert item["default_model"] == "voice-assistant"
    assert item["worker_version"]


def test_health_says_how_much_of_each_loaded_model_is_in_gpu_memory(
    worker: WorkerProcess, fake: FakeOllama
) -> None:
    worker.output({"prompt": "load the default model"})
    worker.output({"prompt": "and another", "model": "llama3.1:8b"})
    [whole] = worker.output({"type": "health"})
    assert whole["gpu_fraction"] == {"voice-assistant:latest": 1.0, "llama3.1:8b": 1.0}
    assert sorted(whole["loaded"]) == sorted(whole["gpu_fraction"])
    fake.configure(gpu_fraction=0.25)
    [split] = worker.output({"type": "health"})
    assert split["gpu_fraction"] == {"voice-assistant:latest": 0.25, "llama3.1:8b": 0.25}


# --- every error code --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job_input", "says"),
    [
        ({"type": "sing"}, "INVALID_INPUT: job `type` is 'sing'; known types: chat, health"),
        ({"messages": "hi"}, "INVALID_INPUT: messages: Input should be a valid list"),
        ({"prompt": "x", "keep_alive": "forever"}, "INVALID_INPUT: keep_alive: the worker keeps"),
        ({"prompt": "hi", "model": "nope:1b"}, "MODEL_NOT_FOUND: model 'nope:1b' is not installed"),
        ({"prompt": "hi", "max_tokens": 0}, "INVALID_INPUT: max_tokens: must be at least 1"),
        ({"prompt": "hi", "think": True}, 'INVALID_INPUT: Ollama rejected the request: "voice'),
    ],
)
def test_input_errors(worker: WorkerProcess, job_input: dict[str, Any], says: str) -> None:
    assert error_of(worker.output(job_input)).startswith(says)


def test_model_not_found_names_the_installed_models(worker: WorkerProcess) -> None:
    message = error_of(worker.output({"prompt": "hi", "model": "mistral"}))
    assert message.endswith("installed models: llama3.1:8b, voice-assistant:latest")


def test_oversized_input_is_refused(worker: WorkerProcess, fake: FakeOllama) -> None:
    message = error_of(worker.output({"prompt": "x" * 1_000_001}))
    assert message.startswith("INVALID_INPUT: message text is 1,000,001 characters")
    assert fake.received() == []  # refused before Ollama saw it


def test_ollama_error_before_the_reply(worker: WorkerProcess, fake: FakeOllama) -> None:
    fake.configure(fail_next=[{"status": 500}])
    message = error_of(worker.output({"prompt": "hi"}))
    assert message.startswith("OLLAMA_ERROR: Ollama failed (HTTP 500): llama runner process")


def test_ollama_error_line_mid_stream(worker: WorkerProcess, fake: FakeOllama) -> None:
    fake.configure(fail_next=[{"midstream_error": "CUDA error: out of memory", "after_tokens": 2}])
    output = worker.output({"prompt": "one two three", "stream": True})
    assert "".join(p["message"]["content"] for p in output[:-1]) == "You said: "
    assert error_of(output) == "OLLAMA_ERROR: Ollama failed (mid-stream): CUDA error: out of memory"


def test_connection_dropped_mid_stream(worker: WorkerProcess, fake: FakeOllama) -> None:
    fake.configure(fail_next=[{"drop": "mid_stream", "after_tokens": 1}])
    output = worker.output({"prompt": "one two three", "stream": True})
    assert len(output) == 2
    assert error_of(output).startswith("OLLAMA_ERROR: the connection to Ollama broke mid-stream")
    assert len(fake.received()) == 1  # not retried once the stream had begun


def test_faults_before_the_first_byte_are_retried(worker: WorkerProcess, fake: FakeOllama) -> None:
    fake.configure(fail_next=[{"status": 503}, {"status": 502}, {"status": 504}])
    [item] = worker.output({"prompt": "still there?"})
    assert item["message"]["content"] == "You said: still there?"
    assert len(fake.received()) == 4


def test_a_connection_dropped_before_the_reply_is_not_retried(
    worker: WorkerProcess, fake: FakeOllama
) -> None:
    # Ollama sends its headers with the first token: a request it dropped before them may
    # have been generating, and sending it again would generate it again.
    fake.configure(fail_next=[{"drop": "before_headers"}])
    message = error_of(worker.output({"prompt": "still there?"}))
    assert message.startswith("OLLAMA_ERROR: the connection to Ollama broke before replying")
    assert len(fake.received()) == 1


def test_busy_past_the_deadline_and_slow_replies(fake: FakeOllama) -> None:
    env = {
        "OLLAMA_HOST": fake.host_port,
        "OLLAMA_RETRY_DEADLINE_S": "1",
        "OLLAMA_REQUEST_TIMEOUT_S": "0.5",
    }
    with WorkerProcess(env) as impatient:
        fake.configure(fail_rate=1.0, fail_status=503)
        busy = error_of(impatient.output({"prompt": "hi"}))
        assert busy.startswith("OLLAMA_UNAVAILABLE: Ollama kept answering HTTP 503")
        fake.configure(fail_rate=0.0, header_delay_s=2.0)
        started = time.monotonic()
        slow = error_of(impatient.output({"prompt": "hi"}))
        assert slow.startswith("TIMEOUT: Ollama did not answer in time")
        assert time.monotonic() - started < 1 + 0.5 + 2  # deadline + one attempt + margin
        assert " crashed" not in impatient.log()  # coded failures, not INTERNAL ones


def test_a_job_stuck_behind_busy_slots_times_out(fake: FakeOllama) -> None:
    """Ollama queues a loaded model's requests without limit (no 503): the worker's read
    timeout is what ends a job that waits too long, as TIMEOUT."""
    env = {
        "OLLAMA_HOST": fake.host_port,
        "OLLAMA_RETRY_DEADLINE_S": "0",  # one attempt: the timeout alone decides
        "OLLAMA_REQUEST_TIMEOUT_S": "0.5",
    }
    with WorkerProcess(env) as impatient:
        fake.configure(num_parallel=1, fail_next=[{"delay_s": 3}])
        blocker = threading.Thread(
            target=lambda: httpx.post(
                f"{fake.url}/api/chat",
                json={"model": "voice-assistant", "messages": [{"role": "user", "content": "x"}]},
                timeout=10,
            )
        )
        blocker.start()
        try:
            while fake.in_flight() < 1:  # the one slot is taken for 3 s
                time.sleep(0.01)
            started = time.monotonic()
            message = error_of(impatient.output({"prompt": "waiting in line"}))
            elapsed = time.monotonic() - started
            while not fake.cancelled() and time.monotonic() - started < 3:
                time.sleep(0.01)  # the job's request leaves the queue as the worker gives up
            stats = fake.stats()
        finally:
            blocker.join()
    assert message.startswith("TIMEOUT: Ollama did not answer in time before replying")
    assert 0.5 <= elapsed < 2.5
    # One attempt, queued behind the blocker: a 503 would have been OLLAMA_UNAVAILABLE.
    assert stats["requests"]["POST /api/chat"] == 2
    assert stats["max_in_flight"] == 1
    assert stats["cancelled"] == 1


def test_unreachable_ollama_and_a_late_start() -> None:
    """A job sent while Ollama is still starting succeeds; one it never answers is coded."""
    port = free_port()
    env = {"OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_RETRY_DEADLINE_S": "8"}
    with WorkerProcess(env) as early:
        # Ollama comes up 1.5 s after the job arrives, in its own process, as in a real boot.
        late = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "standins.ollama",
                "--port",
                str(port),
                "--start-delay",
                "1.5",
            ],
            cwd=ROOT,
        )
        try:
            [item] = early.output({"prompt": "are you up?"})
            assert item["message"]["content"] == "You said: are you up?"
        finally:
            late.terminate()
            late.wait(timeout=10)
    env = {"OLLAMA_HOST": f"127.0.0.1:{free_port()}", "OLLAMA_RETRY_DEADLINE_S": "1"}
    with WorkerProcess(env) as lonely:
        message = error_of(lonely.output({"prompt": "anyone?"}))
        assert message.startswith("OLLAMA_UNAVAILABLE: could not reach Ollama within 1 s")


# --- concurrency -------------------------------------------------------------------------


def test_eight_jobs_really_run_at_once(worker: WorkerProcess, fake: FakeOllama) -> None:
    fake.configure(first_token_delay_s=0.5)
    with ThreadPoolExecutor(8) as pool:
        outputs = list(pool.map(lambda i: worker.output({"prompt": f"job {i}"}), range(8)))
    assert [o[0]["message"]["content"] for o in outputs] == [f"You said: job {i}" for i in range(8)]
    assert fake.peak_in_flight() == 8


def test_200_jobs_at_16_way_concurrency_with_injected_503s(
    worker: WorkerProcess, fake: FakeOllama
) -> None:
    fake.configure(fail_rate=0.2, fail_status=503, seed=7, token_delay_s=0.001)
    lock, failures = threading.Lock(), []

    def one(i: int) -> None:
        output = worker.output({"prompt": f"number {i}", "stream": i % 2 == 0})
        text = "".join(o.get("message", {}).get("content", "") for o in output)
        if text != f"You said: number {i}":
            with lock:
                failures.append((i, output))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(200)))
    assert failures == []
    stats = fake.stats()
    assert stats["faults_served"] > 10  # the 503s really happened, and were retried away
    assert len(stats["chat_requests"]) == 100  # the stand-in keeps the last 100 bodies


# --- RunPod's OpenAI route ---------------------------------------------------------------


def openai_job(route: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"openai_route": route, "openai_input": body or {}}


def test_openai_chat_completion(worker: WorkerProcess) -> None:
    body = {"messages": [{"role": "user", "content": "hi there"}], "max_tokens": 20}
    [answer] = worker.output(openai_job("/v1/chat/completions", body))
    completion = ChatCompletion.model_validate(answer)
    assert completion.choices[0].message.content == "You said: hi there"
    assert completion.model == "voice-assistant"


def test_openai_chat_stream_is_sse_text_ending_in_done(worker: WorkerProcess) -> None:
    body = {
        "messages": [{"role": "user", "content": "stream this"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    items = worker.output(openai_job("/v1/chat/completions", body))
    # One item holds one or more whole events.
    assert all(isinstance(e, str) and e.startswith("data: ") and e.endswith("\n\n") for e in items)
    events = [f"{event}\n\n" for event in "".join(items).split("\n\n") if event]
    assert events[-1] == "data: [DONE]\n\n"
    chunks = [ChatCompletionChunk.model_validate_json(e[6:]) for e in events[:-1]]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: stream this"
    assert chunks[-1].usage is not None


def test_openai_stream_cut_off_by_ollama_is_a_failed_job(
    worker: WorkerProcess, fake: FakeOllama
) -> None:
    # Ollama 0.12.10 ends a /v1 stream that failed with an empty chunk and no [DONE].
    fake.configure(fail_next=[{"midstream_error": "CUDA error", "after_tokens": 2}])
    body = {"messages": [{"role": "user", "content": "one two three"}], "stream": True}
    output = worker.output(openai_job("/v1/chat/completions", body))
    message = error_of(output)
    assert message.startswith("OLLAMA_ERROR: Ollama's reply broke off mid-stream")
    events = "".join(output[:-1])
    assert '"model":""' not in events  # the failure chunk is not passed on as content
    assert "[DONE]" not in events
    text = "".join(
        ChatCompletionChunk.model_validate_json(e[6:]).choices[0].delta.content or ""
        for e in events.split("\n\n")
        if e
    )
    assert text == "You said: "


def test_openai_max_completion_tokens_is_honoured(worker: WorkerProcess, fake: FakeOllama) -> None:
    body = {"messages": [{"role": "user", "content": "one two three"}], "max_completion_tokens": 2}
    [answer] = worker.output(openai_job("/v1/chat/completions", body))
    choice = ChatCompletion.model_validate(answer).choices[0]
    assert (choice.message.content, choice.finish_reason) == ("You said: ", "length")
    assert fake.received()[-1]["max_tokens"] == 2


def test_openai_models_completions_and_embeddings(worker: WorkerProcess) -> None:
    [models] = worker.output(openai_job("/v1/models"))
    ids = {Model.model_validate(m).id for m in models["data"]}
    assert ids == {"llama3.1:8b", "voice-assistant:latest"}
    [completion] = worker.output(openai_job("/v1/completions", {"prompt": "complete me"}))
    assert Completion.model_validate(completion).choices[0].text
    [embedding] = worker.output(openai_job("/v1/embeddings", {"input": "embed me"}))
    assert CreateEmbeddingResponse.model_validate(embedding).data[0].embedding


def test_openai_route_errors(worker: WorkerProcess) -> None:
    body = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}
    unknown = openai_job("/v1/chat/completions", body)
    assert error_of(worker.output(unknown)).startswith("MODEL_NOT_FOUND: model 'gpt-5'")
    assert error_of(worker.output(openai_job("/v1/images"))).startswith(
        "INVALID_INPUT: unknown openai_route '/v1/images'"
    )
