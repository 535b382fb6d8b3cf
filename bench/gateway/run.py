#!/usr/bin/env python3
"""Gateway overhead: the same constant-rate load straight to a zero-delay mock upstream and
through `ferry serve` with the whole pay-per-call pipeline on (API-key auth, key rate limits,
a daily budget, a prepaid hold and its settlement, durable metering), side by side at each
rate, in one run. Prints a table (and the JSON lines behind it).

    python3 bench/gateway/run.py                      # rates 1000 5000 10000, 10 s each
    python3 bench/gateway/run.py --rates 500 --duration 2 --tiny   # what CI runs
    python3 bench/gateway/run.py --litellm            # and LiteLLM's proxy on the same mock
    python3 bench/gateway/run.py --stream             # streamed: time to first byte, per chunk
    python3 bench/gateway/run.py --streams 9000       # memory per open stream
    python3 bench/gateway/run.py --cold-start         # process start to first answer; size
    ... --plot overhead.png                           # latency against offered load

Uses release builds; stdlib only (LiteLLM goes into bench/gateway/.venv on first use).
"""

import argparse
import json
import os
import pathlib
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Where the binaries are: the release build, or the debug build for `--debug` (CI's tiny run).
RELEASE = ROOT / "target" / "release"
ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
VENV = ROOT / "bench" / "gateway" / ".venv"
REQUIREMENTS = ROOT / "bench" / "gateway" / "requirements.txt"


def make_key():
    part = lambda n: "".join(ALPHABET[b & 31] for b in secrets.token_bytes(n))  # noqa: E731
    return f"fy_{part(12)}_{part(32)}"


def start(command, env=None):
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})
    for line in process.stdout:
        if line.startswith("listening on "):
            return process, line.split()[-1].strip()
    raise RuntimeError(f"{command[0]} did not start")


def call(url, key, body, timeout=10):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def process_figures(pid):
    """Peak RSS (MiB) and CPU seconds so far of a process."""
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    peak_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return peak_kib / 1024, (int(fields[11]) + int(fields[12])) / ticks


def current_rss_mib(pid):
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024


def load(url, key, rate, duration, label, stream=False, model="bench-model"):
    command = [str(RELEASE / "ferry-bench-load"), "--url", url, "--rate", str(rate), "--duration", str(duration), "--label", label, "--model", model]
    if stream:
        command.append("--stream")
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "FERRY_BENCH_KEY": key or ""}, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench_venv():
    """bench/gateway/.venv with requirements.txt (LiteLLM, matplotlib), made on first use
    (tests/run.sh makes it ahead, in its cache)."""
    marker = VENV / ".installed"
    if marker.exists() and marker.read_text() == REQUIREMENTS.read_text():
        return
    if not (VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "-r", str(REQUIREMENTS)], check=True)
    marker.write_text(REQUIREMENTS.read_text())


