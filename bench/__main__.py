"""`python -m bench [--quick] [--out DIR]`: measure what users of the worker feel, publish it.

Exit status: 0 when every measurement ran (in full mode: and met its target), 1 when a full
run missed a target, 2 when a measurement itself broke.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import (
    cold_start,
    concurrency,
    deployed,
    deployed_cold_start,
    http_mode,
    memory,
    model_cache,
    overhead,
    real,
    report,
    ttft,
)
from bench.common import Figure, StandIn, progress, worker_env
from tests.harness import WorkerProcess

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Sizes:
    """How much of each measurement to run."""

    boots: int
    imports: int
    overhead_requests: int
    overhead_warmup: int
    level_s: float
    level_warmup_s: float
    streams: int
    stream_warmup: int
    memory_jobs: int
    memory_warmup: int
    deployed: deployed.Sizes
    http_mode: http_mode.Sizes
    real: real.Sizes
    # Rounds of (a later HF_MODEL boot, the baked model) with the real Ollama; 0 skips them.
    model_cache_boots: int


FULL = Sizes(
    3, 5, 200, 10, 6.0, 1.0, 100, 5, 1000, 100, deployed.FULL, http_mode.FULL, real.FULL, 3
)
QUICK = Sizes(1, 1, 4, 1, 0.1, 0.0, 2, 1, 120, 20, deployed.QUICK, http_mode.QUICK, real.QUICK, 0)
# The groups `--only` selects: the stand-in's measurements (with the model cache's boots), and
# the real Ollama's streams and cold starts (keys real.*).
GROUPS = ("stand-in", "real")


def group_of(key: str) -> str:
    """The group a figure's key belongs to."""
    return "real" if key.startswith("real.") else "stand-in"


def run(sizes: Sizes, groups: tuple[str, ...] = GROUPS) -> tuple[list[Figure], dict[str, Any]]:
    """Every measurement of `groups`, in an order that keeps each one's machine quiet.

    The deployed worker's figures come first in the results, the local API's after them,
    the real Ollama's last.
    """
    figures: list[Figure] = []
    deployed_figures: list[Figure] = []
    real_figures: list[Figure] = []
    details: dict[str, Any] = {}

    def keep(
        name: str, result: tuple[dict[str, Any], list[Figure]], into: list[Figure] = figures
    ) -> None:
        details[name] = result[0]
        into.extend(result[1])

    if "stand-in" in groups:
        run_stand_in(sizes, keep, details, deployed_figures)
    if "real" in groups:
        reason = real.unavailable()
        if reason:
            progress(f"real-Ollama rows skipped: {reason}")
        else:
            keep("real", real.measure(sizes.real), real_figures)
    return deployed_figures + figures + real_figures, details


