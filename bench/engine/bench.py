"""Engine throughput: Ferry's native engine (`ferry worker`) against llama.cpp
(`llama_cpp.server` from the llama-cpp-python package) on the same GGUF file and thread count.

Both are driven over their OpenAI-compatible HTTP APIs by the same client, with greedy decoding
and a fixed completion length, at 1, 4 and 16 concurrent streams. Runs alternate A, B, A, B so
machine noise hits both alike; the table reports the median of the rounds and the ratio.

Usage: python bench.py --ferry target/release/ferry --model PATH.gguf [--rounds 3] [--tokens 64]
"""

import argparse
import concurrent.futures
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea."}]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url, process, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} not ready")


def start_ferry(binary, model, threads):
    port = free_port()
    env = {**os.environ, "RAYON_NUM_THREADS": str(threads), "FERRY_LOG": "warn"}
    process = subprocess.Popen(
        [binary, "worker", "--addr", f"127.0.0.1:{port}", "--chat-model", model, "--embedding-model", "none", "--max-batch", "16"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_ready(f"http://127.0.0.1:{port}/readyz", process)
    name = re.sub(r"\.gguf$", "", os.path.basename(model)).lower()
    return process, f"http://127.0.0.1:{port}/v1", name


def start_llama_cpp(model, threads):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", model, "--n_threads", str(threads), "--n_ctx", "2048",
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_ready(f"http://127.0.0.1:{port}/v1/models", process)
    return process, f"http://127.0.0.1:{port}/v1", model


def one_call(base, model, tokens):
    body = json.dumps({"model": model, "messages": PROMPT, "temperature": 0, "max_tokens": tokens, "seed": 1}).encode()
    request = urllib.request.Request(f"{base}/chat/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)["usage"]["completion_tokens"]


def measure(base, model, streams, tokens):
    """Aggregate completion tokens per second with `streams` requests in flight."""
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        produced = sum(pool.map(lambda _: one_call(base, model, tokens), range(streams)))
    return produced / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ferry", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--streams", default="1,4,16")
    parser.add_argument("--no-llama-cpp", action="store_true", help="Ferry alone (CI's tiny run: llama.cpp takes ~10 min to compile)")
    args = parser.parse_args()
    engines = {"ferry": start_ferry(args.ferry, args.model, args.threads)}
    if not args.no_llama_cpp:
        engines["llama.cpp"] = start_llama_cpp(args.model, args.threads)
    try:
        for _, base, model in engines.values():
            one_call(base, model, 8)  # warm-up
        print(f"model {os.path.basename(args.model)}, {args.threads} threads, {args.tokens} tokens per request, greedy, {args.rounds} rounds (median)")
        print(f"{'streams':>7} | {'ferry tok/s':>11} | {'llama.cpp tok/s':>15} | {'ferry / llama.cpp':>17}")
        for streams in [int(s) for s in args.streams.split(",")]:
            results = {name: [] for name in engines}
            for _ in range(args.rounds):
                for name, (_, base, model) in engines.items():
                    results[name].append(measure(base, model, streams, args.tokens))
            ferry = statistics.median(results["ferry"])
            if args.no_llama_cpp:
                print(f"{streams:>7} | {ferry:>11.1f} | {'-':>15} | {'-':>17}")
                continue
            llama = statistics.median(results["llama.cpp"])
            print(f"{streams:>7} | {ferry:>11.1f} | {llama:>15.1f} | {ferry / llama:>17.2f}")
    finally:
        for process, _, _ in engines.values():
            process.terminate()


if __name__ == "__main__":
    main()
