# RunPod serverless worker: Ollama plus a Python RunPod handler in one container.
#   docker build -t ollama-worker .
#   docker build --build-arg PULL_MODELS="llama3.1:8b qwen2.5:7b" -t ollama-worker .
# Layers are ordered from least to most often changed, so a handler code change rebuilds
# only the last layer and never downloads the models again.

# Pinned: a new Ollama can change model formats and API details; bump it on purpose (the
# README's "Another Ollama version" says what to check). RunPod's Hub builds without build
# args, so this default is what ships; `make ollama` builds the same version for the tests.
ARG OLLAMA_VERSION=0.12.10
FROM ollama/ollama:${OLLAMA_VERSION}

# Models baked into the image. The Modelfile's FROM must be one of PULL_MODELS.
ARG PULL_MODELS="llama3.1:8b"
ARG DEFAULT_MODEL="voice-assistant"

# OLLAMA_MODELS is set once here and so is the same at build (bake) and run time; it is not
# under /runpod-volume, where a mounted network volume would hide the baked models.
# OLLAMA_HOST stays on the loopback: only the handler talks to Ollama.
# MAX_CONCURRENCY (jobs per worker) matches OLLAMA_NUM_PARALLEL (requests Ollama runs at once).
# Flash attention: Ollama 0.12.10 turns it on by itself only for a few families (gemma3,
# qwen3, gpt-oss), not llama; it saves memory and time, and OLLAMA_KV_CACHE_TYPE needs it.
ENV PULL_MODELS=${PULL_MODELS} \
    DEFAULT_MODEL=${DEFAULT_MODEL} \
    OLLAMA_MODELS=/models \
    OLLAMA_HOST=127.0.0.1:11434 \
    OLLAMA_KEEP_ALIVE=-1 \
    OLLAMA_NUM_PARALLEL=4 \
    OLLAMA_FLASH_ATTENTION=1 \
    MAX_CONCURRENCY=4 \
    OLLAMA_BOOT_TIMEOUT_S=120 \
    PYTHON=/opt/venv/bin/python \
    PYTHONUNBUFFERED=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Ubuntu 24.04 refuses system-wide pip installs, so the handler gets its own venv.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /app

COPY requirements.txt ./
RUN /opt/venv/bin/pip install --no-cache-dir -r requirements.txt

# The model layer: only what the bake step runs (stdlib Python, no handler code).
COPY ollama_boot.sh Modelfile ./
COPY ollama_worker/__init__.py ollama_worker/config.py ollama_worker/boot.py ./ollama_worker/
RUN ./ollama_boot.sh bake

# The handler code, last: editing it does not invalidate the model layer above.
COPY rp_handler.py http_server.py ./
COPY ollama_worker/ ./ollama_worker/
# The example VAPI tools, so VAPI_TOOLS_MODULE=examples.vapi_tools works out of the box.
COPY examples/ ./examples/
# Compiled now so no cold start spends time compiling it (pip did the same for the deps).
RUN /opt/venv/bin/python -m compileall -q rp_handler.py http_server.py ollama_worker examples

# The base image's ENTRYPOINT is /bin/ollama; ours starts Ollama and the handler and
# passes its arguments to the handler (e.g. `docker run IMAGE --rp_serve_api`).
ENTRYPOINT ["/app/ollama_boot.sh"]
CMD []
