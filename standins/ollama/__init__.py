"""The stand-in Ollama, for the tests and the bench.

Start one in-process with ``FakeOllama(**config).start()`` (or ``with FakeOllama() as fake``),
as a process with ``python -m standins.ollama --port N`` (read it with ``RemoteOllama(url)``),
or as the ``ollama`` executable ``tests/bin/ollama`` (``standins.ollama.cli``). Control it with
``configure(**changes)`` (``FakeConfig``'s fields; over HTTP ``POST /_fake/config``) and
``reset_stats()``; read what it received with the typed calls of ``OllamaReadings``:
``request_counts()``, ``received()`` / ``last_received()`` (generation bodies), ``in_flight()``,
``peak_in_flight()``, ``queued()``, ``token_times()`` / ``last_token_times()`` (when each stream
chunk was written), ``loads()``, ``faults_served()``, ``cancelled()``. ``stats()`` is the whole
snapshot those read (the ``GET /_fake/stats`` body).

Names load on first use, so ``standins.ollama.cli``'s client commands never import aiohttp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from standins.ollama.faults import FakeConfig
    from standins.ollama.readings import OllamaReadings, RemoteOllama
    from standins.ollama.server import FakeOllama

_HOMES = {
    "FakeConfig": "standins.ollama.faults",
    "FakeOllama": "standins.ollama.server",
    "OllamaReadings": "standins.ollama.readings",
    "RemoteOllama": "standins.ollama.readings",
}
__all__ = ["FakeConfig", "FakeOllama", "OllamaReadings", "RemoteOllama"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
