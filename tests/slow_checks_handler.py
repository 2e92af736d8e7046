"""rp_handler.py with a slow fitness check, standing in for the SDK's GPU checks we must skip.

On a GPU the SDK runs its `gpu_test` binary (0.30-0.39 s on an H200) and `nvidia-smi` before
the first job; tests skip those (RUNPOD_SKIP_GPU_CHECK), so this check takes their place and
prints when it ran, on the system-wide monotonic clock the tests read too.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import runpod

import rp_handler

CHECK_S = float(os.environ.get("SLOW_CHECK_S", "1.0"))


@runpod.serverless.register_fitness_check
def slow_gpu_check() -> None:
    """Take CHECK_S seconds, as the GPU checks would, and say when."""
    print(f"slow check started at {time.monotonic():.6f}", flush=True)
    time.sleep(CHECK_S)
    print(f"slow check ended at {time.monotonic():.6f}", flush=True)


if __name__ == "__main__":
    rp_handler.main()