def start_litellm(mock_url, workdir):
    """LiteLLM's proxy in front of the same mock: master key, local cost map, no database."""
    bench_venv()
    config = pathlib.Path(workdir) / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: bench-model\n    litellm_params:\n"
        f"      model: openai/mock\n      api_base: {mock_url}/v1\n      api_key: dummy\n"
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    key = "sk-bench-" + secrets.token_hex(8)
    process = subprocess.Popen(
        [str(VENV / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=open(pathlib.Path(workdir) / "litellm.log", "w"), cwd=workdir,
        env={**os.environ, "LITELLM_MASTER_KEY": key, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health/liveliness", timeout=2).read()
            return process, url, key
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("LiteLLM did not start")


def cold_start(mock_url, rounds):
    """Process start to first successful chat completion (what a Lambda or Knative cold start
    pays), on a fresh data directory and on an existing one; and the stripped binary's size."""
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="ferry-cold-"))
    (workdir / "ferry.toml").write_text(
        f'[[models]]\nid = "bench-model"\ndeployments = [{{ id = "mock", upstream = {{ url = "{mock_url}/v1", model = "mock" }} }}]\n'
    )
    operator = make_key()
    body = json.dumps({"model": "bench-model", "messages": [{"role": "user", "content": "hi"}]}).encode()
    results = {}
    for kind in ("fresh", "existing"):
        samples = []
        for round_index in range(rounds):
            data_dir = workdir / (f"fresh-{round_index}" if kind == "fresh" else "existing")
            data_dir.mkdir(exist_ok=True)
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            began = time.monotonic()
            process = subprocess.Popen(
                [str(RELEASE / "ferry"), "serve", "--addr", f"127.0.0.1:{port}", "--data-dir", str(data_dir), "--config", str(workdir / "ferry.toml"), "--no-local-models"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "FERRY_OPERATOR_KEY": operator, "FERRY_LOG": "error"},
            )
            try:
                while True:
                    try:
                        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body, headers={"Authorization": f"Bearer {operator}", "Content-Type": "application/json"})
                        with urllib.request.urlopen(request, timeout=5) as response:
                            if response.status == 200:
                                break
                    except OSError:
                        time.sleep(0.001)
                    if time.monotonic() - began > 30:
                        raise RuntimeError("ferry did not answer within 30 s")
                samples.append((time.monotonic() - began) * 1000)
            finally:
                process.terminate()
                process.wait(timeout=10)
        samples.sort()
        results[kind] = samples[len(samples) // 2]
    stripped = workdir / "ferry-stripped"
    subprocess.run(["strip", "-o", str(stripped), str(RELEASE / "ferry")], check=True)
    results["binary_mib"] = (RELEASE / "ferry").stat().st_size / 2**20
    results["stripped_mib"] = stripped.stat().st_size / 2**20
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", type=float, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--tiny", action="store_true", help="check it works; no figures worth reading")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--debug", action="store_true", help="use the debug build as it is (what CI's tiny run does)")
    parser.add_argument("--litellm", action="store_true", help="also load LiteLLM's proxy on the same mock")
    parser.add_argument("--cold-start", action="store_true", help="only measure cold start and binary size")
    parser.add_argument("--stream", action="store_true", help="streamed calls (16 chunks each); adds time to first byte")
    parser.add_argument("--streams", type=int, metavar="N", help="only hold N streams open at once (one chunk a second) and measure memory per stream")
    parser.add_argument("--no-read-cache", action="store_true", help="Ferry reads tenants, models and prices from the store on every call (what the cache saves)")
    parser.add_argument("--plot", metavar="PNG", help="also draw latency against offered load (matplotlib goes into bench/gateway/.venv)")
    args = parser.parse_args()
    if args.debug:
        global RELEASE
        RELEASE = ROOT / "target" / "debug"
    elif not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "ferry", "--bin", "ferry"], cwd=ROOT, check=True)
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "ferry-bench-gateway"], cwd=ROOT, check=True)

    mock, mock_url = start([str(RELEASE / "ferry-bench-mock")])
    if args.cold_start:
        try:
            figures = cold_start(mock_url, rounds=1 if args.tiny else 5)
        finally:
            mock.kill()
        print(f"cold start: process start to first successful chat completion (median of {1 if args.tiny else 5})")
        print(f"  fresh data directory (migrations, operator key): {figures['fresh']:.1f} ms")
        print(f"  existing data directory:                        {figures['existing']:.1f} ms")
        print(f"binary: {figures['binary_mib']:.1f} MiB, stripped {figures['stripped_mib']:.1f} MiB (includes the native engine)")
        return
    litellm = slow_mock = None
    operator = make_key()
    data_dir = tempfile.mkdtemp(prefix="ferry-bench-gateway-")
    if args.no_read_cache:
        pathlib.Path(data_dir, "ferry.toml").write_text("[server]\nread_cache_ttl_seconds = 0\n")
    ferry, ferry_url = start(
        [str(RELEASE / "ferry"), "serve", "--addr", "127.0.0.1:0", "--data-dir", data_dir, "--no-local-models"],
        env={"FERRY_OPERATOR_KEY": operator, "FERRY_LOG": "error"},
    )
    try:
        admin = f"{ferry_url}/admin/v1"
        price = {"input_per_mtok_usd": "0.15", "output_per_mtok_usd": "0.60", "per_call_usd": "0.0001"}
        call(f"{admin}/models", operator, {
            "id": "bench-model",
            "deployments": [{"id": "mock", "upstream": {"url": f"{mock_url}/v1", "model": "mock"}}],
            "price": price,
            "max_output_tokens": 64,
        })
        if args.streams:
            # Streams that stay open: a chunk a second, 16 of them.
            slow_mock, slow_url = start([str(RELEASE / "ferry-bench-mock"), "--chunk-delay-ms", "100" if args.tiny else "1000"])
            call(f"{admin}/models", operator, {
                "id": "bench-slow",
                "deployments": [{"id": "slow", "upstream": {"url": f"{slow_url}/v1", "model": "mock"}}],
                "price": price,
                "max_output_tokens": 64,
            })
        tenant = call(f"{admin}/tenants", operator, {"name": "bench"})
        call(f"{admin}/tenants/{tenant['id']}/credits", operator, {"amount_usd": "1000000"})
        key = call(f"{admin}/tenants/{tenant['id']}/keys", operator, {
            "name": "bench", "role": "member",
            "limits": {"rpm": 100000000, "tpm": 1000000000},
            "budgets": [{"period": "day", "amount_usd": "1000000"}],
        })["key"]
        # One call each way first: connections, caches and the store's first pages.
        call(f"{ferry_url}/v1/chat/completions", key, {"model": "bench-model", "messages": [{"role": "user", "content": "hi"}]})
        if args.litellm:
            litellm, litellm_url, litellm_key = start_litellm(mock_url, data_dir)
            # LiteLLM's first call imports and builds a great deal (seconds here, more on a loaded
            # machine); it is the warm-up, not a measurement, so it may take its time.
            try:
                call(f"{litellm_url}/v1/chat/completions", litellm_key, {"model": "bench-model", "messages": [{"role": "user", "content": "hi"}]}, timeout=120)
            except OSError:
                print(pathlib.Path(data_dir, "litellm.log").read_text()[-4000:], file=sys.stderr)
                raise

        if args.streams:
            hold_streams(args, ferry, ferry_url, key, slow_url)
            reconcile_or_exit(ferry, data_dir, [])
            return

        rows = []
        for rate in args.rates:
            direct = load(f"{mock_url}/v1/chat/completions", None, rate, args.duration, "direct", args.stream)
            _, cpu_before = process_figures(ferry.pid)
            through = load(f"{ferry_url}/v1/chat/completions", key, rate, args.duration, "ferry", args.stream)
            peak_mib, cpu_after = process_figures(ferry.pid)
            through["ferry_cpu_s_per_1k"] = (cpu_after - cpu_before) / max(through["requests"], 1) * 1000
            through["ferry_peak_rss_mib"] = peak_mib
            rows += [direct, through]
            if litellm:
                rows.append(load(f"{litellm_url}/v1/chat/completions", litellm_key, rate, args.duration, "litellm", args.stream))
            for row in rows[-3:] if litellm else (direct, through):
                print(json.dumps(row), file=sys.stderr)

        print(f"\ngateway overhead, {args.duration:g} s per row, mock + load generator + gateway on one machine ({os.cpu_count()} CPUs)")
        print(f"{'target':<8} {'offered':>8} {'achieved':>9} {'errors':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'cpu s/1k':>9} {'peak MiB':>9}" + ("  ttfb p50/p99 ms  body p50/p99 ms" if args.stream else ""))
        for row in rows:
            cpu = f"{row['ferry_cpu_s_per_1k']:.3f}" if "ferry_cpu_s_per_1k" in row else "-"
            rss = f"{row['ferry_peak_rss_mib']:.0f}" if "ferry_peak_rss_mib" in row else "-"
            ttfb = f"  {row['ttfb_p50_ms'] or 0:.2f}/{row['ttfb_p99_ms'] or 0:.2f}  {row['body_p50_ms'] or 0:.2f}/{row['body_p99_ms'] or 0:.2f}" if args.stream else ""
            ms = lambda key, width: f"{row[key]:>{width}.2f}" if row.get(key) is not None else f"{'-':>{width}}"  # noqa: E731
            print(f"{row['label']:<8} {row['offered_rps']:>8.0f} {row['achieved_rps']:>9.0f} {row['errors']:>7} {ms('p50_ms', 8)} {ms('p90_ms', 8)} {ms('p99_ms', 8)} {ms('p999_ms', 9)} {cpu:>9} {rss:>9}{ttfb}")
        if args.plot:
            plot(rows, args.plot, args.stream)
        reconcile_or_exit(ferry, data_dir, rows if args.tiny else [])
    finally:
        for process in (ferry, mock, litellm, slow_mock):
            if process is not None and process.poll() is None:
                process.kill()


