"""Stand-ins for Ollama and the RunPod job API, for the tests and the bench (dev only).

See ``standins.ollama`` and ``standins.runpod``.
"""
