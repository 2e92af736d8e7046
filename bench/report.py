"""Publish the figures: results.json (machine, versions, every figure against its target)
and chart.png (the deployed worker's stream delivery and cold start, throughput against
concurrency, and where a request's time goes)."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ollama_worker
from bench.common import BenchError, Figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def machine() -> dict[str, Any]:
    """CPU model, cores, memory and OS of this machine."""
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="utf-8") as info:
        mem_kb = int(next(line for line in info if line.startswith("MemTotal")).split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024**2, 1),
        "os": platform.platform(),
    }


def versions() -> dict[str, str]:
    """Python, the libraries on the request path, and the worker."""
    found = {"python": sys.version.split()[0], "worker": ollama_worker.__version__}
    for name in ("runpod", "httpx", "ollama", "pydantic"):
        found[name] = importlib.metadata.version(name)
    return found


def now() -> str:
    """The date and time in UTC, as results.json stores it."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def write_results(
    path: Path,
    mode: str,
    figures: list[Figure],
    details: dict[str, Any],
    seconds: float,
    date: str | None = None,
) -> dict[str, Any]:
    """Write results.json and return what was written (`date`: of the run, default now)."""
    judged = [figure for figure in figures if figure.passed is not None]
    results = {
        "mode": mode,
        "date": date or now(),
        "bench_seconds": round(seconds, 1),
        "machine": machine(),
        "versions": versions(),
        "all_targets_met": all(figure.passed for figure in judged),
        "figures": [figure.as_dict() for figure in figures],
        "details": details,
    }
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


def merge_group(
    path: Path,
    mode: str,
    figures: list[Figure],
    details: dict[str, Any],
    seconds: float,
    in_group: Callable[[str], bool],
) -> tuple[list[Figure], dict[str, Any], float, str | None]:
    """One group's figures and details, measured now, over an earlier run's at `path`: the
    earlier run's figures outside the group (`in_group(key)` false) are kept as they were,
    and so are its date and duration (each group's details keep their own)."""
    if not path.is_file():
        return figures, details, seconds, None
    earlier = json.loads(path.read_text(encoding="utf-8"))
    if earlier["mode"] != mode:
        raise BenchError(
            f"{path} holds a {earlier['mode']} run: merge a {mode} run only into one of its kind"
        )
    kept = [Figure(**row) for row in earlier["figures"] if not in_group(row["key"])]
    merged = {**earlier["details"], **details}
    return kept + figures, merged, float(earlier["bench_seconds"]), str(earlier["date"])


