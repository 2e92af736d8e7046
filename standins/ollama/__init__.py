"""The stand-in Ollama: ``FakeOllama`` (server), ``FakeConfig`` (its switches)."""

from standins.ollama.readings import OllamaReadings, RemoteOllama
from standins.ollama.server import FakeConfig, FakeOllama

__all__ = ["FakeConfig", "FakeOllama", "OllamaReadings", "RemoteOllama"]
