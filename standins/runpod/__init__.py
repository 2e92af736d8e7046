"""The stand-in RunPod job API: ``FakeRunPod`` (server), ``JobRecord`` (one job's traffic)."""

from standins.runpod.server import FakeRunPod, JobRecord, Polls, RawJSON, Take, clean_environ

__all__ = ["FakeRunPod", "JobRecord", "Polls", "RawJSON", "Take", "clean_environ"]
