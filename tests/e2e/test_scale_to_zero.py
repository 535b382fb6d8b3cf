"""The local GPU pool end to end: `ferry serve` runs its models in `ferry worker` processes that
start on demand, scale with load, drain before they stop, scale to zero when idle, and are
replaced when they die, with the real model and the OpenAI SDK."""

import concurrent.futures
import os
import pathlib
import re
import signal
import subprocess
import threading
import time

import httpx
import openai
import pytest

from conftest import Ferry, ferry_binary, model_cache

CHAT = "smollm2-135m-instruct"
HELLO = [{"role": "user", "content": "Say hello."}]
# A prompt this model goes on counting from, so its stream lasts as long as max_tokens allows.
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"


def serve(tmp_path, **pool):
    data_dir = tmp_path / "ferry"
    data_dir.mkdir()
    lines = "\n".join(f"{key} = {value}" for key, value in pool.items())
    (data_dir / "ferry.toml").write_text(f"[pool]\n{lines}\n")
    return Ferry(data_dir, env={"FERRY_MODELS_DIR": model_cache(), "FERRY_LOG": "info"}, args=(), start_timeout=600)


@pytest.fixture
def make_ferry(tmp_path):
    started = []

    def make(**pool):
        ferry = serve(tmp_path, **pool)
        started.append(ferry)
        return ferry

    yield make
    for ferry in started:
        ferry.stop()


def client(ferry, key=None):
    return openai.OpenAI(base_url=f"{ferry.url}/v1", api_key=key or ferry.operator_key, max_retries=0, timeout=180)


def workers(ferry):
    """The `ferry worker` processes this `ferry serve` has spawned, from /proc."""
    found = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(text.rsplit(")", 1)[1].split()[1])
        if parent == ferry.process.pid and b"worker" in cmdline:
            found.append(int(stat.parent.name))
    return sorted(found)


def wait_for(condition, timeout, what):
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def log_count(ferry, pattern):
    return sum(1 for line in list(ferry.lines) if re.search(pattern, line))


def cold_starts_ms(ferry):
    return [int(m.group(1)) for line in list(ferry.lines) if (m := re.search(r"replica ready.*cold_start_ms\S*?=\S*?(\d+)", line))]


def timed_call(ferry, **extra):
    started = time.monotonic()
    # `no-store`: every timed call reaches the pool, never the response cache.
    reply = client(ferry).chat.completions.create(
        model=CHAT, messages=HELLO, temperature=0, max_tokens=4, extra_headers={"Cache-Control": "no-store"}, **extra
    )
    return reply, time.monotonic() - started


def test_an_idle_pool_has_no_worker_and_the_next_call_waits_for_a_cold_start(make_ferry):
    ferry = make_ferry(stable_window_seconds=1, scale_to_zero_grace_seconds=1)
    assert workers(ferry) == [], "min_replicas is 0 by default: nothing runs before the first call"

    first, _ = timed_call(ferry)
    assert first.choices[0].message.content
    assert log_count(ferry, r"cold start: ") == 1, "the cold start is reported"

    wait_for(lambda: log_count(ferry, r"replica stopped") == 1, 60, "the idle replica to stop")
    wait_for(lambda: workers(ferry) == [], 15, "the worker process to exit")

    cold, cold_seconds = timed_call(ferry)
    warm, warm_seconds = timed_call(ferry)
    assert cold.choices[0].message.content == warm.choices[0].message.content
    assert log_count(ferry, r"cold start: ") == 2
    loaded_ms = cold_starts_ms(ferry)[-1]
    assert cold_seconds * 1000 >= loaded_ms, "the call waited for the worker to load"
    assert cold_seconds > warm_seconds, (cold_seconds, warm_seconds)


def test_fifty_calls_at_zero_all_succeed_scale_to_the_maximum_and_return_to_zero(make_ferry):
    ferry = make_ferry(max_replicas=2, replica_concurrency=4, stable_window_seconds=1, scale_to_zero_grace_seconds=1)
    most = [0]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            most[0] = max(most[0], len(workers(ferry)))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    sdk = client(ferry)

    def call(index):
        reply = sdk.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": f"Say the number {index}."}], max_tokens=6, seed=index)
        return reply.choices[0].finish_reason

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        reasons = list(pool.map(call, range(50)))
    assert len(reasons) == 50 and set(reasons) <= {"stop", "length"}
    stop.set()
    watcher.join()
    assert most[0] == 2, f"replicas rose to the maximum (saw at most {most[0]})"
    wait_for(lambda: workers(ferry) == [], 60, "the pool to return to zero")
    assert log_count(ferry, r"replica stopped") >= 2


