"""The stand-in RunPod job API, for the tests and the bench.

Start it with ``FakeRunPod(**config).start()`` (or ``with FakeRunPod() as fake``), or as a
process with ``python -m standins.runpod --port N``; point a worker's SDK at it with
``worker_env(worker_id)`` (and ``clean_environ()`` for the rest of its environment). Control it
with ``configure(**changes)``, ``submit()`` / ``submit_many()`` (a ``RawJSON`` input is served
verbatim), ``stop_job()`` and ``reset()``. Read what happened with ``record(job_id)`` /
``wait_done()`` / ``wait_stream()`` (a ``JobRecord`` each), ``wait_for_poll()``, and the typed
calls ``takes(worker_id)`` (``Take``s), ``open_polls()``, ``poll_counts()`` (``Polls``),
``unfinished()`` and ``peak_unfinished()``; ``stats()`` is the whole snapshot they read.
"""

from standins.runpod.server import FakeRunPod, clean_environ
from standins.runpod.wire import JobRecord, Polls, RawJSON, Take

__all__ = ["FakeRunPod", "JobRecord", "Polls", "RawJSON", "Take", "clean_environ"]
