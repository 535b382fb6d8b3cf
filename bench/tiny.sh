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
bash bench/replay/run.sh --debug --tiny
# DynamoDB writes per call, on moto served one request at a time (as the AWS adapter's tests do).
moto_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
.venv/bin/python stores/aws/tests/moto/serial_moto.py 127.0.0.1 "$moto_port" >/dev/null 2>&1 &
moto=$!
for _ in $(seq 150); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $moto_port))" 2>/dev/null && break
    sleep 0.2
done
AWS_ENDPOINT_URL="http://127.0.0.1:$moto_port" AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=bench \
    AWS_SECRET_ACCESS_KEY=bench target/debug/ferry-bench-money --dynamodb 20
kill "$moto"
