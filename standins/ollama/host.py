"""OLLAMA_HOST parsing, stdlib only: the stand-in CLI's client commands start without aiohttp."""

from __future__ import annotations

from urllib.parse import urlsplit

DEFAULT_PORT = 11434


def parse_ollama_host(value: str | None) -> tuple[str, int]:
    """Split OLLAMA_HOST ("0.0.0.0:11434", "http://h:p", ":11434") like Ollama's envconfig.Host."""
    text = (value or "").strip()
    scheme, sep, hostport = text.partition("://")
    default_port = DEFAULT_PORT
    if not sep:
        hostport = text
    elif scheme == "http":
        default_port = 80
    elif scheme == "https":
        default_port = 443
    hostport = hostport.split("/", 1)[0]
    parts = urlsplit("//" + hostport)
    try:
        port = parts.port
    except ValueError:
        return "127.0.0.1", DEFAULT_PORT
    if port is None:
        return parts.hostname or "127.0.0.1", default_port
    return parts.hostname or "", port


def connect_host(host: str) -> str:
    """Map a listen address (empty, 0.0.0.0, ::) to one a client can dial."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
