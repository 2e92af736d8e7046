"""The stand-in Ollama: ``FakeOllama`` (server), ``FakeConfig`` (its switches)."""

from standins.ollama.server import FakeConfig, FakeOllama

__all__ = ["FakeConfig", "FakeOllama"]
