#!/usr/bin/env bash
# Autoscaling replay (issue 6): the Azure LLM inference traces of 2023 (CC-BY 4.0, read from
# the team folder; any trace in the same CSV format works) through Ferry's policy, Knative's
# KPA and an always-on pool at the peak, on a simulated clock. Extra flags go to every replay
# (e.g. --cold-start-seconds 60, --decode-tokens-per-s 40).
#   bash bench/replay/run.sh [--debug] [FLAGS...]
set -euo pipefail
cd "$(dirname "$0")/../.."
ferry=target/release/ferry
if [[ ${1:-} == --debug ]]; then
    ferry=target/debug/ferry
    shift
else
    cargo build --release --locked -p ferry --bin ferry
fi
traces=${FERRY_TRACES:-../shared/data/traces}
for trace in "$traces"/azure_llm_2023_code.csv "$traces"/azure_llm_2023_conv.csv; do
    if [[ ! -f $trace ]]; then
        echo "no trace at $trace (set FERRY_TRACES)" >&2
        exit 1
    fi
    "$ferry" pool replay --trace "$trace" "$@"
    echo
done