def hold_streams(args, ferry, ferry_url, key, slow_url):
    """N streams open at once, straight to the slow mock and through Ferry: Ferry's resident
    memory before and at its peak, per open stream."""
    ramp = args.streams if args.tiny else min(args.streams / 10, 1000)
    duration = args.streams / ramp
    direct = load(f"{slow_url}/v1/chat/completions", None, ramp, duration, "direct", True, "bench-slow")
    idle = current_rss_mib(ferry.pid)
    through = load(f"{ferry_url}/v1/chat/completions", key, ramp, duration, "ferry", True, "bench-slow")
    peak, _ = process_figures(ferry.pid)
    for row in (direct, through):
        print(json.dumps(row), file=sys.stderr)
    opened = max(through["max_open_streams"], 1)
    print(f"\n{args.streams} streams of 16 chunks {'0.1' if args.tiny else '1'} s apart, opened over {duration:g} s ({os.cpu_count()} CPUs)")
    print(f"{'target':<8} {'streams':>8} {'most open':>10} {'errors':>7} {'ttfb p50 ms':>12} {'ttfb p99 ms':>12}")
    for row in (direct, through):
        print(f"{row['label']:<8} {row['requests']:>8} {row['max_open_streams']:>10} {row['errors']:>7} {row['ttfb_p50_ms']:>12.2f} {row['ttfb_p99_ms']:>12.2f}")
    print(f"ferry resident memory: {idle:.1f} MiB idle, {peak:.1f} MiB at most, {(peak - idle) * 1024 / opened:.1f} KiB per open stream")
    if args.tiny and (direct["errors"] or through["errors"]):
        sys.exit(1)