def _throughput(ax: Axes, concurrency: dict[str, Any]) -> None:
    levels = concurrency["levels"]
    jobs = [row["concurrency"] for row in levels]
    ideal = [row["ideal_jobs_per_s"] for row in levels]
    ax.plot(jobs, ideal, "--", color="grey", label="ideal: min(n, 8) / 200 ms")
    for key, label, style in (
        ("stand_in", "stand-in alone", ":s"),
        ("reference", "minimal handler", "-^"),
        ("ours", "our worker", "-o"),
    ):
        rates = [row[key]["jobs_per_s"] for row in levels]
        ours = key == "ours"
        ax.plot(jobs, rates, style, label=label, lw=3 if ours else 1.3, ms=7 if ours else 5)
    for x, row in zip(jobs, levels, strict=True):
        ax.annotate(
            f"{row['ours']['jobs_per_s']:.1f}",
            (x, row["ours"]["jobs_per_s"]),
            textcoords="offset points",
            xytext=(6, -18),
            ha="left",
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(jobs, [str(j) for j in jobs])
    ax.set_ylim(0, max(ideal) * 1.15)
    ax.set(
        xlabel="concurrent jobs", ylabel="jobs / s", title="Throughput (200 ms replies, 8 slots)"
    )
    ax.legend(loc="upper left", fontsize=10)
    ax.grid(alpha=0.3)


def _steps(ax: Axes, steps: list[tuple[str, float, str]]) -> None:
    """Horizontal bars of (label, seconds, colour), each labelled with its value."""
    bars = ax.barh(
        [label for label, _, _ in steps],
        [value for _, value, _ in steps],
        color=[colour for _, _, colour in steps],
    )
    ax.bar_label(bars, fmt="%.2f s", padding=3, fontsize=10)


def _paired_bars(
    ax: Axes, labels: list[str], medians: list[float], p95s: list[float], fmt: str
) -> None:
    width = 0.38
    for offset, (name, values, colour) in enumerate(
        (("median", medians, "tab:blue"), ("p95", p95s, "tab:orange"))
    ):
        xs = [i + (offset - 0.5) * width for i in range(len(labels))]
        ax.bar_label(ax.bar(xs, values, width, label=name, color=colour), fmt=fmt, fontsize=10)
    ax.set_xticks(range(len(labels)), labels)


def _latency(ax: Axes, overhead: dict[str, Any]) -> None:
    latency = overhead["latency"]
    keys = {"stand_in": "stand-in\nalone", "reference": "minimal\nhandler", "ours": "our\nworker"}
    _paired_bars(
        ax,
        list(keys.values()),
        [latency[k]["median_ms"] for k in keys],
        [latency[k]["p95_ms"] for k in keys],
        "%.1f",
    )
    base = latency["stand_in"]["median_ms"]
    for i, key in enumerate(list(keys)[1:], start=1):
        extra = latency[key]["median_ms"] - base
        ax.text(i, base / 2, f"+{extra:.1f} ms", ha="center", color="white", fontweight="bold")
    ax.set_ylim(0, max(latency[k]["p95_ms"] for k in keys) * 1.3)
    ax.set(ylabel="ms per job", title="Sequential non-stream chat, per job")
    ax.legend(loc="upper left", ncols=2, fontsize=10)


def _first_token(ax: Axes, ttft: dict[str, Any]) -> None:
    keys = {"httpx": "bare httpx\nclient", "handler": "our handler\n(in-process)"}
    medians = [ttft[k]["first"]["median_ms"] for k in keys]
    p95s = [ttft[k]["first"]["p95_ms"] for k in keys]
    _paired_bars(ax, list(keys.values()), medians, p95s, "%.2f")
    ax.axhline(5.0, ls="--", color="red", lw=1.2, label="target: 5 ms")
    ax.set_ylim(0, max(7.0, *(value * 1.3 for value in p95s)))
    ax.set(ylabel="ms after the stand-in wrote it", title="First streamed token: delay to yield")
    ax.legend(loc="upper left", ncols=3, fontsize=10)


def _cold_start(ax: Axes, cold: dict[str, Any]) -> None:
    runs = cold["runs"]

    def median(key: str) -> float:
        return sorted(run[key] for run in runs)[len(runs) // 2]

    first = median("first_answer_s")
    steps = [
        ("handler import\n(alone)", cold["import_s"], "tab:grey"),
        ("stand-in Ollama\nlistening", median("ollama_listening_s"), "tab:purple"),
        ("worker API\nlistening", median("api_listening_s"), "tab:blue"),
        ("first job\nanswered", first, "tab:green"),
    ]
    _steps(ax, steps)
    target = max(3.0, cold["import_s"]) + 0.5
    ax.axvline(target, ls="--", color="red", lw=1.2, label=f"target: {target:.2f} s")
    ax.legend(loc="upper right", fontsize=10)
    ax.invert_yaxis()
    ax.set_xlim(0, max(value for _, value, _ in steps) * 1.25)
    ax.set(
        xlabel="seconds from launching ollama_boot.sh",
        title="Cold start (stand-in: 1.5 s start + 1.5 s load)",
    )


def _deployed_stream(ax: Axes, deployed: dict[str, Any]) -> None:
    stream = deployed["stream"]
    rtts = [rtt * 1000 for rtt in deployed["rtts_s"]]
    paths = (("reference", "per-chunk reference", "-^"), ("ours", "our worker", "-o"))
    for key, label, style in paths:
        ratios = [stream[f"rtt_{rtt:g}ms"][key]["median_ratio"] for rtt in rtts]
        posts = [stream[f"rtt_{rtt:g}ms"][key]["median_posts"] for rtt in rtts]
        ours = key == "ours"
        ax.plot(rtts, ratios, style, label=label, lw=3 if ours else 1.3, ms=7 if ours else 5)
        for x, ratio, count in zip(rtts, ratios, posts, strict=True):
            ax.annotate(
                f"{ratio:.2f}x, {count:g} POSTs",
                (x, ratio),
                textcoords="offset points",
                xytext=(0, 8 if ours else -16),
                ha="center",
                fontsize=9,
            )
    ax.axhline(1.15, ls="--", color="red", lw=1.2, label="target: 1.15")
    ax.set_yscale("log")
    ax.set_xticks(rtts, [f"{rtt:g}" for rtt in rtts])
    ax.set_xlim(min(rtts) - 8, max(rtts) + 8)
    ax.set(
        xlabel="round trip to RunPod's job API (ms)",
        ylabel="last item at RunPod / generation time",
        title=f"Deployed: a {stream['tokens']}-token stream (5 ms per token)",
    )
    ax.legend(loc="upper left", fontsize=10)
    ax.grid(alpha=0.3)


def _deployed_cold_start(ax: Axes, cold: dict[str, Any]) -> None:
    first = cold["median_first_job_done_s"]
    steps = [
        ("our worker", first["ours"], "tab:green"),
        (f"ours + {cold['check_s']:g} s\nfitness check", first["ours_with_checks"], "tab:olive"),
        ("reference: Ollama,\nwait, then handler", first["reference"], "tab:grey"),
    ]
    _steps(ax, steps)
    ax.axvline(3.0, ls=":", color="purple", lw=1.2, label="Ollama start + load: 3.0 s")
    ax.legend(loc="lower right", fontsize=10)
    ax.invert_yaxis()
    ax.set_xlim(0, max(value for _, value, _ in steps) * 1.25)
    ax.set(
        xlabel="seconds from launch to the first job done",
        title="Deployed cold start (production job loop)",
    )


def _real_stream(ax: Axes, real: dict[str, Any]) -> None:
    streams = real["streams"]
    paths = {"direct": "straight from\nOllama (httpx)", "worker": "deployed worker,\nat RunPod"}
    _paired_bars(
        ax,
        list(paths.values()),
        [streams[key]["ttft"]["median_ms"] for key in paths],
        [streams[key]["ttft"]["p95_ms"] for key in paths],
        "%.0f",
    )
    for i, key in enumerate(paths):
        row = streams[key]
        ax.text(
            i,
            row["ttft"]["median_ms"] / 2,
            f"{row['median_tokens_per_s']:.0f} tok/s\nratio {row['median_ratio']:.2f}",
            ha="center",
            color="white",
            fontweight="bold",
            fontsize=10,
        )
    ax.set_ylim(0, max(streams[key]["ttft"]["p95_ms"] for key in paths) * 1.3)
    ax.set(
        ylabel="ms to the first token",
        title=f"Real Ollama {real['ollama_version']}, CPU, 270M: "
        f"{streams['job']['max_tokens']}-token stream",
    )
    ax.legend(loc="upper left", ncols=2, fontsize=10)


def _real_cold_start(ax: Axes, real: dict[str, Any]) -> None:
    cold = real["cold_start"]
    steps = [
        ("ollama_boot.sh to\nthe first job done", cold["median_first_job_done_s"], "tab:green"),
        ("bare ollama serve\nto the same answer", cold["median_reference_s"], "tab:grey"),
    ]
    _steps(ax, steps)
    ax.invert_yaxis()
    ax.set_xlim(0, max(value for _, value, _ in steps) * 1.3)
    ax.set(xlabel="seconds from launch", title="Real cold start (CPU, a real model load)")


def write_chart(path: Path, details: dict[str, Any]) -> None:
    """The deployed worker's stream delivery and cold start on top, when measured; then
    jobs/s against concurrency, latency per path, first-token delay and cold start under
    the local API; then the real Ollama's stream and cold start, when measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    deployed = "deployed" in details and "deployed_cold_start" in details
    local = "concurrency" in details
    real = "real" in details
    panels = [deployed, local, local, real]
    rows = sum(panels)
    if not rows:
        return
    with plt.rc_context({"font.size": 12, "axes.titlesize": 13, "axes.titleweight": "bold"}):
        fig, axes = plt.subplots(rows, 2, figsize=(12, 4.5 * rows), squeeze=False)
        row = iter(axes)
        if deployed:
            top = next(row)
            _deployed_stream(top[0], details["deployed"])
            _deployed_cold_start(top[1], details["deployed_cold_start"])
        if local:
            first, second = next(row), next(row)
            _throughput(first[0], details["concurrency"])
            _latency(first[1], details["overhead"])
            _first_token(second[0], details["ttft"])
            _cold_start(second[1], details["cold_start"])
        if real:
            last = next(row)
            _real_stream(last[0], details["real"])
            _real_cold_start(last[1], details["real"])
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
