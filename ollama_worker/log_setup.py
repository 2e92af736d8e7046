"""One log level for the worker, RunPod's SDK and httpx, so that INFO carries no conversation.

RunPod's SDK logs at DEBUG unless told otherwise, and at DEBUG prints every yielded item in
full; httpx logs a line per request at INFO. Both follow `LOG_LEVEL` here: at INFO and above
the log holds job ids, kinds, counts and times, never message text, replies or secrets.
"""

from __future__ import annotations

import json
import logging
import os
import re

from ollama_worker.config import declared

# A caller's value that may go into a log line as it is; anything else is JSON-quoted.
PLAIN = re.compile(r"[\w.:+/-]+")
LOGGED_LIMIT = 64

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


def loggable(value: object, limit: int = LOGGED_LIMIT) -> str:
    """A caller's value as it may appear in a log line: plain tokens as they are, anything
    else cut to `limit` characters and ASCII JSON-quoted, so that no newline, control
    character or surrogate can start a fake line or break the log's encoding."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit and PLAIN.fullmatch(text):
        return text
    return json.dumps(text[:limit] + ("..." if len(text) > limit else ""))