def test_scaling_down_drains_a_replica_and_its_stream_in_flight_completes(make_ferry):
    ferry = make_ferry(max_replicas=2, replica_concurrency=4, stable_window_seconds=1, scale_to_zero_grace_seconds=1)
    pool = activator(ferry)
    # Two replicas, held up by a hint, then one long stream on each.
    httpx.post(f"{pool}/pool/local/prewarm", json={"replicas": 2, "seconds": 600}).raise_for_status()
    wait_for(lambda: len(cold_starts_ms(ferry)) == 2, 120, "two replicas to load")
    started = threading.Barrier(3)

    def stream():
        chunks = client(ferry).completions.create(model=CHAT, prompt=COUNTING, temperature=0, max_tokens=160, stream=True)
        text, reason, waited = "", None, False
        for chunk in chunks:
            if not waited:
                started.wait(timeout=60)
                waited = True
            text += chunk.choices[0].text if chunk.choices else ""
            reason = (chunk.choices[0].finish_reason if chunk.choices else None) or reason
        return text, reason, time.monotonic()

    with concurrent.futures.ThreadPoolExecutor(2) as threads:
        streams = [threads.submit(stream) for _ in range(2)]
        started.wait(timeout=60)
        replicas = httpx.get(f"{pool}/pool").json()["deployments"][0]["replicas"]
        assert [replica["in_flight"] for replica in replicas] == [1, 1], replicas
        # The hint is withdrawn: two streams want one replica, so one drains mid-stream.
        httpx.post(f"{pool}/pool/local/prewarm", json={"replicas": 0, "seconds": 0}).raise_for_status()
        wait_for(lambda: log_count(ferry, r"draining"), 30, "a replica to drain")
        drained_at = time.monotonic()
        results = [future.result() for future in streams]
    assert all(reason == "length" for _, reason, _ in results), results
    assert all(ended_at > drained_at for _, _, ended_at in results), "both streams were in flight when the replica drained"
    assert results[0][0] == results[1][0], "the drained replica's stream is whole"
    wait_for(lambda: log_count(ferry, r"replica stopped") >= 1, 60, "the drained replica to stop once its stream ended")


def test_a_full_queue_and_an_expired_deadline_get_503_with_retry_after(make_ferry):
    # One replica taking one call at a time, one call allowed to wait, for half a second.
    ferry = make_ferry(max_replicas=1, replica_concurrency=1, max_queue=1, queue_deadline_seconds=0.5)
    # Warm first, through a hint: a call would itself wait longer than the deadline.
    httpx.post(f"{activator(ferry)}/pool/local/prewarm", json={"replicas": 1, "seconds": 600}).raise_for_status()
    wait_for(lambda: cold_starts_ms(ferry), 120, "the replica to load")
    body = {"model": CHAT, "messages": HELLO, "max_tokens": 4}
    headers = {"Authorization": f"Bearer {ferry.operator_key}"}
    # The gateway would wait out the pool's `Retry-After: 1` and try again (its route's
    # default): with no retries, the pool's own answers reach the caller as they are.
    patched = httpx.patch(f"{ferry.url}/admin/v1/models/{CHAT}", json={"route": {"retries": 0}}, headers=headers, timeout=10)
    assert patched.status_code == 200, patched.text
    results = {}

    def call(name):
        started = time.monotonic()
        response = httpx.post(f"{ferry.url}/v1/chat/completions", json=body, headers=headers, timeout=60)
        results[name] = (response, time.monotonic() - started, time.monotonic())

    # A long stream holds the replica's one slot.
    stream = client(ferry).completions.create(model=CHAT, prompt=COUNTING, temperature=0, max_tokens=400, stream=True)
    first = next(iter(stream))
    assert first.choices
    waiting = threading.Thread(target=call, args=("waiting",))
    waiting.start()
    time.sleep(0.2)
    call("refused")
    waiting.join()
    reason = None
    for chunk in stream:
        reason = (chunk.choices[0].finish_reason if chunk.choices else None) or reason
    stream_ended = time.monotonic()
    assert reason == "length", "the stream held the slot to its end"

    refused, refused_after, _ = results["refused"]
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "service_unavailable_error"
    assert refused_after < 0.5, "a full queue refuses at once"
    late, late_after, late_at = results["waiting"]
    assert late.status_code == 503, late.text
    assert late.headers["retry-after"] == "1"
    assert late_after >= 0.5
    assert late_at < stream_ended, "refused at its deadline, while the slot was still taken"
    assert timed_call(ferry)[0].choices[0].message.content, "once the slot is free, calls succeed"


