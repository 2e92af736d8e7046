# The project's few commands; see the README. `make setup` once, then `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup ollama test lint docs run dev bench smoke

## Create the virtual environment with the worker's and the tests' requirements.
setup:
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt

## The real Ollama (OLLAMA_VERSION, default the Dockerfile's) and the real small model, built
## or checked in a cache outside the repository; OLLAMA_BIN takes a real ollama you already have.
ollama:
	$(PY) scripts/real_ollama.py

## Lint everything, provide the real Ollama (skipped, with the reason, where it cannot be built;
## never under CI), a quick benchmark pass (so the bench keeps working), then the test suite.
test: lint
	$(PY) scripts/real_ollama.py --for-tests
	$(PY) -m bench --quick --out $(VENV)/bench-quick
	$(PY) -m pytest

lint:
	$(PY) scripts/settings_docs.py --check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	shellcheck ollama_boot.sh .ci/run
	hadolint Dockerfile

## Write the README's Configuration table and .runpod/hub.json's inputs from ollama_worker/config.py.
docs:
	$(PY) scripts/settings_docs.py

## Run the worker's local API on :8000 against the Ollama at OLLAMA_HOST.
run:
	$(PY) rp_handler.py --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8000

## The worker against the stand-in Ollama, for trying it without a GPU. (No EXIT trap: sh
## execs a recipe's last command, which drops traps; Ctrl-C reaches both through the group.)
dev:
	$(PY) -m standins.ollama --port 11434 & fake=$$!; \
	OLLAMA_HOST=127.0.0.1:11434 $(PY) rp_handler.py --rp_serve_api --rp_api_port 8000; \
	kill $$fake

bench:
	$(PY) -m bench

## Send .runpod/tests.json to a worker: `make smoke URL=http://localhost:8000` (the default),
## or `make smoke ENDPOINT_ID=...` with RUNPOD_API_KEY set; VAPI_WEBHOOK_SECRET is sent if set.
smoke:
	$(PY) scripts/smoke.py $(if $(ENDPOINT_ID),--endpoint-id $(ENDPOINT_ID),$(or $(URL),http://localhost:8000))
