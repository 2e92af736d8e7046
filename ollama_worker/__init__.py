"""A RunPod serverless worker that answers chat, VAPI and OpenAI-style jobs with a local Ollama."""

__version__ = "0.1.0"
