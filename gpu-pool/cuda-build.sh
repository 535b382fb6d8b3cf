#!/usr/bin/env bash
# Builds the `cuda` worker on a machine with no GPU and no CUDA toolkit: CUDA 13.0's compiler
# and libraries come from their Python wheels, and the driver (libcuda), which only a GPU
# machine has, is linked against a stub made from cudarc's own symbol list. The binaries then
# run where a CUDA 13 driver and CUDA 13 libraries are installed (`gpu-pool/cuda-check.sh`).
#
#   gpu-pool/cuda-build.sh OUT_DIR     (CUDA_COMPUTE_CAP defaults to 90, Hopper)
#
# PTX from nvcc 13.0 loads on drivers for CUDA ≥ 13.0; a newer nvcc writes PTX that older
# drivers refuse, so the compiler is pinned to the oldest CUDA 13.
set -euo pipefail
out=$(mkdir -p "$1" && realpath "$1")
root=$(cd "$(dirname "$0")/.." && pwd)
tools=${FERRY_CUDA_TOOLS:-$root/target/cuda-toolkit}
target=${CARGO_TARGET_DIR:-$root/target/cuda}
cuda=$tools/nvidia/cu13
if [[ ! -x $cuda/bin/nvcc ]]; then
    python3 -m pip install -q --no-deps --target "$tools" \
        nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-cccl==13.0.85 \
        nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
fi
if [[ ! -e $cuda/lib/libcuda.so ]]; then
    sys=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*cudarc-0.19.*/src/driver/sys/mod.rs' | head -1)
    grep -oP '^pub unsafe fn \Kcu\w+(?=\()' "$sys" | sort -u |
        awk '{ print "void " $1 "(void) {}" }' >"$tools/libcuda-stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda/lib/libcuda.so" "$tools/libcuda-stub.c"
    for lib in cublas cublasLt curand nvrtc cudart; do
        ln -sf "$(cd "$cuda/lib" && ls "lib$lib.so."* | head -1)" "$cuda/lib/lib$lib.so"
    done
fi
export PATH=$cuda/bin:$PATH CUDA_PATH=$cuda CUDA_ROOT=$cuda CARGO_TARGET_DIR=$target
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
cd "$root"
cargo build --release --locked -p ferry-worker --features cuda --example decode_speed
tests=$(cargo test --release --locked -p ferry-worker --features cuda --test real_model \
    --no-run --message-format json 2>/dev/null |
    python3 -c 'import json, sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable") and m["target"]["name"] == "real_model"][0])')
cargo build --release --locked --features cuda --bin ferry
cp "$target/release/ferry" "$target/release/examples/decode_speed" "$out/"
cp "$tests" "$out/real_model"
strip "$out"/*
ls -la "$out"
