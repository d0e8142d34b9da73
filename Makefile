# Two entry points; each bootstraps .venv on a fresh machine (tools/ensure_env.sh, keyed by pyproject.toml).
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: env demo test lint fit-tiny

env:
	bash tools/ensure_env.sh

## The main job on the embedded default (SmolLM2-135M, no download): memory vs RAG vs no retrieval.
demo: env
	.venv/bin/latentlab demo

## The whole test suite (lint included), as CI runs it.
test: env
	$(PY) -m pytest -q

lint: env
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
