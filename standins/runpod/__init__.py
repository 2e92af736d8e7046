"""The stand-in RunPod job API: ``FakeRunPod`` (server), ``JobRecord`` (one job's traffic)."""

from standins.runpod.server import FakeRunPod, clean_environ
from standins.runpod.wire import JobRecord, Polls, RawJSON, Take

__all__ = ["FakeRunPod", "JobRecord", "Polls", "RawJSON", "Take", "clean_environ"]
