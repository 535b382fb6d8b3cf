#!/usr/bin/env python3
"""Soak and exhaustion: does Ferry hold up for a long time, and against more connections than
it may keep?

1. Soak: `ferry serve` with the whole pay-per-call pipeline on (API-key auth, rate limits, a
   budget, prepaid holds and settlements, durable metering, metrics) takes plain and streamed
   calls at a steady rate for --minutes; its resident memory and open file descriptors are
   sampled every 10 s, and `/healthz` is timed on the same beat. Afterwards the books must
   reconcile.
2. Exhaustion: --attempts connections are opened against its connection cap, each held silent
   once accepted. Meanwhile a client on a connection opened before the flood keeps calling
   `/healthz` and a model, and a fresh connection tries `/healthz` every second. Then the held
   connections must be closed by the idle timeout and new connections served again.
3. HTTP/2 rapid reset: --resets streams opened and cancelled at once on one connection.

    python3 bench/soak/run.py                     # 30 minutes, then 25,000 connections
    python3 bench/soak/run.py --tiny --debug      # what CI runs: seconds, not minutes
    ... --plot target/soak.png                    # RSS and descriptors over time

Uses release builds (`--debug`: the debug build as it is); stdlib only, but for the plot.
"""

import argparse
import asyncio
import http.client
import importlib.util
import json
import os
import pathlib
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("gateway_bench", ROOT / "bench" / "gateway" / "run.py")
gateway = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gateway)

HEALTH_TIMEOUT = 5.0
# How long the gateway keeps an idle connection to an upstream (`upstream::HttpUpstream`).
UPSTREAM_POOL_IDLE_S = 90


def rss_mib(pid):
    return gateway.current_rss_mib(pid)


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def timed_get(url, timeout=HEALTH_TIMEOUT):
    """(status or None, milliseconds) of one GET on a fresh connection."""
    began = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except OSError:
        status = None
    return status, (time.monotonic() - began) * 1000


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


class Sampler(threading.Thread):
    """Every `every` seconds: Ferry's RSS, its open descriptors and one `/healthz`."""

    def __init__(self, pid, url, every):
        super().__init__(daemon=True)
        self.pid, self.url, self.every = pid, url, every
        self.samples = []
        self.stopping = threading.Event()
        self.began = time.monotonic()

    def run(self):
        while not self.stopping.is_set():
            status, ms = timed_get(f"{self.url}/healthz")
            self.samples.append({
                "t": time.monotonic() - self.began,
                "rss_mib": rss_mib(self.pid),
                "fds": open_fds(self.pid),
                "healthz": status,
                "healthz_ms": ms,
            })
            self.stopping.wait(self.every)


