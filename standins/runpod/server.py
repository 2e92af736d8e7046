"""Stand-in for RunPod's job API, as runpod-python 1.12.0's production loop calls it.

A real aiohttp server on 127.0.0.1 (its own thread and event loop) that serves the
endpoints the SDK's JobScaler uses (serverless/modules/rp_job.py, rp_http.py):

    GET  /v2/{endpoint}/job-take/{worker}?...&job_in_progress=0|1
         long-poll; 200 JSON {"id", "input"} as soon as a job is queued, 204 after take_poll_s
    GET  /v2/{endpoint}/job-take-batch/{worker}?...&batch_size=N&job_in_progress=0|1
         the same, answering a JSON list of up to N jobs
    POST /v2/{endpoint}/job-stream/{worker}/{job}?...&isStream=false
         body: JSON text {"output": item} (form content type); recorded, answered after rtt_s
    POST /v2/{endpoint}/job-done/{worker}/{job}?...&isStream=true|false
         body: {"output": ...} (COMPLETED) or {"error": "..."} (FAILED); recorded, after rtt_s
    GET  /v2/{endpoint}/job-stop/{worker}?...
         long-poll; {"jobsToStop": [ids]} once a test called stop_job(), 204 after stop_poll_s
    GET  /v2/{endpoint}/ping/{worker}?...   heartbeat sink (only sent with an API key)

Tests drive it from their own thread: ``worker_env()`` gives the variables that point a
worker's SDK here, ``submit()`` queues jobs, ``wait_done()`` returns a ``JobRecord`` with
every streamed item and the job-done body, each with its ``time.monotonic()`` arrival
(FakeOllama's clock). ``takes()``, ``open_polls()``, ``poll_counts()``, ``unfinished()`` and
``peak_unfinished()`` read what it counted; ``stats()`` is the whole snapshot.
``python -m standins.runpod --port N`` serves it as a process, steered over ``/_fake/*``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import dataclasses
import itertools
import json
import os
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from standins._server import ThreadedServer
from standins.runpod.wire import JobRecord, Polls, Take, post_body, take_body

DEFAULT_ENDPOINT = "ep-fake"
DEFAULT_WORKER = "worker-1"
# Query string the real platform's URLs carry; the SDK appends "&..." to it.
URL_QUERY = "gpu=test"
# How often a waiting long-poll looks whether its client went away.
CLIENT_CHECK_S = 0.25
# Inherited variables a worker must never see: the API key (pings, credentials) and any
# real platform URL; worker_env() sets the ones a test needs.
DROPPED_PREFIXES = ("RUNPOD_",)


@dataclass
class FakeRunPodConfig:
    """Run-time knobs; the defaults answer at once and keep long-polls short."""

    rtt_s: float = 0.0  # delay before answering each job-stream / job-done POST
    take_rtt_s: float = 0.0  # delay added before each job-take answer
    take_poll_s: float = 5.0  # how long an empty job-take poll is held before its 204
    stop_poll_s: float = 5.0  # how long an empty job-stop poll is held before its 204


CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(FakeRunPodConfig))


class ClientGoneError(Exception):
    """The long-polling client closed its connection."""


def clean_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`environ` (default os.environ) without RUNPOD_* variables, the API key above all."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if not k.startswith(DROPPED_PREFIXES)}


def _new_stats() -> dict[str, Any]:
    """Zeroed counters."""
    return {
        "take_polls": 0,
        "stop_polls": 0,
        "open_take_polls": 0,
        "open_stop_polls": 0,
        "max_open_take_polls": 0,
        "unfinished": 0,
        "max_unfinished": 0,
        "jobs_taken": 0,
        "stream_posts": 0,
        "done_posts": 0,
        "pings": 0,
        "requeued": 0,
        "unknown_job_posts": 0,
        "auth_headers_nonempty": 0,
        # (time, job_in_progress, batch_size, worker_id) of every job-take request
        "take_log": deque(maxlen=10_000),
    }


class FakeRunPod(ThreadedServer):
    """RunPod's job-take / stream / done / stop API on 127.0.0.1, for tests and the bench."""

    thread_name = "fake-runpod"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        endpoint_id: str = DEFAULT_ENDPOINT,
        **config: Any,
    ) -> None:
        self.host = host
        self.port = port
        self.endpoint_id = endpoint_id
        self._initial = _config(FakeRunPodConfig(), config)
        self._config = copy.copy(self._initial)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._queue: deque[str] = deque()
        self._records: dict[str, JobRecord] = {}
        self._unfinished: set[str] = set()
        self._stops: list[str] = []  # stop asked, not yet delivered to a worker
        self._stats = _new_stats()
        self._ids = itertools.count(1)
        self._job_waiters: set[asyncio.Future[None]] = set()
        self._stop_waiters: set[asyncio.Future[None]] = set()
        self._init_thread_state()

    # ---- lifecycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        if not self.bound_port:
            raise RuntimeError("the stand-in RunPod API is not listening yet")
        return f"http://{self.host}:{self.bound_port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v2/ENDPOINT``, the prefix of every job URL."""
        return f"{self.url}/v2/{self.endpoint_id}"

    # ---- public, thread-safe API -------------------------------------------------------

    def worker_env(self, worker_id: str = DEFAULT_WORKER) -> dict[str, str]:
        """The variables that point a worker's SDK at this stand-in, as `worker_id`.

        Templated as the SDK expects: rp_job.py replaces `$ID` in RUNPOD_WEBHOOK_GET_JOB with
        the worker id and appends `&job_in_progress=` (so the URL carries a `?`); rp_http.py
        replaces `$RUNPOD_POD_ID` in the two POST URLs at import and `$ID` with the job id
        per POST; rp_ping.py does the same for RUNPOD_WEBHOOK_PING. Merge it over
        clean_environ(): RUNPOD_AI_API_KEY must not reach a test worker.
        """
        base = self.base_url
        return {
            "RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/$ID?{URL_QUERY}",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/$RUNPOD_POD_ID/$ID?{URL_QUERY}",
            "RUNPOD_WEBHOOK_POST_STREAM": f"{base}/job-stream/$RUNPOD_POD_ID/$ID?{URL_QUERY}",
            "RUNPOD_WEBHOOK_PING": f"{base}/ping/$RUNPOD_POD_ID?{URL_QUERY}",
            "RUNPOD_POD_ID": worker_id,
            "RUNPOD_ENDPOINT_ID": self.endpoint_id,
            "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
            "RUNPOD_SKIP_GPU_CHECK": "true",
        }

    def config(self) -> FakeRunPodConfig:
        """A copy of the live configuration."""
        with self._lock:
            return copy.copy(self._config)

    def configure(self, **changes: Any) -> FakeRunPodConfig:
        """Change rtt_s, take_rtt_s, take_poll_s or stop_poll_s now (new requests see them)."""
        with self._lock:
            self._config = _config(self._config, changes)
            return copy.copy(self._config)

    def submit(
        self, job_input: Any, job_id: str | None = None, *, worker_id: str | None = None
    ) -> str:
        """Queue a job (for `worker_id` only, if given); its id."""
        return self.submit_many([job_input], ids=[job_id], worker_id=worker_id)[0]

    def submit_many(
        self,
        inputs: Iterable[Any],
        *,
        ids: Iterable[str | None] | None = None,
        worker_id: str | None = None,
    ) -> list[str]:
        """Queue several jobs at once (one wake-up for the polls); their ids, in order."""
        inputs = list(inputs)
        given = list(ids) if ids is not None else [None] * len(inputs)
        if len(given) != len(inputs):
            raise ValueError("ids and inputs differ in length")
        now = time.monotonic()
        queued = []
        with self._lock:
            for job_input, job_id in zip(inputs, given, strict=True):
                job_id = job_id or f"job-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
                if job_id in self._records:
                    raise ValueError(f"job id {job_id!r} was already submitted")
                self._records[job_id] = JobRecord(
                    id=job_id,
                    input=copy.deepcopy(job_input),
                    submitted_at=now,
                    for_worker=worker_id,
                )
                self._queue.append(job_id)
                queued.append(job_id)
        self._wake(self._job_waiters)
        return queued

    def stop_job(self, job_id: str) -> None:
        """Ask the worker that took `job_id` to stop it; a job still queued is just dropped."""
        with self._lock:
            record = self._record(job_id)
            record.stop_requested_at = time.monotonic()
            if job_id in self._queue:
                self._queue.remove(job_id)
                record.status = "CANCELLED"
                self._changed.notify_all()
                return
            self._stops.append(job_id)
        self._wake(self._stop_waiters)

    def record(self, job_id: str) -> JobRecord:
        """A snapshot of what the stand-in saw of `job_id`."""
        with self._lock:
            return copy.deepcopy(self._record(job_id))

    def records(self) -> list[JobRecord]:
        """Snapshots of every job since the last reset, in submission order."""
        with self._lock:
            return copy.deepcopy(list(self._records.values()))

    def wait_done(self, job_id: str, timeout: float = 30.0) -> JobRecord:
        """The job's record once its job-done POST arrived; TimeoutError naming it if not."""
        return self._wait(job_id, lambda r: r.done, timeout, "job-done POST")

    def wait_stream(self, job_id: str, count: int = 1, timeout: float = 30.0) -> JobRecord:
        """The job's record once at least `count` items were streamed for it."""
        return self._wait(
            job_id, lambda r: len(r.stream) >= count, timeout, f"{count} streamed item(s)"
        )

    def wait_for_poll(
        self,
        timeout: float = 30.0,
        *,
        worker_id: str | None = None,
        since: float | None = None,
    ) -> float:
        """Block until a job-take poll (from `worker_id`, opened after `since`) came; its time.

        A worker that opened its first job-take poll is up and taking jobs.
        """
        deadline = time.monotonic() + timeout

        def seen() -> float | None:
            for stamp, _, _, worker in reversed(self._stats["take_log"]):
                if since is not None and stamp < since:
                    return None
                if worker_id is None or worker == worker_id:
                    return float(stamp)
            return None

        with self._lock:
            while (stamp := seen()) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    who = f"worker {worker_id!r}" if worker_id else "any worker"
                    raise TimeoutError(f"no job-take poll from {who} within {timeout} s")
                self._changed.wait(remaining)
            return stamp

    def stats(self) -> dict[str, Any]:
        """A snapshot of every counter; `take_log` a list of `Take`s (typed calls below)."""
        with self._lock:
            snapshot = copy.deepcopy(self._stats)
            snapshot["queued"] = len(self._queue)
        snapshot["take_log"] = list(snapshot["take_log"])
        return snapshot

    def takes(self, worker_id: str | None = None) -> list[Take]:
        """The last 10,000 job-take requests (of one worker if named), oldest first."""
        with self._lock:
            log = list(self._stats["take_log"])
        return [take for take in log if worker_id is None or take.worker_id == worker_id]

    def open_polls(self) -> int:
        """Job-take requests held open now, waiting for a job."""
        return int(self.stats()["open_take_polls"])

    def poll_counts(self) -> Polls:
        """Job-take and job-stop requests received since the last reset."""
        stats = self.stats()
        return Polls(take=int(stats["take_polls"]), stop=int(stats["stop_polls"]))

    def unfinished(self) -> int:
        """Jobs handed to a worker whose job-done has not come."""
        return int(self.stats()["unfinished"])

    def peak_unfinished(self) -> int:
        """The most jobs unfinished at once since the last reset."""
        return int(self.stats()["max_unfinished"])

    def reset(self) -> None:
        """Forget every job and counter and restore the construction-time configuration.

        Polls that are open stay counted as open. A job a worker still runs is no longer
        known: its later posts are counted in `unknown_job_posts` and recorded afresh.
        """
        with self._lock:
            fresh = _new_stats()
            for key in ("open_take_polls", "open_stop_polls"):
                fresh[key] = self._stats[key]
            fresh["max_open_take_polls"] = fresh["open_take_polls"]
            self._stats = fresh
            self._queue.clear()
            self._records.clear()
            self._unfinished.clear()
            self._stops.clear()
            self._config = copy.copy(self._initial)
            self._changed.notify_all()

    # ---- internals shared by the two threads ------------------------------------------

    def _record(self, job_id: str) -> JobRecord:
        """The live record of `job_id` (lock held); KeyError naming it."""
        try:
            return self._records[job_id]
        except KeyError:
            raise KeyError(f"job {job_id!r} was never submitted (or before a reset)") from None

    def _wait(
        self, job_id: str, ready: Callable[[JobRecord], bool], timeout: float, what: str
    ) -> JobRecord:
        """Block until `ready(record)`; TimeoutError describing the job if it never is."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not ready(record := self._record(job_id)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"job {job_id}: no {what} within {timeout} s: "
                        f"{'taken by ' + str(record.taken_by) if record.taken_at else 'not taken'}"
                        f", {len(record.stream)} item(s) streamed, status {record.status}, "
                        f"{len(self._queue)} job(s) queued, "
                        f"{self._stats['open_take_polls']} take poll(s) open"
                    )
                self._changed.wait(remaining)
            return copy.deepcopy(record)

    def _wake(self, waiters: set[asyncio.Future[None]]) -> None:
        """Resolve every future in `waiters`, on the server's loop (from any thread)."""

        def wake() -> None:
            for future in list(waiters):
                if not future.done():
                    future.set_result(None)

        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self._loop.call_soon_threadsafe(wake)

    def _take(self, worker_id: str, limit: int) -> list[str]:
        """Pop up to `limit` queued jobs this worker may take and mark them taken."""
        now = time.monotonic()
        with self._lock:
            taken = [
                job_id
                for job_id in self._queue
                if self._records[job_id].for_worker in (None, worker_id)
            ][:limit]
            for job_id in taken:
                self._queue.remove(job_id)
                record = self._records[job_id]
                record.taken_at, record.taken_by = now, worker_id
                self._unfinished.add(job_id)
            if taken:
                stats = self._stats
                stats["jobs_taken"] += len(taken)
                stats["unfinished"] = len(self._unfinished)
                stats["max_unfinished"] = max(stats["max_unfinished"], len(self._unfinished))
                self._changed.notify_all()
            return taken

    def _requeue(self, job_ids: list[str]) -> None:
        """Put jobs whose job-take answer never reached the worker back at the queue's head."""
        with self._lock:
            for job_id in reversed(job_ids):
                record = self._records.get(job_id)
                if record is None or record.done:
                    continue
                record.taken_at = record.taken_by = None
                self._unfinished.discard(job_id)
                self._queue.appendleft(job_id)
                self._stats["requeued"] += 1
            self._stats["unfinished"] = len(self._unfinished)
        self._wake(self._job_waiters)

    def _take_stops(self, worker_id: str) -> list[str]:
        """Pop the stop requests meant for `worker_id` (or for a job nobody took)."""
        now = time.monotonic()
        with self._lock:
            mine = [
                job_id
                for job_id in self._stops
                if self._records[job_id].taken_by in (None, worker_id)
            ]
            for job_id in mine:
                self._stops.remove(job_id)
                self._records[job_id].stop_delivered_at = now
                # The worker cancels it now and will post nothing more: no longer a taken slot.
                self._unfinished.discard(job_id)
            if mine:
                self._stats["unfinished"] = len(self._unfinished)
                self._changed.notify_all()
            return mine

    def _post_record(self, job_id: str, worker_id: str) -> JobRecord:
        """The record a stream/done POST is about; a fresh one for a job we do not know."""
        record = self._records.get(job_id)
        if record is None:
            self._stats["unknown_job_posts"] += 1
            record = JobRecord(id=job_id, input=None, submitted_at=None, taken_by=worker_id)
            self._records[job_id] = record
        return record

    # ---- HTTP handlers ------------------------------------------------------------------

    async def _long_poll(
        self,
        request: web.Request,
        waiters: set[asyncio.Future[None]],
        take: Callable[[], list[str]],
        poll_s: float,
    ) -> list[str]:
        """`take()` as soon as it finds something, else [] after `poll_s`.

        Checking and registering a waiter happen with no await between them, and wake-ups
        run on this same loop, so a job submitted at any moment is never missed.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + poll_s
        while True:
            found = take()
            if found:
                return found
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            future: asyncio.Future[None] = loop.create_future()
            waiters.add(future)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(future, min(remaining, CLIENT_CHECK_S))
            finally:
                waiters.discard(future)
            if request.transport is None or request.transport.is_closing():
                raise ClientGoneError

    async def _job_take(self, request: web.Request) -> web.StreamResponse:
        """GET job-take / job-take-batch: long-poll for queued jobs (rp_job.get_job)."""
        worker_id = request.match_info["worker_id"]
        batch = request.match_info["kind"] == "job-take-batch"
        query = request.query
        try:
            batch_size = int(query.get("batch_size", "1")) if batch else 1
        except ValueError:
            return web.json_response({"error": "bad batch_size"}, status=400)
        with self._lock:
            cfg = copy.copy(self._config)
            stats = self._stats
            stats["take_polls"] += 1
            stats["open_take_polls"] += 1
            stats["max_open_take_polls"] = max(
                stats["max_open_take_polls"], stats["open_take_polls"]
            )
            stats["take_log"].append(
                Take(time.monotonic(), query.get("job_in_progress"), batch_size, worker_id)
            )
            self._note_auth(request)
            self._changed.notify_all()
        taken: list[str] = []
        try:
            try:
                taken = await self._long_poll(
                    request,
                    self._job_waiters,
                    lambda: self._take(worker_id, max(batch_size, 1)),
                    cfg.take_poll_s,
                )
            except ClientGoneError:
                return web.Response(status=204)
            if cfg.take_rtt_s > 0:
                await asyncio.sleep(cfg.take_rtt_s)
            if not taken:
                return web.Response(status=204)
            with self._lock:
                records = [r for job_id in taken if (r := self._records.get(job_id)) is not None]
            body = take_body(records, batch)
            response = web.Response(text=body, content_type="application/json")
            await response.prepare(request)
            await response.write_eof()
            taken = []  # delivered
            return response
        finally:
            if taken:  # cancelled, or the answer could not be written
                self._requeue(taken)
            with self._lock:
                self._stats["open_take_polls"] -= 1

    async def _job_stop(self, request: web.Request) -> web.StreamResponse:
        """GET job-stop: long-poll for stop requests (rp_job.get_stop_signals)."""
        worker_id = request.match_info["worker_id"]
        with self._lock:
            cfg = copy.copy(self._config)
            self._stats["stop_polls"] += 1
            self._stats["open_stop_polls"] += 1
            self._note_auth(request)
        try:
            stops = await self._long_poll(
                request, self._stop_waiters, lambda: self._take_stops(worker_id), cfg.stop_poll_s
            )
        except ClientGoneError:
            stops = []
        finally:
            with self._lock:
                self._stats["open_stop_polls"] -= 1
        if not stops:
            return web.Response(status=204)
        return web.json_response({"jobsToStop": stops})

    async def _job_post(self, request: web.Request) -> web.StreamResponse:
        """POST job-stream / job-done: record the body's JSON text, answer after rtt_s."""
        arrived = time.monotonic()
        kind = request.match_info["kind"]
        worker_id, job_id = request.match_info["worker_id"], request.match_info["job_id"]
        raw = await request.read()
        try:
            body = post_body(raw)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        with self._lock:
            cfg = copy.copy(self._config)
            record = self._post_record(job_id, worker_id)
            self._note_auth(request)
            if kind == "job-stream":
                self._stats["stream_posts"] += 1
                record.stream.append((arrived, body.get("output")))
            else:
                self._stats["done_posts"] += 1
                record.done_posts += 1
                record.is_stream_flags.append(request.query.get("isStream"))
                if record.done_at is None:
                    record.done_at = arrived
                    record.result = body
                    record.status = "FAILED" if body.get("error") else "COMPLETED"
                self._unfinished.discard(job_id)
                self._stats["unfinished"] = len(self._unfinished)
            self._changed.notify_all()
        if cfg.rtt_s > 0:
            await asyncio.sleep(cfg.rtt_s)
        return web.Response(status=200, text="")

    async def _ping(self, request: web.Request) -> web.StreamResponse:
        """GET ping: count heartbeats (the SDK sends them only with an API key)."""
        with self._lock:
            self._stats["pings"] += 1
            self._note_auth(request)
        return web.Response(status=200)

    def _note_auth(self, request: web.Request) -> None:
        """Count requests that carried a non-empty Authorization header (lock held)."""
        if request.headers.get("Authorization"):
            self._stats["auth_headers_nonempty"] += 1

    # ---- process-mode control API (for the bench) ---------------------------------------

    async def _fake_submit(self, request: web.Request) -> web.StreamResponse:
        """POST /_fake/submit {"input", "id"?, "worker_id"?} or a list of them: the ids."""
        body = await request.json()
        jobs = body if isinstance(body, list) else [body]
        ids = await asyncio.to_thread(
            self.submit_many,
            [job.get("input") for job in jobs],
            ids=[job.get("id") for job in jobs],
        )
        return web.json_response({"ids": ids})

    async def _fake_job(self, request: web.Request) -> web.StreamResponse:
        """GET /_fake/jobs/{id}: the record as JSON (404 if unknown)."""
        try:
            record = self.record(request.match_info["job_id"])
        except KeyError as exc:
            return web.json_response({"error": str(exc)}, status=404)
        return web.json_response(dataclasses.asdict(record))

    async def _fake_stop(self, request: web.Request) -> web.StreamResponse:
        """POST /_fake/stop/{id}: stop_job()."""
        try:
            self.stop_job(request.match_info["job_id"])
        except KeyError as exc:
            return web.json_response({"error": str(exc)}, status=404)
        return web.json_response({})

    async def _fake_stats(self, request: web.Request) -> web.StreamResponse:
        """GET /_fake/stats."""
        return web.json_response(self.stats())

    async def _fake_config(self, request: web.Request) -> web.StreamResponse:
        """GET or POST /_fake/config (POST body: the changes)."""
        if request.method == "POST":
            try:
                self.configure(**(await request.json()))
            except (TypeError, ValueError) as exc:
                return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(dataclasses.asdict(self.config()))

    async def _fake_reset(self, request: web.Request) -> web.StreamResponse:
        """POST /_fake/reset."""
        self.reset()
        return web.json_response({})

    async def _fake_env(self, request: web.Request) -> web.StreamResponse:
        """GET /_fake/env?worker_id=...: worker_env()."""
        return web.json_response(self.worker_env(request.query.get("worker_id", DEFAULT_WORKER)))

    def _make_app(self) -> web.Application:
        """The aiohttp application with every route."""
        app = web.Application()
        route = app.router
        route.add_get("/v2/{endpoint}/{kind:job-take|job-take-batch}/{worker_id}", self._job_take)
        route.add_get("/v2/{endpoint}/job-stop/{worker_id}", self._job_stop)
        route.add_post(
            "/v2/{endpoint}/{kind:job-stream|job-done}/{worker_id}/{job_id}", self._job_post
        )
        route.add_get("/v2/{endpoint}/ping/{worker_id}", self._ping)
        route.add_post("/_fake/submit", self._fake_submit)
        route.add_get("/_fake/jobs/{job_id}", self._fake_job)
        route.add_post("/_fake/stop/{job_id}", self._fake_stop)
        route.add_get("/_fake/stats", self._fake_stats)
        route.add_route("*", "/_fake/config", self._fake_config)
        route.add_post("/_fake/reset", self._fake_reset)
        route.add_get("/_fake/env", self._fake_env)
        return app

    async def serve(self, stop: asyncio.Event, on_ready: Callable[[], None] = lambda: None) -> None:
        """Bind, serve until `stop` is set, then close every connection."""
        self._serving(stop)
        # A closed long-poll's handler is cancelled (_run_app): it must not take a job.
        await self._run_app(self._make_app(), self._bind(), stop, on_ready)


def _config(base: FakeRunPodConfig, changes: Mapping[str, Any]) -> FakeRunPodConfig:
    """`base` with `changes` applied: known fields only, each a number >= 0."""
    unknown = set(changes) - CONFIG_FIELDS
    if unknown:
        raise TypeError(f"unknown FakeRunPod setting(s): {', '.join(sorted(unknown))}")
    values = {}
    for name, value in changes.items():
        number = float(value)
        if not number >= 0:
            raise ValueError(f"{name} must be a number >= 0, not {value!r}")
        values[name] = number
    return dataclasses.replace(base, **values)


def main(argv: list[str] | None = None) -> None:
    """`python -m standins.runpod [--port N]`: serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--endpoint", default=DEFAULT_ENDPOINT)
    for name in sorted(CONFIG_FIELDS):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=None)
    args = parser.parse_args(argv)
    config = {n: getattr(args, n) for n in CONFIG_FIELDS if getattr(args, n) is not None}
    server = FakeRunPod(args.host, args.port, endpoint_id=args.endpoint, **config)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def ready() -> None:
            print(json.dumps({"url": server.url, "env": server.worker_env()}), flush=True)

        await server.serve(stop, on_ready=ready)

    asyncio.run(run())


if __name__ == "__main__":
    main()
