"""RunPod's production job loop, without its sleeps and with a graceful stop.

runpod 1.12.0's `JobScaler` looks at its job queue every 0.1 s when idle (a job waits up to
100 ms to start), sleeps 1 s whenever every slot is busy (a freed slot stays idle that long),
and on SIGTERM only sets a flag that its open long-polls (90 s each) must notice. Here the
same jobs are taken and run on events instead: a job starts the moment it is taken, a freed
slot asks for the next job at once, and a stop ends the polls at once and gives the jobs in
flight a grace to finish. Everything else is the SDK's own code: `get_job` and
`get_stop_signals` for the long-polls, `handle_job` for running a job and POSTing its items
and result, `JobsProgress` for the job-in-progress flag and the heartbeat.

This leans on the SDK's internals, so it runs only on the exact SDK it was written for
(`SDK_VERSION` and the source fingerprint below); on any other the stock loop runs, with an
error in the log, and the deployed-mode tests fail.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import inspect
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ollama_worker.errors import ErrorCode, WorkerError

log = logging.getLogger(__name__)

SDK_VERSION = "1.12.0"
# sha256 of the SDK sources this module replaces or relies on: rp_scale.py (the JobScaler it
# subclasses), rp_job.py and rp_http.py (the job-take, run and POST code it calls) and
# worker.run_worker (which builds `rp_scale.JobScaler`). Any change to them needs a fresh read.
SDK_FINGERPRINT = "174c67df27bc4f5af3d8c86d1e9aeb66743072eba8325238fb804ff22b6ae9a1"

STOPPED_ERROR = WorkerError(
    ErrorCode.WORKER_STOPPED,
    "the worker was stopped before this job finished (it got WORKER_STOP_GRACE_S to finish); "
    "send the job again",
)


def sdk_fingerprint() -> str:
    """A digest of the SDK code this loop depends on, to notice any change to it."""
    from runpod.serverless import worker
    from runpod.serverless.modules import rp_http, rp_job, rp_scale

    digest = hashlib.sha256()
    for source in (rp_scale, rp_job, rp_http, worker.run_worker):
        digest.update(inspect.getsource(source).encode())
    return digest.hexdigest()


def sdk_supported() -> str | None:
    """Why the installed SDK cannot take this loop, or None when it can."""
    import runpod

    if runpod.__version__ != SDK_VERSION:
        return f"runpod {runpod.__version__} is installed; this loop was written for {SDK_VERSION}"
    if sdk_fingerprint() != SDK_FINGERPRINT:
        return (
            f"runpod {SDK_VERSION}'s job loop sources differ from those this loop was read against"
        )
    return None


def install(
    *,
    ready: concurrent.futures.Future[Any] | None,
    stop_grace_s: float,
    warm_up: Callable[[], Awaitable[object]] | None = None,
) -> bool:
    """Make the SDK's production worker run `EventDrivenJobScaler`; False (logged) if it can't.

    `ready` resolves once Ollama answers: jobs are taken only then, while the SDK's fitness
    checks run meanwhile. With the stock loop, a fitness check waits for it instead.
    `warm_up` runs on the job loop once Ollama is ready, before the first job-take, so that
    the first jobs do not pay for what it builds.
    """
    from runpod.serverless.modules import rp_fitness, rp_scale

    if reason := sdk_supported():
        log.error("job loop: %s; running the SDK's stock loop (slower, no graceful stop)", reason)
        if ready is not None:

            def ollama_ready() -> None:
                ready.result()

            rp_fitness.register_fitness_check(ollama_ready)
        return False
    scaler = _scaler_class()
    scaler.ready = ready
    scaler.stop_grace_s = stop_grace_s
    scaler.warm_up = staticmethod(warm_up) if warm_up else None
    rp_scale.JobScaler = scaler
    log.info("job loop: event-driven (jobs start when taken, stop grace %g s)", stop_grace_s)
    return True


def _scaler_class() -> type[Any]:
    """The JobScaler subclass, built on first use so that importing this module stays cheap."""
    from runpod.http_client import AsyncClientSession, TooManyRequests
    from runpod.serverless.modules import rp_scale
    from runpod.serverless.modules.rp_http import send_result
    from runpod.serverless.modules.rp_logger import _reset_batch_id, _set_batch_id

    class EventDrivenJobScaler(rp_scale.JobScaler):  # type: ignore[misc]
        """The SDK's JobScaler with its polling loops replaced by events."""

        ready: concurrent.futures.Future[Any] | None = None
        stop_grace_s: float = 5.0
        warm_up: Callable[[], Awaitable[object]] | None = None
        failed = False

        def __init__(self, config: dict[str, Any]) -> None:
            super().__init__(config)
            self._slot_freed = asyncio.Event()
            self._jobs: dict[str, dict[str, Any]] = {}

        def start(self) -> None:
            """Run until stopped; the signal handlers live on the loop, so a stop wakes it."""
            sys.excepthook = rp_scale._handle_uncaught_exception
            asyncio.run(self.run())
            if EventDrivenJobScaler.failed:
                sys.exit(1)

        def _on_signal(self, signum: int) -> None:
            log.info(
                "got %s: taking no more jobs; %d in flight get up to %g s to finish",
                signal.Signals(signum).name,
                len(self._jobs),
                self.stop_grace_s,
            )
            self.kill_worker()

        async def run(self) -> None:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._on_signal, signum)
            async with AsyncClientSession() as session:
                take = asyncio.create_task(self.get_jobs(session))
                stops = asyncio.create_task(self.monitor_stop_signals(session))
                stopping = asyncio.create_task(self._shutdown_event.wait())
                await asyncio.wait({take, stopping}, return_when=asyncio.FIRST_COMPLETED)
                # A stop ends the job-take long-poll at once: no job arrives after it.
                take.cancel()
                await asyncio.wait({take})
                if not take.cancelled() and take.exception() is not None:
                    log.error("job loop: no more jobs can be taken (%r)", take.exception())
                    EventDrivenJobScaler.failed = True
                self.kill_worker()
                await self._finish_jobs(session)
                stops.cancel()
                stopping.cancel()
                await asyncio.wait({stops, stopping})

        async def _finish_jobs(self, session: Any) -> None:
            """Give the jobs in flight the grace; fail those still running, so none is lost."""
            running = set(self.jobs_tasks.values())
            if not running:
                return
            _done, late = await asyncio.wait(running, timeout=self.stop_grace_s)
            if not late:
                log.info("job loop: every job in flight finished")
                return
            stopped = [
                self._jobs[job_id] for job_id, task in self.jobs_tasks.items() if task in late
            ]
            for task in late:
                task.cancel()
            await asyncio.wait(late)
            log.warning(
                "job loop: %d job(s) still running after %g s failed with %s",
                len(stopped),
                self.stop_grace_s,
                ErrorCode.WORKER_STOPPED,
            )
            await asyncio.gather(
                *(send_result(session, STOPPED_ERROR.as_output(), job, True) for job in stopped)
            )

        async def _wait_until_ready(self) -> None:
            if self.ready is not None:
                started = time.perf_counter()
                try:
                    await asyncio.wrap_future(self.ready)
                except Exception as exc:
                    log.error("job loop: Ollama did not come up (%s); taking no jobs, exiting", exc)
                    raise
                log.info(
                    "job loop: Ollama is ready; taking jobs (waited %.0f ms after the checks)",
                    (time.perf_counter() - started) * 1000,
                )
            if self.warm_up is not None:
                await self.warm_up()

        async def get_jobs(self, session: Any) -> None:
            """Ask for as many jobs as there are free slots, the moment there are any."""
            await self._wait_until_ready()
            while self.is_alive():
                await self.set_scale()
                wanted = self.current_concurrency - self.current_occupancy()
                if wanted <= 0:
                    self._slot_freed.clear()
                    await self._slot_freed.wait()
                    continue
                try:
                    jobs = await asyncio.wait_for(
                        self.jobs_fetcher(session, wanted), timeout=self.jobs_fetcher_timeout
                    )
                except TooManyRequests:
                    await asyncio.sleep(5)  # RunPod asked us to back off
                    continue
                except TimeoutError:
                    continue
                except Exception as exc:
                    log.error("job loop: job-take failed (%s: %s)", type(exc).__name__, exc)
                    await asyncio.sleep(1)  # not a tight loop while RunPod is unreachable
                    continue
                for job in jobs or []:
                    self._start_job(session, job)

        def _start_job(self, session: Any, job: dict[str, Any]) -> None:
            self.job_progress.add(job)
            self._jobs[job["id"]] = job
            self.jobs_tasks[job["id"]] = asyncio.create_task(self.handle_job(session, job))

        async def run_jobs(self, session: Any) -> None:
            """Unused: jobs start in `get_jobs` as they are taken."""
            raise NotImplementedError

        async def handle_job(self, session: Any, job: dict[str, Any]) -> None:
            """Run one job through the SDK's handle_job, then free its slot at once."""
            batch = _set_batch_id(job.get("batchId"))
            try:
                await self.jobs_handler(session, self.config, job)
                if self.config.get("refresh_worker", False):
                    self.kill_worker()
            except asyncio.CancelledError:
                log.info("job %s stopped", job["id"])
                raise
            except Exception:
                log.exception("job %s: the SDK failed to run or report it", job["id"])
            finally:
                self.job_progress.remove(job)
                self.jobs_tasks.pop(job["id"], None)
                self._jobs.pop(job["id"], None)
                self._slot_freed.set()
                _reset_batch_id(batch)

    return EventDrivenJobScaler
