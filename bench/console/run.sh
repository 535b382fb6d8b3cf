#!/usr/bin/env bash
# The console's API calls at 1,000,000 usage events and 100,000 keys (see BENCHMARKS.md).
# Release build; seeding takes a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo run --release --locked -p ferry-bench-console -- "$@"
