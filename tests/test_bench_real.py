"""The pieces the real-Ollama bench rows and `make ollama` stand on, checked without a real
Ollama: the relay that reads Ollama's token times, merging one group into earlier results,
and which built binary counts as provided."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from bench import report
from bench.__main__ import group_of
from bench.common import BenchError, Figure
from bench.real import Relay, job_input, ollama_body
from scripts import real_ollama
from standins.ollama import FakeOllama


def test_the_relay_stamps_each_token_as_it_leaves_ollama(fake: FakeOllama) -> None:
    fake.configure(reply="one two three four", token_delay_s=0.05, first_token_delay_s=0.0)
    relay = Relay(int(fake.host_port.rsplit(":", 1)[1]))
    try:
        with httpx.Client(base_url=relay.url, timeout=30) as client:
            for _ in range(2):  # the same pooled connection carries the second stream
                with client.stream("POST", "/api/chat", json=ollama_body(job_input(8))) as answer:
                    lines = [json.loads(line) for line in answer.iter_lines()]
                first, end = relay.take()
                [written] = fake.token_times()[-1:]
                # The relay stamps a token after the stand-in wrote it and long before the
                # stand-in writes its last, 150 ms later (bounds wide enough for a busy CPU).
                assert written[0] <= first < written[-1]
                assert written[-1] <= end < written[-1] + 1.0
                assert lines[-1]["done"] is True
        with pytest.raises(BenchError, match="0 token lines and 0 ends"):
            relay.take()
    finally:
        relay.close()


def test_the_direct_body_is_the_workers_own_request() -> None:
    body = ollama_body(job_input(32))
    assert body["model"] == "voice-assistant"
    assert body["messages"] == [{"role": "user", "content": "Hi, what can you do?"}]
    assert body["options"] == {"num_predict": 32, "temperature": 0, "seed": 42}
    assert body["stream"] is True


def figure(key: str, value: float) -> Figure:
    return Figure(key, key, value, "x")


def test_merging_one_group_keeps_the_other_groups_figures(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    earlier = [figure("deployed_stream.ratio", 1.0), figure("real.ttft_p50_ms", 500.0)]
    report.write_results(path, "full", earlier, {"deployed": {"a": 1}, "real": {"old": 1}}, 600)
    date = json.loads(path.read_text())["date"]

    def in_real(key: str) -> bool:
        return group_of(key) == "real"

    merged, details, seconds, kept_date = report.merge_group(
        path, "full", [figure("real.ttft_p50_ms", 300.0)], {"real": {"new": 1}}, 60, in_real
    )
    assert [(f.key, f.value) for f in merged] == [
        ("deployed_stream.ratio", 1.0),
        ("real.ttft_p50_ms", 300.0),
    ]
    assert details == {"deployed": {"a": 1}, "real": {"new": 1}}
    assert (seconds, kept_date) == (600, date)
    with pytest.raises(BenchError, match="holds a full run"):
        report.merge_group(path, "quick", [], {}, 1, in_real)
    # Nothing earlier: the group alone.
    alone = report.merge_group(tmp_path / "none.json", "quick", merged, {}, 5, in_real)
    assert alone == (merged, {}, 5, None)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OLLAMA_WORKER_CACHE", str(tmp_path))
    monkeypatch.setenv("OLLAMA_VERSION", "9.9.9")
    monkeypatch.delenv("OLLAMA_BIN", raising=False)
    gguf = real_ollama.gguf_path()
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"GGUF")
    binary = real_ollama.built_binary("9.9.9")
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    os.chmod(binary, 0o755)
    return binary.parent


def test_a_built_binary_counts_once_its_manifest_and_files_are_there(cache: Path) -> None:
    assert real_ollama.locate() is None  # built, but never checked by provide()
    manifest = cache / real_ollama.MANIFEST
    manifest.write_text(json.dumps({"version": "9.9.9", "files": ["lib/ollama/llama-server"]}))
    assert real_ollama.locate() is None  # the llama-server it needs is missing
    (cache / "lib" / "ollama").mkdir(parents=True)
    (cache / "lib" / "ollama" / "llama-server").write_text("")
    found = real_ollama.locate()
    assert found is not None
    assert found.version == "9.9.9"


def test_which_versions_need_llama_server(tmp_path: Path) -> None:
    assert not real_ollama.needs_llama_helpers(tmp_path)
    (tmp_path / "llama" / "server").mkdir(parents=True)
    (tmp_path / "llama" / "server" / "CMakeLists.txt").write_text("")
    assert real_ollama.needs_llama_helpers(tmp_path)
