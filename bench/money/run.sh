#!/usr/bin/env bash
# Settled calls per second with durable metering (see BENCHMARKS.md). Release build.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo run --release --locked -p ferry-bench-money -- "$@"
