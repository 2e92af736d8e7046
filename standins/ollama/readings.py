"""What the stand-in Ollama saw, as typed calls over its ``stats()`` snapshot.

One mixin serves the in-process server (``FakeOllama``) and a stand-in in another process
(``RemoteOllama``, over ``/_fake/*``), so a test or the bench reads the same names either way.
"""

from __future__ import annotations

from typing import Any

import httpx


class OllamaReadings:
    """Typed reads of the counters; a subclass supplies ``stats()``."""

    def stats(self) -> dict[str, Any]:
        """A snapshot of every counter (the ``GET /_fake/stats`` body)."""
        raise NotImplementedError

    def request_counts(self) -> dict[str, int]:
        """How many requests each ``"METHOD /path"`` received (``/_fake/*`` not counted)."""
        return dict(self.stats()["requests"])

    def received(self) -> list[Any]:
        """The JSON bodies of the last 100 generation requests, oldest first."""
        return list(self.stats()["chat_requests"])

    def last_received(self) -> Any:
        """The body of the latest generation request (IndexError if none came)."""
        return self.received()[-1]

    def in_flight(self) -> int:
        """Generation requests holding a slot now."""
        return int(self.stats()["in_flight"])

    def peak_in_flight(self) -> int:
        """The most generation requests that held a slot at once since the last reset."""
        return int(self.stats()["max_in_flight"])

    def queued(self) -> int:
        """Generation requests waiting for a slot or a load now."""
        return int(self.stats()["queued"])

    def token_times(self) -> list[list[float]]:
        """For each of the last 100 streams, the ``time.monotonic()`` each chunk was written."""
        return [list(times) for times in self.stats()["stream_token_times"]]

    def last_token_times(self) -> list[float]:
        """The chunk write times of the latest stream (IndexError if none was written)."""
        return self.token_times()[-1]

    def loads(self) -> int:
        """Model loads since the last reset."""
        return int(self.stats()["loads"])

    def faults_served(self) -> int:
        """Injected faults served since the last reset."""
        return int(self.stats()["faults_served"])

    def cancelled(self) -> int:
        """Generations stopped because their client went away."""
        return int(self.stats()["cancelled"])


class RemoteOllama(OllamaReadings):
    """A stand-in Ollama in another process (``python -m standins.ollama``), at ``url``."""

    def __init__(self, url: str, timeout: float = 30) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=timeout)

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change its live config (``POST /_fake/config``); returns the full config."""
        response = self.http.post("/_fake/config", json=changes)
        response.raise_for_status()
        return dict(response.json())

    def stats(self) -> dict[str, Any]:
        response = self.http.get("/_fake/stats")
        response.raise_for_status()
        return dict(response.json())

    def reset_stats(self) -> None:
        """Zero its counters and drop queued faults (``POST /_fake/reset``)."""
        self.http.post("/_fake/reset").raise_for_status()

    def close(self) -> None:
        """Close the HTTP client."""
        self.http.close()
