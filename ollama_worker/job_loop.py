"""RunPod's production job loop, without its sleeps and with a graceful stop.

runpod 1.12.0's `JobScaler` looks at its job queue every 0.1 s when idle (a job waits up to
100 ms to start), sleeps 1 s whenever every slot is busy (a freed slot stays idle that long),
and on SIGTERM only sets a flag that its open long-polls (90 s each) must notice. Here the
same jobs are taken and run on events instead: a job starts the moment it is taken, a freed
slot asks for the next job at once, and a stop ends the polls at once and gives the jobs in
flight a grace to finish. Everything else is the SDK's own code: `get_job`'s request and
`get_stop_signals` for the long-polls, `handle_job` for running a job and POSTing its items
and result, `JobsProgress` for the job-in-progress flag and the heartbeat.

Every job taken ends with exactly one job-done: a job-take answer that the SDK's JSON parse
cannot read (one input nested past the recursion limit raises RecursionError and would drop
the whole batch) is read job by job, and the one that cannot be read gets INVALID_INPUT; a job
whose report failed (the SDK lets some exceptions of its result POST escape) gets INTERNAL;
and a job whose job-done POST is in flight when the stop grace ends is left to finish it
rather than stopped and answered twice.

This leans on the SDK's internals, so it runs only on the exact SDK it was written for
(`SDK_VERSION` and the source fingerprint below); on any other the stock loop runs, with an
error in the log, and the deployed-mode tests fail.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import inspect
import json
import logging
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

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
# The key parse_jobs marks a job with whose input it could not read, saying why.
UNREADABLE = "_unreadable_input"
UNREPORTED_ERROR = WorkerError(
    ErrorCode.INTERNAL,
    "the worker could not send this job's result to RunPod; the worker log has the details",
)
# How long a job-done POST already in flight when the stop grace ends may still take.
REPORT_GRACE_S = 10.0
# After a stop, how long an open job-take long-poll may still deliver a job in transit.
TAKE_DRAIN_S = 0.25
# A JSON string, or one structural character: enough to find a container's children.
JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},]')


def json_children(text: str) -> list[str]:
    """The texts of the direct children of the JSON array or object `text` (`"key": value`
    for an object), found by scanning, not parsing: however deep a child nests."""
    depth, start, children = 0, 0, []
    for match in JSON_TOKEN.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth == 1:
                start = match.end()
        elif token in "]}":
            depth -= 1
            if depth == 0:
                children.append(text[start : match.start()])
                break
        elif token == "," and depth == 1:
            children.append(text[start : match.start()])
            start = match.end()
    return [child.strip() for child in children if child.strip()]


def _job_id(text: str) -> str | None:
    """The `id` member of a job object too deep to parse whole."""
    decoder = json.JSONDecoder()
    for member in json_children(text):
        try:
            key, end = decoder.raw_decode(member)
            if key == "id":
                value = json.loads(member[end:].lstrip().removeprefix(":"))
                return value if isinstance(value, str) else None
        except (ValueError, RecursionError):
            continue
    return None


def parse_jobs(text: str) -> list[dict[str, Any]]:
    """A job-take answer's jobs (one object, or a batch's list). A job that cannot be read
    whole comes back as `{"id", "input": None, UNREADABLE: why}`, so that it can be
    answered; an entry without an id cannot be, and is logged and left out."""
    if not text.strip():
        return []
    texts: list[str | None]
    try:
        body = json.loads(text)
        entries = body if isinstance(body, list) else [body]
        texts = [None] * len(entries)
    except RecursionError:  # some input nests past the limit: read the jobs one by one
        stripped = text.lstrip()
        parts = json_children(text) if stripped.startswith("[") else [stripped]
        texts, entries = list(parts), []
        for part in parts:
            try:
                entries.append(json.loads(part))
            except (RecursionError, ValueError):
                entries.append(None)
    except ValueError as exc:
        log.error("job loop: the job-take answer is not JSON (%s); no job taken", exc)
        return []
    jobs = []
    for entry, entry_text in zip(entries, texts, strict=True):
        if isinstance(entry, dict) and isinstance(entry.get("id"), str):
            jobs.append(entry)
        elif entry is None and entry_text is not None and (job_id := _job_id(entry_text)):
            jobs.append({"id": job_id, "input": None, UNREADABLE: "nests too deep to read"})
        else:
            log.error("job loop: a job-take entry has no string id; it cannot be answered")
    return jobs


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
    from runpod.serverless.modules import rp_job

    scaler = _scaler_class()
    # The SDK's handle_job sends every result through this name: tracked, so that a job whose
    # job-done is in flight is never stopped and answered a second time.
    if not getattr(rp_job.send_result, "tracks_reports", False):
        rp_job.send_result = scaler.tracking(rp_job.send_result)
    scaler.ready = ready
    scaler.stop_grace_s = stop_grace_s
    scaler.warm_up = staticmethod(warm_up) if warm_up else None
    rp_scale.JobScaler = scaler
    log.info("job loop: event-driven (jobs start when taken, stop grace %g s)", stop_grace_s)
    return True


def _scaler_class() -> type[Any]:
    """The JobScaler subclass, built on first use so that importing this module stays cheap."""
    from runpod.http_client import AsyncClientSession, TooManyRequests
    from runpod.serverless.modules import rp_job, rp_scale
    from runpod.serverless.modules.rp_logger import _reset_batch_id, _set_batch_id

    class EventDrivenJobScaler(rp_scale.JobScaler):  # type: ignore[misc]
        """The SDK's JobScaler with its polling loops replaced by events."""

        ready: concurrent.futures.Future[Any] | None = None
        stop_grace_s: float = 5.0
        warm_up: Callable[[], Awaitable[object]] | None = None
        failed = False
        # Jobs whose job-done POST has begun, and those whose POST returned.
        reporting: ClassVar[set[str]] = set()
        reported: ClassVar[set[str]] = set()

        def __init__(self, config: dict[str, Any]) -> None:
            super().__init__(config)
            self._slot_freed = asyncio.Event()
            self._jobs: dict[str, dict[str, Any]] = {}
            self.jobs_fetcher = self.take_jobs

        @classmethod
        def tracking(cls, send: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
            """`send` (the SDK's send_result), noting when each job's job-done goes out."""

            async def send_result(
                session: Any, job_data: dict[str, Any], job: dict[str, Any], is_stream: bool = False
            ) -> None:
                cls.reporting.add(job["id"])
                await send(session, job_data, job, is_stream=is_stream)
                cls.reported.add(job["id"])

            send_result.tracks_reports = True  # type: ignore[attr-defined]
            return send_result

        @staticmethod
        async def take_jobs(session: Any, count: int) -> list[dict[str, Any]]:
            """rp_job.get_job's request and checks, with `parse_jobs` reading the answer."""
            async with session.get(rp_job._job_get_url(count)) as response:
                if response.status in (204, 400):  # no job; 400: FlashBoot, as get_job says
                    return []
                if response.status == 429:
                    raise TooManyRequests(
                        response.request_info,
                        response.history,
                        status=response.status,
                        message=response.reason,
                    )
                response.raise_for_status()
                if response.content_type != "application/json":
                    log.error("job loop: job-take answered %s; no job taken", response.content_type)
                    return []
                return parse_jobs(await response.text())

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
                # RunPod counts a job as taken once it has sent it: an answer already on its
                # way when the stop came is read and run, not dropped with the connection.
                # After that moment the long-poll ends, and no job arrives after it.
                await asyncio.wait({take}, timeout=TAKE_DRAIN_S)
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
            """Give the jobs in flight the grace; fail those still running, so none is lost.

            A job whose job-done POST has begun is not stopped: its answer is on its way, and
            a second one would contradict it. It gets REPORT_GRACE_S more to finish sending.
            """
            running = {task: job_id for job_id, task in self.jobs_tasks.items()}
            if not running:
                return
            _done, late = await asyncio.wait(running, timeout=self.stop_grace_s)
            if not late:
                log.info("job loop: every job in flight finished")
                return
            sending = {task for task in late if running[task] in self.reporting}
            stopped = [self._jobs[running[task]] for task in late - sending]
            for task in late - sending:
                task.cancel()
            if stopped:
                await asyncio.wait(late - sending)
                log.warning(
                    "job loop: %d job(s) still running after %g s failed with %s",
                    len(stopped),
                    self.stop_grace_s,
                    ErrorCode.WORKER_STOPPED,
                )
                await asyncio.gather(
                    *(self._send(session, STOPPED_ERROR.as_output(), job) for job in stopped)
                )
            if sending:
                _sent, stuck = await asyncio.wait(sending, timeout=REPORT_GRACE_S)
                for task in stuck:
                    log.error("job %s: its job-done POST did not finish; giving up", running[task])
                    task.cancel()

        async def _send(self, session: Any, result: dict[str, Any], job: dict[str, Any]) -> None:
            """Post a job-done of ours, through the tracked send_result."""
            await rp_job.send_result(session, result, job, True)

        def _answer_unreadable(self, session: Any, job: dict[str, Any]) -> None:
            """A job whose input could not be read: its INVALID_INPUT job-done, as a task."""
            why = job[UNREADABLE]
            log.warning("job %s: input %s; answered INVALID_INPUT", job["id"], why)
            error = WorkerError(
                ErrorCode.INVALID_INPUT,
                f"the job's input {why} (JSON nested past Python's limit); send a flatter input",
            )

            async def answer() -> None:
                try:
                    await self._send(session, error.as_output(), job)
                finally:
                    self._forget(job)

            self.job_progress.add(job)
            self._jobs[job["id"]] = job
            self.jobs_tasks[job["id"]] = asyncio.create_task(answer())

        def _forget(self, job: dict[str, Any]) -> None:
            """The job is over: free its slot at once."""
            self.job_progress.remove(job)
            self.jobs_tasks.pop(job["id"], None)
            self._jobs.pop(job["id"], None)
            self.reporting.discard(job["id"])
            self.reported.discard(job["id"])
            self._slot_freed.set()

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
            if UNREADABLE in job:
                self._answer_unreadable(session, job)
                return
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
                if job["id"] not in self.reported:  # else RunPod has its answer already
                    await self._send(session, UNREPORTED_ERROR.as_output(), job)
            finally:
                self._forget(job)
                _reset_batch_id(batch)

    return EventDrivenJobScaler
