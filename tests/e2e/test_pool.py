"""`ferry pool replay`: a trace through the real autoscaling policies on a simulated clock."""

import os
import subprocess

FERRY = os.environ.get("FERRY_BIN", "target/debug/ferry")


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
    assert "bad.csv:2: not a trace row" in result.stderr
