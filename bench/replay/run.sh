#!/usr/bin/env bash
# Autoscaling replay (issues 6, 23): traces through Ferry's policy and Knative's KPA on a
# simulated clock, each policy swept over the same grid of knobs (`ferry pool replay --sweep`),
# frontiers of GPU-seconds against p99 queueing delay printed and plotted.
#   bash bench/replay/run.sh [--debug] [--tiny] [FLAGS...]
# Traces: the Azure LLM inference traces of 2023 (CC-BY 4.0, read from the team folder,
# FERRY_TRACES; skipped where absent) and the generated shapes of bench/replay/generate.py
# (seed FERRY_TRACE_SEED, default 1). --tiny: ten-minute generated traces and no Azure ones, as
# the test suite runs it. Extra flags go to every replay (e.g. --cold-start-seconds 60).
# Output: target/replay/SHAPE.csv (every setting), target/replay/frontiers.png.
set -euo pipefail
cd "$(dirname "$0")/../.."
ferry=target/release/ferry
tiny=false
while [[ $# -gt 0 ]]; do
    case $1 in
        --debug) ferry=target/debug/ferry ;;
        --tiny) tiny=true ;;
        *) break ;;
    esac
    shift
done
[[ $ferry == target/release/ferry ]] && cargo build --release --locked -p ferry --bin ferry
out=target/replay
mkdir -p "$out/traces"
seed=${FERRY_TRACE_SEED:-1}
if $tiny; then
    python3 bench/replay/generate.py --all "$out/traces" --seed "$seed" --minutes 10
else
    python3 bench/replay/generate.py --all "$out/traces" --seed "$seed"
fi
traces=("$out"/traces/*.csv)
azure=${FERRY_TRACES:-../shared/data/traces}
if ! $tiny; then
    for trace in "$azure"/azure_llm_2023_code.csv "$azure"/azure_llm_2023_conv.csv; do
        [[ -f $trace ]] && traces=("$trace" "${traces[@]}")
    done
fi
sweeps=()
for trace in "${traces[@]}"; do
    name=$(basename "$trace" .csv)
    "$ferry" pool replay --trace "$trace" --sweep --csv "$out/$name.csv" "$@"
    sweeps+=("$out/$name.csv")
    echo
done
python=bench/gateway/.venv/bin/python
if [[ ! -x $python ]]; then
    python3 -m venv bench/gateway/.venv
    "$python" -m pip install --quiet --disable-pip-version-check -r bench/gateway/requirements.txt
fi
"$python" bench/replay/plot.py "$out/frontiers.png" "${sweeps[@]}"