def soak(args, ferry, url, key):
    """Plain and streamed calls at steady rates for the whole soak, sampled all along."""
    seconds = args.minutes * 60
    sampler = Sampler(ferry.pid, url, args.sample_seconds)
    sampler.start()
    loads = {}

    def run_load(label, rate, stream, model):
        loads[label] = gateway.load(f"{url}/v1/chat/completions", key, rate, seconds, label, stream, model)

    threads = [
        threading.Thread(target=run_load, args=("plain", args.rate, False, "bench-model")),
        threading.Thread(target=run_load, args=("streamed", args.stream_rate, True, "bench-slow")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sampler.stopping.set()
    sampler.join()
    return sampler.samples, loads


def summarize_soak(samples, loads, minutes, every):
    """The figures the soak is judged by: RSS growth over its last two thirds, descriptors."""
    total = samples[-1]["t"]
    third = total / 3
    late = [s for s in samples if s["t"] >= third]
    start_rss, end_rss = late[0]["rss_mib"], late[-1]["rss_mib"]
    growth = (end_rss - start_rss) / start_rss * 100
    health = [s["healthz_ms"] for s in samples]
    failed_health = sum(1 for s in samples if s["healthz"] != 200)
    fds = [s["fds"] for s in samples]
    print(f"\nsoak: {minutes:g} min, {len(samples)} samples {every:g} s apart ({os.cpu_count()} CPUs; load generators, mock and Ferry on one machine)")
    print(f"{'load':<9} {'offered/s':>9} {'achieved/s':>10} {'calls':>8} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9}")
    for label, row in loads.items():
        print(f"{label:<9} {row['offered_rps']:>9.0f} {row['achieved_rps']:>10.0f} {row['requests']:>8} {row['errors']:>7} {row['p50_ms'] or 0:>8.2f} {row['p99_ms'] or 0:>8.2f} {row['p999_ms'] or 0:>9.2f}")
    print(f"RSS: {samples[0]['rss_mib']:.1f} MiB at start, {start_rss:.1f} MiB at {third / 60:.1f} min, {end_rss:.1f} MiB at the end: "
          f"{growth:+.2f} % over the last {(total - third) / 60:.1f} min (peak {max(s['rss_mib'] for s in samples):.1f} MiB)")
    print(f"descriptors: {fds[0]} at start, {fds[-1]} at the end, {min(fds)}..{max(fds)} throughout")
    print(f"/healthz on a fresh connection every {every:g} s: {len(samples) - failed_health}/{len(samples)} answered 200, "
          f"median {statistics.median(health):.2f} ms, max {max(health):.2f} ms")
    return {"rss_growth_pct": growth, "fds_start": fds[0], "fds_end": fds[-1], "healthz_failed": failed_health,
            "errors": sum(row["errors"] for row in loads.values())}


async def flood(host, port, attempts, per_second, outcome):
    """Opens `attempts` connections at `per_second`; each refused one (503 at once) is closed,
    each accepted one is held silent until Ferry closes it."""
    held, closed_by_ferry = [], []

    async def one():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            outcome["connect_errors"] += 1
            return
        opened = time.monotonic()
        try:
            # A refusal is written at once; silence means the connection was taken.
            first = await asyncio.wait_for(reader.read(1024), timeout=0.5)
        except asyncio.TimeoutError:
            outcome["held"] += 1
            outcome["most_held"] = max(outcome["most_held"], outcome["held"])
            held.append(writer)
            try:
                await reader.read(1024)  # until Ferry closes it
            except OSError:
                pass
            closed_by_ferry.append(time.monotonic() - opened)
            outcome["held"] -= 1
            writer.close()
            return
        except OSError:
            first = b""
        if first.startswith(b"HTTP/1.1 503"):
            outcome["refused_503"] += 1
        else:
            outcome["closed_other"] += 1
        writer.close()

    tasks = []
    began = time.monotonic()
    for index in range(attempts):
        due = began + index / per_second
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        tasks.append(asyncio.create_task(one()))
    outcome["flood_seconds"] = time.monotonic() - began
    await asyncio.gather(*tasks)
    outcome["held_closed_after_s"] = sorted(closed_by_ferry)


class KeptClient(threading.Thread):
    """One connection opened before the flood, calling `/healthz` and a model twice a second."""

    def __init__(self, url, key):
        super().__init__(daemon=True)
        host, port = url.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=10)
        self.connection.request("GET", "/healthz")
        self.connection.getresponse().read()
        self.key = key
        self.health_ms, self.calls_ok, self.failures = [], 0, 0
        self.stopping = threading.Event()

    def run(self):
        body = json.dumps({"model": "bench-model", "messages": [{"role": "user", "content": "hi"}]})
        while not self.stopping.is_set():
            try:
                began = time.monotonic()
                self.connection.request("GET", "/healthz")
                status = self.connection.getresponse()
                status.read()
                self.health_ms.append((time.monotonic() - began) * 1000)
                self.connection.request("POST", "/v1/chat/completions", body=body,
                                        headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"})
                answer = self.connection.getresponse()
                answer.read()
                if status.status == 200 and answer.status == 200:
                    self.calls_ok += 1
                else:
                    self.failures += 1
            except OSError:
                self.failures += 1
                self.connection.close()
            self.stopping.wait(0.5)


def exhaustion(args, ferry, url, key):
    host, port = url.removeprefix("http://").split(":")
    outcome = {"connect_errors": 0, "held": 0, "most_held": 0, "refused_503": 0, "closed_other": 0}
    kept = KeptClient(url, key)
    kept.start()
    fresh = []
    peak = {"fds": 0, "rss": 0.0}
    stop_watch = threading.Event()

    def watch():
        while not stop_watch.is_set():
            status, ms = timed_get(f"{url}/healthz", timeout=2)
            fresh.append((time.monotonic(), status, ms))
            peak["fds"] = max(peak["fds"], open_fds(ferry.pid))
            peak["rss"] = max(peak["rss"], rss_mib(ferry.pid))
            stop_watch.wait(1.0)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    began = time.monotonic()
    asyncio.run(flood(host, int(port), args.attempts, args.connect_rate, outcome))
    # The held connections are gone (closed by Ferry's idle timeout): new ones are served again.
    after, _ = timed_get(f"{url}/healthz")
    stop_watch.set()
    watcher.join()
    kept.stopping.set()
    kept.join()
    flood_end = began + outcome["flood_seconds"]
    during = [status for at, status, _ in fresh if at <= flood_end]
    closed = outcome["held_closed_after_s"]
    print(f"\nexhaustion: {args.attempts} connections at {args.connect_rate:g}/s against max_connections = {args.max_connections} "
          f"(idle timeout {args.idle_timeout} s; process descriptor limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]})")
    print(f"  accepted and held silent: {len(closed)} (at most {outcome['most_held']} at once); refused at once with 503: {outcome['refused_503']}; "
          f"connect errors: {outcome['connect_errors']}; closed otherwise: {outcome['closed_other']}")
    if closed:
        print(f"  held connections closed by Ferry after {closed[0]:.1f}..{closed[-1]:.1f} s (median {statistics.median(closed):.1f} s)")
    print(f"  Ferry at its peak: {peak['fds']} descriptors, {peak['rss']:.1f} MiB resident")
    health = sorted(kept.health_ms)
    if health:
        print(f"  a connection opened before: {len(health)} /healthz (median {statistics.median(health):.2f} ms, p99 {percentile(health, 0.99):.2f} ms, max {health[-1]:.2f} ms), "
              f"{kept.calls_ok} model calls answered, {kept.failures} failures")
    print(f"  a fresh connection each second during the flood: {during.count(200)} served, {during.count(503)} refused (503), "
          f"{sum(1 for s in during if s not in (200, 503))} failed; after it: /healthz {after}")
    return {"kept_failures": kept.failures, "kept_calls": kept.calls_ok, "after": after, "connect_errors": outcome["connect_errors"]}


def h2_frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def rapid_reset(url, streams):
    """HTTP/2's rapid reset (CVE-2023-44487): a stream opened and cancelled at once, over and
    over on one connection, so the server starts work the client never waits for. Returns what
    the server did about it."""
    host, port = url.removeprefix("http://").split(":")
    authority = f"{host}:{port}".encode()
    # HPACK: :method GET, :scheme http (static table), :path /healthz and :authority as literals.
    block = b"\x82\x86" + b"\x04" + bytes([8]) + b"/healthz" + b"\x01" + bytes([len(authority)]) + authority
    sock = socket.create_connection((host, int(port)))
    sending = threading.Lock()

    def send(data):
        with sending:
            sock.sendall(data)

    send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0))
    seen = {"goaway": None, "responses": 0, "closed": False}

    def read():
        buffer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                seen["closed"] = True
                return
            buffer += chunk
            while len(buffer) >= 9:
                length = int.from_bytes(buffer[:3], "big")
                if len(buffer) < 9 + length:
                    break
                kind, flags, payload = buffer[3], buffer[4], buffer[9 : 9 + length]
                buffer = buffer[9 + length :]
                if kind == 1:
                    seen["responses"] += 1
                elif kind == 4 and not flags & 1:
                    try:
                        send(h2_frame(4, 1, 0))  # its settings, acknowledged
                    except OSError:
                        pass
                elif kind == 7 and seen["goaway"] is None:
                    seen["goaway"] = int.from_bytes(payload[4:8], "big")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    began, sent = time.monotonic(), 0
    cancel = (8).to_bytes(4, "big")
    try:
        for first in range(0, streams, 100):
            batch = b""
            for index in range(first, min(first + 100, streams)):
                stream = 2 * index + 1
                batch += h2_frame(1, 0x5, stream, block) + h2_frame(3, 0, stream, cancel)
            send(batch)
            sent = min(first + 100, streams)
            if seen["goaway"] is not None or seen["closed"]:
                break
    except OSError:
        pass
    took = time.monotonic() - began
    reader.join(timeout=5)
    sock.close()
    return {"sent": sent, "seconds": took, **seen}


