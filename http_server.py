"""RunPod load-balancing entry point: `python http_server.py` serves the worker over HTTP.

`ollama_boot.sh` starts it instead of `rp_handler.py` when `WORKER_MODE=http`. A door of its
own rather than a mode of rp_handler.py: it never imports the RunPod SDK (whose job loop and
command-line flags it does not use, and whose import costs ~1.5 s of the cold start), and it
must answer the health check at once, while Ollama is still starting, where the queue worker
waits for Ollama before it takes jobs. The routes and their logic are in
`ollama_worker/http_mode.py`.
"""

from __future__ import annotations

import argparse
import sys

from ollama_worker.config import ConfigError, get_settings
from ollama_worker.log_setup import configure_logging


def main(argv: list[str] | None = None) -> None:
    """Check the settings, then serve until SIGTERM."""
    parser = argparse.ArgumentParser(prog="http_server.py", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--ready-file",
        help="answer the health check 200 only once this file exists (ollama_boot.sh creates "
        "it when its preload is done)",
    )
    args = parser.parse_args(argv)
    try:
        configure_logging()
        settings = get_settings()
    except ConfigError as exc:
        sys.exit(f"http_server: bad configuration: {exc}")
    # FastAPI and uvicorn (~0.5 s), imported only when the server really starts.
    from ollama_worker.http_mode import serve

    try:
        serve(settings, ready_file=args.ready_file)
    except OSError as exc:  # e.g. the port is taken
        sys.exit(f"http_server: cannot listen on port {settings.http_port}: {exc}")


if __name__ == "__main__":
    main()