def reconcile_or_exit(ferry, data_dir, rows):
    """Every call through Ferry was charged: the books must still reconcile (and, for a tiny
    run, no call may have failed)."""
    ferry.terminate()
    ferry.wait(timeout=10)
    reconcile = subprocess.run([str(RELEASE / "ferry"), "billing", "reconcile", "--data-dir", data_dir], capture_output=True, text=True)
    print(reconcile.stdout.strip().splitlines()[-1])
    if reconcile.returncode != 0 or any(row["errors"] for row in rows):
        sys.exit(1)


PLOT = """
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows, path, title = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
figure, axes = plt.subplots(figsize=(7, 4.5))
for label in dict.fromkeys(row["label"] for row in rows):
    mine = sorted((row for row in rows if row["label"] == label and row["p99_ms"] is not None), key=lambda row: row["offered_rps"])
    rates = [row["offered_rps"] for row in mine]
    line, = axes.plot(rates, [row["p99_ms"] for row in mine], marker="o", label=f"{label} p99")
    axes.plot(rates, [row["p50_ms"] for row in mine], marker=".", linestyle="--", color=line.get_color(), label=f"{label} p50")
axes.set_xlabel("offered load (requests/s)")
axes.set_ylabel("latency (ms, log scale)")
axes.set_yscale("log")
rates = [row["offered_rps"] for row in rows]
if max(rates) >= 10 * min(rates):
    axes.set_xscale("log")
axes.set_title(title)
axes.grid(True, which="both", alpha=0.3)
axes.legend(fontsize=8)
figure.tight_layout()
figure.savefig(path, dpi=110)
"""


def plot(rows, path, stream):
    """Latency percentiles against offered load, one line per target."""
    bench_venv()
    title = f"{'streamed' if stream else 'whole'} chat completions, zero-delay mock, {os.cpu_count()} CPUs"
    subprocess.run([str(VENV / "bin" / "python"), "-c", PLOT, json.dumps(rows), path, title], check=True)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
