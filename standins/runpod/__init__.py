"""The stand-in RunPod job API: ``FakeRunPod`` (server), ``JobRecord`` (one job's traffic)."""

from standins.runpod.server import FakeRunPod, JobRecord, Polls, Take, clean_environ

__all__ = ["FakeRunPod", "JobRecord", "Polls", "Take", "clean_environ"]
