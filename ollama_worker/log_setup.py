"""One log level for the worker, RunPod's SDK and httpx, so that INFO carries no conversation.

RunPod's SDK logs at DEBUG unless told otherwise, and at DEBUG prints every yielded item in
full; httpx logs a line per request at INFO. Both follow `LOG_LEVEL` here: at INFO and above
the log holds job ids, kinds, counts and times, never message text, replies or secrets.
"""

from __future__ import annotations

import logging
import os

from ollama_worker.config import declared

# The SDK's own name (rp_logger.LOG_LEVELS) for each of config.LOG_LEVELS.
SDK_LEVELS = {"DEBUG": "DEBUG", "INFO": "INFO", "WARNING": "WARN", "ERROR": "ERROR"}


def configure_logging() -> str:
    """Set up logging from `LOG_LEVEL` before the SDK is imported; return the level's name.

    `RUNPOD_LOG_LEVEL`, when set, still rules the SDK's own logger.
    """
    level = str(declared("LOG_LEVEL").read())
    # The SDK reads this once, when runpod.serverless is first imported.
    os.environ.setdefault("RUNPOD_LOG_LEVEL", SDK_LEVELS[level])
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)  # also when something configured handlers first
    if level != "DEBUG":
        # One line per request to Ollama is noise at INFO, and names every route a job used.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    return level
