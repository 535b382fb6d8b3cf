#!/usr/bin/env bash
# The console's API calls at 1,000,000 usage events and 100,000 keys (see BENCHMARKS.md).
# Release build; seeding takes a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo run --release --locked -p ferry-bench-console -- "${@/--no-pages/}"
# Then the pages themselves in Chromium, from a cold browser cache (needs console/node_modules:
# `npm ci` in console/, and Debian's chromium).
if [[ -d console/node_modules && $* != *--no-pages* ]]; then
    cargo build --locked -p ferry
    (cd console && FERRY_PAGE_LOAD=1 FERRY_BIN=../target/debug/ferry npx playwright test page-load --reporter line)
fi