def run_stand_in(
    sizes: Sizes, keep: Callable[..., None], details: dict[str, Any], deployed_figures: list[Figure]
) -> None:
    """The measurements against the stand-in Ollama; `keep(name, result[, into])` files each
    into `details` and the figures."""
    progress("cold start (ollama_boot.sh with the stand-in ollama)")
    keep("cold_start", cold_start.measure(boots=sizes.boots, imports=sizes.imports))
    if sizes.model_cache_boots:
        progress("model cache cold start (ollama_boot.sh, the real Ollama and Gemma GGUF)")
        keep("model_cache", model_cache.measure(boots=sizes.model_cache_boots))
    else:
        progress("model cache cold start: skipped in quick mode (the real Ollama's boots)")
    progress("deployed cold start (ollama_boot.sh, production loop, stand-in job API)")
    keep(
        "deployed_cold_start",
        deployed_cold_start.measure(
            boots=sizes.deployed.boots,
            import_s=details["cold_start"]["import_s"],
            parallel=sizes is QUICK,
        ),
        deployed_figures,
    )
    stand_in = StandIn()
    try:
        progress("deployed: our worker and the per-chunk reference, production loop")
        keep("deployed", deployed.measure(stand_in.wait_ready(), sizes.deployed), deployed_figures)
        progress("http mode (a load-balancing endpoint) beside the queue worker and Ollama")
        keep("http_mode", http_mode.measure(stand_in, sizes.http_mode), deployed_figures)
        progress("starting our worker and the minimal reference handler under the local API")
        env = worker_env(stand_in)
        ours = WorkerProcess(env)
        reference = WorkerProcess(env, script=str(HERE / "reference_handler.py"))
        failed = True
        try:
            with ThreadPoolExecutor(2) as pool:
                for started in [pool.submit(ours.start), pool.submit(reference.start)]:
                    started.result()
            stand_in.wait_ready()
            progress(f"memory ({sizes.memory_jobs} jobs, {memory.STREAMS} streams)")
            keep(
                "memory",
                memory.measure(
                    stand_in, ours, jobs=sizes.memory_jobs, warmup_jobs=sizes.memory_warmup
                ),
            )
            progress(f"overhead ({sizes.overhead_requests} sequential jobs per path)")
            keep(
                "overhead",
                overhead.measure(
                    stand_in,
                    ours,
                    reference,
                    requests=sizes.overhead_requests,
                    warmup=sizes.overhead_warmup,
                ),
            )
            progress(f"concurrency ({sizes.level_s:g} s per level)")
            keep(
                "concurrency",
                concurrency.measure(
                    stand_in,
                    ours,
                    reference,
                    duration_s=sizes.level_s,
                    warmup_s=sizes.level_warmup_s,
                ),
            )
            failed = False
        finally:
            if failed:
                progress(f"worker logs kept: {ours.log_path} {reference.log_path}")
            ours.stop(keep_log=failed)
            reference.stop(keep_log=failed)
        progress(f"time to first token ({sizes.streams} streams, handler in-process)")
        keep("ttft", ttft.measure(stand_in, streams=sizes.streams, warmup=sizes.stream_warmup))
    finally:
        stand_in.stop()


def print_table(figures: list[Figure]) -> None:
    """The figures as a Markdown table on stdout."""
    print("| figure | value | target | |\n|---|---:|---|---|")
    for figure in figures:
        verdict = {True: "pass", False: "**MISS**", None: ""}[figure.passed]
        print(f"| {figure.label} | {figure.value:g} {figure.unit} | {figure.target} | {verdict} |")


def main(argv: list[str] | None = None) -> int:
    """Run the bench and write results.json and chart.png."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, for CI (~30 s)")
    parser.add_argument("--out", type=Path, default=HERE, help="where to write the results")
    parser.add_argument(
        "--only",
        choices=GROUPS,
        help="run one group and merge its figures into the results already in --out, "
        "keeping the other group's (the machine is shared: rerun only what changed)",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    mode = "quick" if args.quick else "full"
    load_before = os.getloadavg()
    path = args.out / "results.json"
    try:
        figures, details = run(QUICK if args.quick else FULL, (args.only,) if args.only else GROUPS)
        args.out.mkdir(parents=True, exist_ok=True)
        seconds = time.monotonic() - started
        # Other work on the machine shows up in the timings; keep the evidence with them.
        if args.only != "real":
            details["load_average_1m"] = {"before": load_before[0], "after": os.getloadavg()[0]}
        date = None
        if args.only:
            figures, details, seconds, date = report.merge_group(
                path, mode, figures, details, seconds, lambda key: group_of(key) == args.only
            )
        results = report.write_results(path, mode, figures, details, seconds, date)
        report.write_chart(args.out / "chart.png", details)
    except Exception:
        traceback.print_exc()
        progress("FAILED: a measurement broke (see above)")
        return 2
    print_table(figures)
    progress(f"{mode} bench done in {seconds:.1f} s; wrote {args.out}/results.json, chart.png")
    return 0 if args.quick or results["all_targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
