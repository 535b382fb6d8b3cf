"""`ferry pool replay`: a trace through the real autoscaling policies on a simulated clock; the
trace generators of bench/replay; the sweep that compares the policies' frontiers."""

import csv
import json
import os
import subprocess
import sys

FERRY = os.environ.get("FERRY_BIN", "target/debug/ferry")
GENERATE = [sys.executable, "bench/replay/generate.py"]


def replay(trace_path, *args):
    return subprocess.run([FERRY, "pool", "replay", "--trace", str(trace_path), *args], capture_output=True, text=True, timeout=60)


def test_a_bursty_trace_costs_less_with_scale_to_zero_than_always_on(tmp_path):
    # Two bursts of 40 requests an hour apart, idle between: what scale to zero is for.
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for start in (0, 3600):
        for index in range(40):
            second = start + index * 0.5
            lines.append(f"2023-11-16 {10 + int(second // 3600):02d}:{int(second % 3600 // 60):02d}:{second % 60:06.3f},500,100")
    trace = tmp_path / "trace.csv"
    trace.write_text("\n".join(lines) + "\n")
    result = replay(trace)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:]}
    assert set(rows) == {"ferry", "kpa", "always-on"}, result.stdout
    gpu_seconds = {name: float(row[1]) for name, row in rows.items()}
    dropped = {name: int(row[-1]) for name, row in rows.items()}
    assert dropped == {"ferry": 0, "kpa": 0, "always-on": 0}, result.stdout
    assert gpu_seconds["ferry"] < gpu_seconds["always-on"] / 3, result.stdout
    # Each burst starts from zero: its first request waits for a cold start (20 s by default).
    assert int(rows["ferry"][5]) >= 20_000, result.stdout


def test_a_malformed_trace_is_a_clear_error(tmp_path):
    trace = tmp_path / "bad.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,10,5\n")
    result = replay(trace)
    assert result.returncode != 0
    assert "bad.csv" in result.stderr and "line 2: not a trace row" in result.stderr, result.stderr
    trace.write_text("when,prompt,output\n1,10,5\n")
    result = replay(trace)
    assert result.returncode != 0 and "no column for the arrival time" in result.stderr, result.stderr


def test_generated_traces_are_seeded_and_shaped():
    def generate(shape, seed):
        return subprocess.run([*GENERATE, shape, "--seed", str(seed), "--minutes", "10"], capture_output=True, text=True, check=True).stdout

    assert generate("bursty-code", 1) == generate("bursty-code", 1)
    assert generate("bursty-code", 1) != generate("bursty-code", 2)
    long_context = list(csv.DictReader(generate("long-context", 1).splitlines()))
    prompts = sorted(int(row["ContextTokens"]) for row in long_context)
    assert len(long_context) > 300 and 5_000 <= prompts[0] and prompts[-1] <= 100_000
    assert 9_000 < sum(prompts) / len(prompts) < 20_000
    code = list(csv.DictReader(generate("bursty-code", 1).splitlines()))
    assert sum(int(row["GeneratedTokens"]) for row in code) / len(code) < 40


def test_a_sweep_prints_each_policys_frontier_and_compares_them(tmp_path):
    trace = tmp_path / "bursty.csv"
    trace.write_text(subprocess.run([*GENERATE, "bursty-code", "--minutes", "10"], capture_output=True, text=True, check=True).stdout)
    sweep = tmp_path / "sweep.csv"
    result = replay(trace, "--sweep", "--csv", str(sweep))
    assert result.returncode == 0, result.stderr
    assert "ferry / kpa GPU-seconds at matched p99:" in result.stdout, result.stdout
    points = list(csv.DictReader(sweep.open()))
    assert {row["policy"] for row in points} == {"ferry", "kpa"}
    assert len(points) == 60, "the same grid of 30 settings for each policy"
    for policy in ("ferry", "kpa"):
        mine = [row for row in points if row["policy"] == policy and row["dropped"] == "0"]
        frontier = [row for row in mine if row["on_frontier"] == "true"]
        assert frontier, policy

        def beats(a, b):
            a99, b99 = int(a["queue_p99_ms"]), int(b["queue_p99_ms"])
            ag, bg = float(a["gpu_seconds"]), float(b["gpu_seconds"])
            return a99 <= b99 and ag <= bg and (a99 < b99 or ag < bg)

        # Nothing beats a frontier setting; every other setting is beaten by, or ties, one on it.
        assert not any(beats(other, point) for point in frontier for other in mine), policy
        for row in mine:
            if row["on_frontier"] != "true":
                assert any(beats(point, row) or (point["queue_p99_ms"], point["gpu_seconds"]) == (row["queue_p99_ms"], row["gpu_seconds"]) for point in frontier), row


def test_mooncake_json_lines_replay_slowed_down(tmp_path):
    # Mooncake's format: milliseconds, input and output lengths, block hashes (ignored).
    trace = tmp_path / "conversation_trace.jsonl"
    trace.write_text("".join(json.dumps({"timestamp": i * 3000, "input_length": 12_000 + i, "output_length": 300, "hash_ids": [i]}) + "\n" for i in range(60)))
    as_is = replay(trace, "--policy", "ferry")
    slowed = replay(trace, "--policy", "ferry", "--time-scale", "4")
    assert as_is.returncode == 0 and slowed.returncode == 0, as_is.stderr + slowed.stderr
    assert "60 requests over 177 s" in as_is.stdout, as_is.stdout
    assert "60 requests over 708 s" in slowed.stdout, slowed.stdout
