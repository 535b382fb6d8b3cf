#!/usr/bin/env bash
# Checks a `cuda` build of the worker on a real NVIDIA GPU: the real-model tests with the
# engine on the GPU, decode speed per weight format, and `ferry worker` answering over HTTP
# (greedy text, a stream, and throughput at several concurrencies).
#
#   gpu-pool/cuda-check.sh BIN_DIR MODELS_DIR [OUT_DIR]
#
# BIN_DIR holds `ferry`, `real_model` (the test binary) and `decode_speed`, built with
# `gpu-pool/cuda-build.sh`; MODELS_DIR is a model cache holding
# smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf. Nothing is fetched.
set -uo pipefail
bin=$(realpath "$1")
models=$(realpath "$2")
out=${3:-/tmp/ferry-cuda-check}
mkdir -p "$out"
gguf=$models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
status=0
step() { echo; echo "=== $* ($(date +%T))"; }

step "GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv

# The build links libcuda (the driver's) and the CUDA 13 libraries; find them where this
# machine keeps them (a toolkit under /usr/local, or a Python environment's nvidia wheels).
step "CUDA libraries"
libdirs=$(find /usr/local /opt /usr/lib /usr/lib64 -xdev \
    \( -name 'libcublas.so.13' -o -name 'libcurand.so.10' -o -name 'libnvrtc.so.13' -o -name 'libcuda.so.1' \) \
    -printf '%h\n' 2>/dev/null | grep -v /compat | sort -u | paste -sd:)
export LD_LIBRARY_PATH=$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
ldd "$bin/ferry" | grep -E 'cuda|cublas|curand|nvrtc|not found'

step "real-model tests on the GPU"
# The embedding model is not carried here; its tests run in the CPU suite.
FERRY_MODEL_CACHE=$models RUST_LOG=warn "$bin/real_model" --test-threads 1 \
    --skip embeddings --skip a_corrupt_or_mismatched 2>&1 | tee "$out/real_model.log" || status=1

step "decode speed on the GPU"
for format in native fast f32 hybrid; do
    "$bin/decode_speed" "$gguf" "$format" 2>&1 | tee -a "$out/decode_speed.log" || status=1
done

step "ferry worker on the GPU"
port=18181
RUST_LOG=info "$bin/ferry" worker --addr 127.0.0.1:$port --chat-model "$gguf" \
    --embedding-model none --data-dir /tmp/ferry-cuda-check-data --max-batch 64 --max-queue 1024 \
    >"$out/worker.log" 2>&1 &
worker=$!
for _ in $(seq 1 120); do
    curl -sf "127.0.0.1:$port/readyz" >/dev/null && break
    sleep 0.5
done
grep -iE 'cuda|device|placed|listening' "$out/worker.log" | head -5
nvidia-smi --query-gpu=memory.used --format=csv
python3 - "$port" <<'PY' 2>&1 | tee "$out/worker_check.log" || status=1
import asyncio, json, sys, time
import httpx

url = f"http://127.0.0.1:{sys.argv[1]}/v1/chat/completions"
messages = [
    {"role": "system", "content": "You are a helpful assistant. Answer concisely."},
    {"role": "user", "content": "What is the capital of France?"},
]

def body(max_tokens, **extra):
    return {"model": "smollm2-135m-instruct.q4_1", "messages": messages,
            "max_tokens": max_tokens, "temperature": 0, **extra}

with httpx.Client(timeout=60) as client:
    answer = client.post(url, json=body(30)).json()
    text = answer["choices"][0]["message"]["content"]
    print("greedy:", repr(text), answer["usage"])
    assert "Paris" in text, answer
    chunks = []
    with client.stream("POST", url, json=body(30, stream=True)) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                chunks.append(delta or "")
    print("stream:", repr("".join(chunks)), len(chunks), "chunks")
    assert "".join(chunks) == text

async def load(concurrency, max_tokens=128):
    async with httpx.AsyncClient(timeout=300) as client:
        async def one():
            reply = await client.post(url, json=body(max_tokens, temperature=0.8))
            reply.raise_for_status()
            return reply.json()["usage"]["completion_tokens"]
        started = time.perf_counter()
        tokens = sum(await asyncio.gather(*[one() for _ in range(concurrency)]))
        elapsed = time.perf_counter() - started
        print(f"concurrency {concurrency:>3}: {tokens:>6} tokens in {elapsed:6.2f} s, "
              f"{tokens / elapsed:8.1f} tokens/s")

for concurrency in (1, 8, 32, 64):
    asyncio.run(load(concurrency))
PY
kill "$worker"; wait "$worker" 2>/dev/null
tail -5 "$out/worker.log"
exit $status