def test_a_worker_killed_mid_stream_fails_its_stream_promptly_is_replaced_and_bills_what_was_delivered(make_ferry):
    ferry = make_ferry(scale_to_zero_grace_seconds=30)
    admin = httpx.Client(base_url=f"{ferry.url}/admin/v1", headers={"Authorization": f"Bearer {ferry.operator_key}"}, timeout=10)
    assert admin.post(f"/models/{CHAT}/prices", json={"price": {"input_per_mtok_usd": "1", "output_per_mtok_usd": "1000"}}).status_code == 201
    tenant = admin.post("/tenants", json={"name": "Acme", "billing": "postpaid"}).json()
    key = admin.post(f"/tenants/{tenant['id']}/keys", json={"name": "app", "role": "member"}).json()["key"]
    # Wait for the new price rather than the read cache's 5 s.
    time.sleep(5.5)

    stream = client(ferry, key).completions.create(model=CHAT, prompt=COUNTING, temperature=0, max_tokens=2000, stream=True)
    delivered = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            delivered += 1
        if delivered == 5:
            break
    [victim] = workers(ferry)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    with pytest.raises(openai.APIError):
        for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                delivered += 1
    assert time.monotonic() - killed_at < 5, "the stream failed promptly, without hanging"

    replacement = wait_for(lambda: [pid for pid in workers(ferry) if pid != victim], 60, "a replacement worker")
    assert victim not in replacement
    assert timed_call(ferry)[0].choices[0].message.content, "the replacement serves"

    [event] = admin.get(f"/tenants/{tenant['id']}/usage/events").json()["data"]
    assert event["completion_tokens"] == delivered, (event, delivered)
    assert event["status"] != 200


def activator(ferry):
    [url] = [m.group(1) for line in list(ferry.lines) if (m := re.search(r"pool activator on (http://[0-9.:]+)", line))]
    return url


def test_a_prewarm_hint_starts_a_replica_before_any_call_and_lapses(make_ferry):
    ferry = make_ferry(stable_window_seconds=1, scale_to_zero_grace_seconds=1)
    pool = activator(ferry)
    bad = httpx.post(f"{pool}/pool/local/prewarm", json={"replicas": "two"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "body"
    assert httpx.post(f"{pool}/pool/nowhere/prewarm", json={"replicas": 1, "seconds": 5}).status_code == 404

    # Long enough to outlast a cold start on a loaded machine (seconds here), short enough to
    # watch it lapse.
    assert httpx.post(f"{pool}/pool/local/prewarm", json={"replicas": 1, "seconds": 15}).status_code == 202
    wait_for(lambda: cold_starts_ms(ferry), 120, "the pre-warmed replica to load")
    [replica] = httpx.get(f"{pool}/pool").json()["deployments"][0]["replicas"]
    assert replica["state"] == "ready"
    assert log_count(ferry, r"cold start: ") == 0, "no call waited"
    timed_call(ferry)
    assert log_count(ferry, r"cold start: ") == 0, "the first call found it warm"
    wait_for(lambda: workers(ferry) == [], 60, "the hint to lapse and the pool to return to zero")


def test_ferry_scaler_serves_a_deployment_from_zero_as_its_own_service(tmp_path):
    config = tmp_path / "scaler.toml"
    config.write_text(
        f"""
provider = "local"
[[deployments]]
name = "smollm2"
worker_args = ["--chat-model", "{CHAT}", "--embedding-model", "none", "--models-dir", "{model_cache()}"]
scaling = {{ stable_window_seconds = 1, scale_to_zero_grace_seconds = 1 }}
"""
    )
    scaler = subprocess.Popen(
        [str(ferry_binary()), "scaler", "--config", str(config), "--addr", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = scaler.stdout.readline()
        assert line.startswith("scaler listening on "), line
        url = line.split()[-1]
        assert httpx.get(f"{url}/pool").json()["deployments"][0]["replicas"] == []
        reply = openai.OpenAI(base_url=f"{url}/smollm2/v1", api_key="unused", max_retries=0, timeout=180).chat.completions.create(
            model=CHAT, messages=HELLO, max_tokens=4
        )
        assert reply.choices[0].message.content
        missing = httpx.post(f"{url}/nowhere/v1/chat/completions", json={})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "deployment_not_found"
        wait_for(lambda: httpx.get(f"{url}/pool").json()["deployments"][0]["replicas"] == [], 60, "the scaler to return to zero")
    finally:
        scaler.terminate()
        scaler.wait(timeout=30)
