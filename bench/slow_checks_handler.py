"""rp_handler.py with a 0.4 s fitness check registered first: the deployed cold start with
the SDK's checks on (the GPU checks the bench must skip took 0.30-0.39 s on an H200).

The bench links it as `rp_handler.py` into a WORKER_DIR for ollama_boot.sh, so it finds the
repository from its own real path.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHECK_S = 0.4


def slow_check() -> None:
    """Stands in for the SDK's GPU checks: 0.4 s of waiting."""
    time.sleep(CHECK_S)


if __name__ == "__main__":
    import runpod

    import rp_handler

    runpod.serverless.register_fitness_check(slow_check)
    rp_handler.main()
