#!/usr/bin/env bash
# A tiny run of every benchmark on the debug build, as the test suite's last step: it checks
# that each one still works end to end (and that the books reconcile after the gateway's),
# not how fast anything is; no figure it prints is worth reading. The llama.cpp side of the
# engine benchmark is left out: llama-cpp-python compiles llama.cpp for ~10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
gateway() { python3 bench/gateway/run.py --debug --tiny "$@"; }
gateway --rates 50 --duration 1 --litellm --plot target/bench-tiny-overhead.png
gateway --rates 50 --duration 1 --stream
gateway --streams 40
gateway --cold-start
python3 bench/soak/run.py --debug --tiny
target/debug/ferry-bench-money --seconds 0.3
target/debug/ferry-bench-console --events 3000 --keys 300 --samples 5
models=${FERRY_MODELS_DIR:-target/ferry-models}
target/debug/ferry models pull smollm2-135m-instruct --models-dir "$models" >/dev/null
python3 bench/engine/bench.py --ferry target/debug/ferry --no-llama-cpp --rounds 1 --tokens 4 \
    --streams 1,2 --model "$models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ -d ${FERRY_TRACES:-../shared/data/traces} ]]; then
    bash bench/replay/run.sh --debug
else
    echo "bench/replay: no traces beside this checkout; tests/e2e/test_pool.py replays a synthetic one"
fi
