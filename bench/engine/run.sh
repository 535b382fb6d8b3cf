#!/usr/bin/env bash
# Engine benchmark: Ferry's native engine vs llama.cpp on SmolLM2-135M-Instruct (Q4_1).
# Builds Ferry in release mode, installs llama-cpp-python (compiles llama.cpp: ~10 min on 2
# cores, once) into bench/.venv, pulls the model, and prints the side-by-side table.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked
[ -x bench/.venv/bin/python ] || python3 -m venv bench/.venv
bench/.venv/bin/python -m pip install --quiet --disable-pip-version-check 'llama-cpp-python[server]==0.3.36'
models=${FERRY_MODELS_DIR:-target/ferry-models}
target/release/ferry models pull smollm2-135m-instruct --models-dir "$models"
bench/.venv/bin/python bench/engine/bench.py --ferry target/release/ferry \
  --model "$models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf" "$@"
