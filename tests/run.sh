#!/usr/bin/env bash
# The whole test suite, from a fresh clone: Rust unit, router and integration tests; the wasm
# build of the domain crate; and end-to-end tests that drive the real `ferry` binary with the
# official OpenAI Python SDK.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Python side first: the OpenAI SDK for the end-to-end tests; moto, the local
# AWS-compatible server the AWS adapters are tested against; cargo-lambda, the Lambda emulator.
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt

rustup target add wasm32-wasip1 >/dev/null
# With the AWS runtime (an optional feature, so `ferry serve`'s own build stays quick): one
# build serves every test, and the AWS adapters are tested against moto.
cargo build --workspace --bins --locked --features ferry/aws
MOTO_SERVER="$PWD/.venv/bin/moto_server" cargo test --workspace --locked --features ferry/aws
cargo build -p ferry-core -p ferry-edge --target wasm32-wasip1 --locked

# The edge component, both ways: with files for its store (what the end-to-end test runs under
# `wasmtime serve`), then with Spin's key-value store (what `edge/spin.toml` runs; built last,
# so spin.toml's path holds it). Their sizes are reported.
rustup target add wasm32-wasip2 >/dev/null
for store in files spin; do
    cargo build -p ferry-edge --target wasm32-wasip2 --profile edge --locked --features "$store-kv"
    cp target/wasm32-wasip2/edge/ferry_edge.wasm "target/ferry-edge-$store.wasm"
done
wc -c target/ferry-edge-files.wasm target/ferry-edge-spin.wasm
# The Wasm host it runs under (no Spin CLI can be installed from the registries), built once.
if [[ ! -x .tools/wasmtime/bin/wasmtime ]]; then
    cargo install wasmtime-cli@48.0.8 --locked --root .tools/wasmtime --no-default-features \
        --features run,serve,wasi-http,component-model,component-model-async,cranelift,parallel-compilation
fi

FERRY_BIN=target/debug/ferry .venv/bin/python -m pytest tests/e2e -q

# Every benchmark, tiny: still working end to end (no timing is checked).
bash bench/tiny.sh
