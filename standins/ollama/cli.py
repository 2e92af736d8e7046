"""The stand-in ``ollama`` CLI (``tests/bin/ollama``), backed by ``standins.ollama.server``.

Subcommands: ``serve`` (the fake server on OLLAMA_HOST, models persisted in
``$OLLAMA_MODELS/fake-ollama-models.json``), ``pull MODEL``, ``create NAME -f
Modelfile``, ``list`` and ``--version``; clients talk to OLLAMA_HOST like the
real CLI. Each invocation is appended to ``$FAKE_OLLAMA_CALL_LOG`` when set.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from standins.ollama.host import connect_host, parse_ollama_host

CLIENT_VERSION = "0.12.10"
CONNECT_ERROR = "could not connect to ollama app, is it running?"
INT_PARAMS = frozenset(
    {
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "num_thread",
        "num_keep",
        "seed",
        "num_predict",
        "top_k",
        "repeat_last_n",
        "mirostat",
    }
)
FLOAT_PARAMS = frozenset(
    {
        "temperature",
        "top_p",
        "min_p",
        "typical_p",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
        "mirostat_tau",
        "mirostat_eta",
        "tfs_z",
    }
)
BOOL_PARAMS = frozenset({"numa", "low_vram", "use_mmap", "use_mlock", "penalize_newline"})
LIST_PARAMS = frozenset({"stop"})
MODELFILE_COMMANDS = ("from", "license", "template", "system", "adapter", "parameter", "message")


class CliError(Exception):
    """A failure printed as ``Error: <message>`` with exit status 1."""


def record_call(argv: list[str]) -> None:
    """Append this invocation to $FAKE_OLLAMA_CALL_LOG (for tests to assert on)."""
    path = os.environ.get("FAKE_OLLAMA_CALL_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(shlex.join(["ollama", *argv]) + "\n")


# ---------------------------------------------------------------------------
# HTTP client


def request(
    method: str, path: str, body: Any = None, timeout: float = 600
) -> http.client.HTTPResponse:
    """Send one request to the server at OLLAMA_HOST."""
    host, port = parse_ollama_host(os.environ.get("OLLAMA_HOST"))
    conn = http.client.HTTPConnection(connect_host(host), port, timeout=timeout)
    payload = None if body is None else json.dumps(body)
    try:
        conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        return conn.getresponse()
    except OSError:
        raise CliError(CONNECT_ERROR) from None


def _error_text(raw: bytes) -> str:
    """The ``error`` of a JSON error body, else the raw text."""
    text = raw.decode(errors="replace").strip()
    try:
        return str(json.loads(text).get("error", text))
    except (ValueError, AttributeError):
        return text


def stream_lines(method: str, path: str, body: Any) -> Iterator[dict[str, Any]]:
    """POST a streaming request and yield its NDJSON objects; errors raise."""
    response = request(method, path, body)
    if response.status >= 400:
        raise CliError(_error_text(response.read()))
    for raw in response:
        if not raw.strip():
            continue
        part = json.loads(raw)
        if part.get("error"):
            raise CliError(str(part["error"]))
        yield part


def human_bytes(size: int) -> str:
    """Size like Ollama's format.HumanBytes (decimal units)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            value = size / scale
            if value >= 10 or value == int(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{size} B"


def human_time(seconds: float) -> str:
    """Age like Ollama's format.HumanTime."""
    steps = (
        (1, "Less than a second ago", None),
        (60, None, ("second", 1)),
        (120, "About a minute ago", None),
        (3600, None, ("minute", 60)),
        (7200, "About an hour ago", None),
        (86400, None, ("hour", 3600)),
    )
    for limit, fixed, unit in steps:
        if seconds < limit:
            if fixed:
                return fixed
            name, scale = unit or ("", 1)
            count = int(seconds // scale)
            return f"{count} {name}{'s' if count != 1 else ''} ago"
    days = int(seconds // 86400)
    return f"{days} day{'s' if days != 1 else ''} ago"


def print_progress(part: dict[str, Any]) -> None:
    """One progress line on stderr, as the real CLI shows progress there."""
    status = str(part.get("status", ""))
    total, completed = part.get("total"), part.get("completed")
    if total and completed is not None:
        percent = int(100 * completed / total)
        status = f"{status}: {percent}% {human_bytes(int(total))}"
    print(status, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Modelfile


def _unquote(value: str, lines: list[str], index: int) -> tuple[str, int]:
    """Read a possibly quoted value; ``\"\"\"`` may span lines. Returns (value, next)."""
    if value.startswith('"""'):
        text = value[3:]
        while '"""' not in text:
            if index >= len(lines):
                raise CliError('unterminated multiline string: missing closing """')
            text += "\n" + lines[index]
            index += 1
        return text[: text.index('"""')], index
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"'), index
    return value, index


def parse_modelfile(text: str) -> list[tuple[str, str, str]]:
    """Split a Modelfile into (command, name, value) like ollama's parser."""
    lines = text.splitlines()
    commands: list[tuple[str, str, str]] = []
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        index += 1
        if not line or line.startswith("#"):
            continue
        match = re.match(r"(\S+)\s*(.*)", line)
        command, rest = (match.group(1).lower(), match.group(2)) if match else ("", "")
        if command not in MODELFILE_COMMANDS:
            raise CliError(
                'command must be one of "from", "license", "template", "system", '
                '"adapter", "parameter", or "message"'
            )
        name = ""
        if command in ("parameter", "message"):
            name, _, rest = rest.partition(" ")
        value, index = _unquote(rest.strip(), lines, index)
        commands.append((command, name, value))
    return commands


def _param_value(key: str, value: str) -> Any:
    """Convert a PARAMETER value to its api.Options type."""
    try:
        if key in INT_PARAMS:
            return int(value)
        if key in FLOAT_PARAMS:
            return float(value)
    except ValueError:
        raise CliError(f"invalid value for parameter {key}: {value!r}") from None
    if key in BOOL_PARAMS:
        return value.lower() in ("true", "1")
    if key in LIST_PARAMS:
        return value
    raise CliError(f"unknown parameter '{key}'")


def create_request(name: str, modelfile: str) -> dict[str, Any]:
    """Build the /api/create body the real CLI sends for a Modelfile."""
    body: dict[str, Any] = {"model": name}
    parameters: dict[str, Any] = {}
    for command, key, value in parse_modelfile(modelfile):
        if command == "from":
            if value.startswith((".", "/", "~")) or value.endswith(".gguf"):
                raise CliError("FROM a local file is not supported by the fake ollama")
            body["from"] = value
        elif command == "parameter":
            converted = _param_value(key, value)
            if key in LIST_PARAMS:
                parameters.setdefault(key, []).append(converted)
            else:
                parameters[key] = converted
        elif command == "message":
            body.setdefault("messages", []).append({"role": key, "content": value})
        elif command == "adapter":
            raise CliError("ADAPTER is not supported by the fake ollama")
        else:
            body[command] = value
    if "from" not in body:
        raise CliError("no FROM line")
    if parameters:
        body["parameters"] = parameters
    return body


# ---------------------------------------------------------------------------
# subcommands


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the fake server until SIGTERM/SIGINT, persisting pulled models."""
    from standins.ollama.faults import config_from_env  # here: client commands need no aiohttp
    from standins.ollama.models import STATE_FILE_NAME
    from standins.ollama.server import run_process

    models_dir = Path(os.environ.get("OLLAMA_MODELS") or "~/.ollama/models").expanduser()
    models_dir.mkdir(parents=True, exist_ok=True)
    host, port = parse_ollama_host(os.environ.get("OLLAMA_HOST"))
    changes: dict[str, Any] = {
        "models": [],
        "state_file": str(models_dir / STATE_FILE_NAME),
    }
    changes.update(config_from_env(os.environ))
    return int(run_process(host, port, changes))


def cmd_pull(args: argparse.Namespace) -> int:
    """Pull a model, printing progress to stderr."""
    for part in stream_lines("POST", "/api/pull", {"model": args.model, "stream": True}):
        print_progress(part)
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    """Create a model from a Modelfile (parsed client-side, like the real CLI)."""
    path = Path(args.file)
    try:
        modelfile = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"open {path}: {exc.strerror or exc}") from None
    body = create_request(args.model, modelfile)
    body["stream"] = True
    print("gathering model components", file=sys.stderr, flush=True)
    for part in stream_lines("POST", "/api/create", body):
        print_progress(part)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Print installed models as the real ``NAME ID SIZE MODIFIED`` table."""
    response = request("GET", "/api/tags")
    raw = response.read()
    if response.status >= 400:
        raise CliError(_error_text(raw))
    rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
    now = time.time()
    for model in json.loads(raw).get("models", []):
        try:
            modified = datetime.fromisoformat(str(model.get("modified_at"))).timestamp()
        except ValueError:
            modified = now
        rows.append(
            [
                model.get("name", ""),
                str(model.get("digest", ""))[:12],
                human_bytes(int(model.get("size", 0))),
                human_time(max(0.0, now - modified)),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("    ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


def cmd_version() -> int:
    """Print the server's version (and the client's when they differ)."""
    server_version = ""
    try:
        response = request("GET", "/api/version", timeout=5)
        if response.status == 200:
            server_version = str(json.loads(response.read()).get("version", ""))
    except (CliError, ValueError):
        print("Warning: could not connect to a running Ollama instance")
    if server_version:
        print(f"ollama version is {server_version}")
    if server_version != CLIENT_VERSION:
        print(f"Warning: client version is {CLIENT_VERSION}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    parser = argparse.ArgumentParser(prog="ollama", description="Fake ollama CLI for tests")
    parser.add_argument("-v", "--version", action="store_true", help="show version")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="start the fake server").set_defaults(run=cmd_serve)
    pull = commands.add_parser("pull", help="pull a model")
    pull.add_argument("model")
    pull.add_argument("--insecure", action="store_true")
    pull.set_defaults(run=cmd_pull)
    create = commands.add_parser("create", help="create a model from a Modelfile")
    create.add_argument("model")
    create.add_argument("-f", "--file", default="Modelfile")
    create.add_argument("-q", "--quantize")
    create.set_defaults(run=cmd_create)
    commands.add_parser("list", aliases=["ls"], help="list models").set_defaults(run=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Dispatch a command line (default sys.argv[1:]); returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    record_call(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.version:
            return cmd_version()
        if not args.command:
            parser.print_help()
            return 0
        return int(args.run(args))
    except CliError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