PLOT = """
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
samples, path = json.loads(sys.argv[1]), sys.argv[2]
minutes = [s["t"] / 60 for s in samples]
figure, (memory, descriptors) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
memory.plot(minutes, [s["rss_mib"] for s in samples], marker=".")
memory.set_ylabel("resident memory (MiB)")
memory.set_ylim(bottom=0)
memory.grid(True, alpha=0.3)
descriptors.plot(minutes, [s["fds"] for s in samples], marker=".", color="tab:orange")
descriptors.set_ylabel("open descriptors")
descriptors.set_ylim(bottom=0)
descriptors.set_xlabel("minutes")
descriptors.grid(True, alpha=0.3)
memory.set_title("ferry serve under steady load (plain and streamed calls)")
figure.tight_layout()
figure.savefig(path, dpi=110)
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--sample-seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=300, help="plain calls per second")
    parser.add_argument("--stream-rate", type=float, default=30, help="streamed calls per second (16 chunks, 50 ms apart)")
    parser.add_argument("--attempts", type=int, default=25_000)
    parser.add_argument("--connect-rate", type=float, default=2_500, help="new connections per second in the flood")
    parser.add_argument("--max-connections", type=int, default=10_000)
    parser.add_argument("--idle-timeout", type=int, default=60)
    parser.add_argument("--resets", type=int, default=100_000, help="HTTP/2 streams opened and cancelled at once")
    parser.add_argument("--tiny", action="store_true", help="check it works; no figures worth reading")
    parser.add_argument("--debug", action="store_true", help="use the debug build as it is")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--plot", metavar="PNG")
    args = parser.parse_args()
    if args.tiny:
        args.minutes, args.sample_seconds, args.rate, args.stream_rate = 0.2, 1, 20, 5
        args.attempts, args.connect_rate, args.max_connections, args.idle_timeout = 600, 600, 200, 2
        args.resets = 2000
    if args.debug:
        gateway.RELEASE = ROOT / "target" / "debug"
    elif not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "ferry", "--bin", "ferry"], cwd=ROOT, check=True)
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "ferry-bench-gateway"], cwd=ROOT, check=True)
    # The flood needs a descriptor for each connection it holds.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.max_connections + 100 > hard:
        sys.exit(f"max_connections {args.max_connections} does not fit the descriptor limit {hard}")

    release = gateway.RELEASE
    mock, mock_url = gateway.start([str(release / "ferry-bench-mock")])
    slow, slow_url = gateway.start([str(release / "ferry-bench-mock"), "--chunk-delay-ms", "50"])
    data_dir = pathlib.Path(tempfile.mkdtemp(prefix="ferry-soak-"))
    (data_dir / "ferry.toml").write_text(
        f"[server]\nmax_connections = {args.max_connections}\nidle_timeout_seconds = {args.idle_timeout}\n"
    )
    operator = gateway.make_key()
    ferry, url = gateway.start(
        [str(release / "ferry"), "serve", "--addr", "127.0.0.1:0", "--data-dir", str(data_dir), "--no-local-models"],
        env={"FERRY_OPERATOR_KEY": operator, "FERRY_LOG": "error"},
    )
    try:
        admin = f"{url}/admin/v1"
        price = {"input_per_mtok_usd": "0.15", "output_per_mtok_usd": "0.60", "per_call_usd": "0.0001"}
        for model, upstream in (("bench-model", mock_url), ("bench-slow", slow_url)):
            gateway.call(f"{admin}/models", operator, {
                "id": model, "deployments": [{"id": "mock", "upstream": {"url": f"{upstream}/v1", "model": "mock"}}],
                "price": price, "max_output_tokens": 64,
            })
        tenant = gateway.call(f"{admin}/tenants", operator, {"name": "soak"})
        gateway.call(f"{admin}/tenants/{tenant['id']}/credits", operator, {"amount_usd": "1000000"})
        key = gateway.call(f"{admin}/tenants/{tenant['id']}/keys", operator, {
            "name": "soak", "role": "member",
            "limits": {"rpm": 100000000, "tpm": 1000000000},
            "budgets": [{"period": "day", "amount_usd": "1000000"}],
        })["key"]
        gateway.call(f"{url}/v1/chat/completions", key, {"model": "bench-model", "messages": [{"role": "user", "content": "hi"}]})

        samples, loads = soak(args, ferry, url, key)
        soaked = summarize_soak(samples, loads, args.minutes, args.sample_seconds)
        if args.plot:
            gateway.bench_venv()
            subprocess.run([str(gateway.VENV / "bin" / "python"), "-c", PLOT, json.dumps(samples), args.plot], check=True)
            print(f"plot: {args.plot}")
        flooded = exhaustion(args, ferry, url, key)
        before = gateway.process_figures(ferry.pid)[1]
        reset = rapid_reset(url, args.resets)
        cpu = gateway.process_figures(ferry.pid)[1] - before
        status, ms = timed_get(f"{url}/healthz")
        goaway = {None: "none", 0: "NO_ERROR", 1: "PROTOCOL_ERROR", 11: "ENHANCE_YOUR_CALM"}.get(reset["goaway"], str(reset["goaway"]))
        print(f"\nHTTP/2 rapid reset: {reset['sent']} streams opened and cancelled on one connection in {reset['seconds']:.2f} s; "
              f"Ferry answered {reset['responses']} of them, sent GOAWAY {goaway}, closed the connection: {reset['closed']}; "
              f"{cpu:.2f} CPU s spent; /healthz afterwards {status} in {ms:.2f} ms")
        if status != 200:
            flooded["after"] = status
        # Every client gone, every connection idle past its timeout, and (but in a tiny run) the
        # gateway's pooled connections to the upstreams idle past theirs (90 s): what Ferry
        # still holds.
        time.sleep((args.idle_timeout if args.tiny else max(args.idle_timeout, UPSTREAM_POOL_IDLE_S)) + 5)
        print(f"\ndescriptors once every client has gone: {open_fds(ferry.pid)} ({soaked['fds_start']} before the soak began); "
              f"resident memory {rss_mib(ferry.pid):.1f} MiB")
        gateway.reconcile_or_exit(ferry, str(data_dir), [])
        if args.tiny and (soaked["errors"] or soaked["healthz_failed"] or flooded["kept_failures"] or flooded["after"] != 200):
            sys.exit("the tiny run failed: see above")
    finally:
        for process in (ferry, mock, slow):
            if process.poll() is None:
                process.kill()


if __name__ == "__main__":
    main()
