"""The life cycle the stand-in servers share: an aiohttp app on a daemon thread of its own.

A test starts a stand-in, talks to it over loopback from its own thread, and stops it; the
stand-in's `serve(stop, on_ready)` binds, serves until `stop` is set, then closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

from aiohttp import web


class ThreadedServer:
    """start() / stop() / `with` for a server run on a daemon thread and event loop."""

    thread_name = "stand-in"
    host: str
    port: int

    def _init_thread_state(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._loop_ready = threading.Event()
        self._start_error: BaseException | None = None
        self.bound_port: int | None = None

    async def serve(self, stop: asyncio.Event, on_ready: Callable[[], None]) -> None:
        """Bind, call `on_ready` once listening, serve until `stop` is set."""
        raise NotImplementedError

    def start_timeout_s(self) -> float:
        """How long start() waits for the server to listen."""
        return 10.0

    def start(self, wait: bool = True) -> Self:
        """Serve from a daemon thread; by default return once listening."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._ready.clear()
        self._loop_ready.clear()
        self._start_error = None
        self.bound_port = None
        self._thread = threading.Thread(
            target=self._thread_main, name=self.thread_name, daemon=True
        )
        self._thread.start()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the port is bound; raise if serving failed."""
        if not self._ready.wait(self.start_timeout_s() if timeout is None else timeout):
            raise TimeoutError(f"{self.thread_name} did not start listening")
        if self._start_error is not None or self.bound_port is None:
            raise RuntimeError(f"{self.thread_name} failed to start") from self._start_error

    def stop(self) -> None:
        """Stop serving (open connections are cut) and join the thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._loop_ready.wait(5)
        if self._loop is not None and self._stop_event is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop_event.set)
        thread.join(10)

    def __enter__(self) -> Self:
        """Start on entering a ``with`` block."""
        return self.start() if self._thread is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop on leaving the block."""
        self.stop()

    def _serving(self, stop: asyncio.Event) -> None:
        """Note the loop and stop event that stop() reaches from another thread."""
        self._loop = asyncio.get_running_loop()
        self._stop_event = stop
        self._loop_ready.set()

    def _bind(self, family: socket.AddressFamily = socket.AF_INET) -> socket.socket:
        """A socket bound to (host, port); `bound_port` says which port it got."""
        sock = socket.socket(family)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host or "0.0.0.0", self.port))
        except OSError:
            sock.close()
            raise
        self.bound_port = sock.getsockname()[1]
        return sock

    async def _run_app(
        self,
        app: web.Application,
        sock: socket.socket,
        stop: asyncio.Event,
        on_ready: Callable[[], None],
    ) -> None:
        """Serve `app` on `sock` until `stop` is set; a handler is cancelled with its client."""
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=0.1,
        )
        await runner.setup()
        await web.SockSite(runner, sock).start()
        on_ready()
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    def _thread_main(self) -> None:
        """Body of the daemon thread used by start()."""

        async def main() -> None:
            try:
                await self.serve(asyncio.Event(), on_ready=self._ready.set)
            except OSError as exc:  # e.g. the port is taken
                self._start_error = exc
            finally:
                self._ready.set()

        asyncio.run(main())
