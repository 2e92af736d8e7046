"""Benchmarks of the worker against the stand-in Ollama; run with `python -m bench`."""
