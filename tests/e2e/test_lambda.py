"""The functions on Lambda, for real: the `ferry` binary run as a Lambda custom runtime under
cargo-lambda's emulator (`cargo lambda watch --only-lambda-apis`), its state in DynamoDB and S3
served by moto, its model a real `ferry worker` (SmolLM2). The gateway answers the OpenAI SDK
through a function URL, streamed and not; the billing function runs its scheduled jobs as
EventBridge would invoke them."""

import json
import os
import pathlib
import queue
import socket
import subprocess
import threading
import time
from decimal import Decimal

import boto3
import httpx
import openai
import pytest

from conftest import ROOT, ferry_binary, make_key, model_cache

VENV_BIN = pathlib.Path(os.environ.get("MOTO_SERVER", ROOT / ".venv" / "bin" / "moto_server")).parent
AWS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}
PRICE = {"input_per_mtok_usd": "1", "output_per_mtok_usd": "2", "per_call_usd": "0.001"}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port, timeout=60):
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


class Process:
    """A child process whose output is kept, optionally waited on for a line."""

    def __init__(self, args, env=None, ready_prefix=None, timeout=120, cwd=None):
        self.lines = []
        self.process = subprocess.Popen(
            [str(arg) for arg in args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "FERRY_LOG": "info", **(env or {})},
            cwd=cwd,
        )
        self._ready = queue.Queue()
        self._prefix = ready_prefix
        threading.Thread(target=self._read, daemon=True).start()
        self.url = None
        if ready_prefix:
            try:
                self.url = self._ready.get(timeout=timeout)
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"{args[0]} did not start:\n" + self.output())
            if self.url is None:
                raise RuntimeError(f"{args[0]} exited:\n" + self.output())

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if self._prefix and line.startswith(self._prefix):
                self._ready.put(line.split()[-1])
        self._ready.put(None)

    def output(self):
        return "\n".join(self.lines)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


class Emulator:
    """cargo-lambda's Lambda emulator with one function: the `ferry` binary, with no arguments,
    its handler setting (`_HANDLER`) naming which function it is."""

    def __init__(self, handler, env):
        port = free_port()
        self.api = Process(
            [VENV_BIN / "cargo-lambda", "lambda", "watch", "--only-lambda-apis", "-A", "127.0.0.1", "-P", port],
            cwd=ROOT,
        )
        wait_for_port(port)
        self.url = f"http://127.0.0.1:{port}"
        lambda_env = {
            "AWS_LAMBDA_RUNTIME_API": f"{self.url}/.rt",
            "AWS_LAMBDA_FUNCTION_NAME": "_",
            "AWS_LAMBDA_FUNCTION_VERSION": "1",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
            "_HANDLER": handler,
        }
        self.function = Process([ferry_binary()], env={**env, **lambda_env})

    def invoke(self, payload):
        """An invocation as EventBridge makes it: the event is the rule's input."""
        response = httpx.post(f"{self.url}/2015-03-31/functions/_/invocations", json=payload, timeout=60)
        return response.json()

    def stop(self):
        self.function.stop()
        self.api.stop()


def start_moto():
    """moto, one request at a time (see serial_moto.py), with the bucket `ferry-exports`: its
    process, its URL and an S3 client of it."""
    port = free_port()
    moto = Process([VENV_BIN / "python", ROOT / "stores/aws/tests/moto/serial_moto.py", "127.0.0.1", port])
    wait_for_port(port)
    endpoint = f"http://127.0.0.1:{port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t")
    s3.create_bucket(Bucket="ferry-exports")
    return moto, endpoint, s3


@pytest.fixture(scope="module")
def aws():
    """moto, and a table and bucket in it."""
    moto, endpoint, s3 = start_moto()
    env = {
        **AWS,
        "AWS_ENDPOINT_URL": endpoint,
        "FERRY_STORE": "dynamodb",
        "FERRY_DYNAMODB_TABLE": "ferry-e2e",
        "FERRY_LOG_JSON": "true",
    }
    yield env, s3
    moto.stop()


@pytest.fixture(scope="module")
def admin(aws, tmp_path_factory):
    """The admin function off Lambda (as on Knative: `$PORT`), which creates the table."""
    env, _ = aws
    key = make_key()
    process = Process(
        [ferry_binary(), "function", "admin", "--create-table", "--addr", "127.0.0.1:0"],
        env={**env, "FERRY_OPERATOR_KEY": key},
        ready_prefix="listening on ",
        timeout=60,
    )
    client = httpx.Client(base_url=f"{process.url}/admin/v1", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    yield client
    process.stop()


@pytest.fixture(scope="module")
def worker():
    process = Process(
        [ferry_binary(), "worker", "--addr", "127.0.0.1:0", "--embedding-model", "none", "--models-dir", model_cache()],
        ready_prefix="worker listening on ",
        timeout=600,
    )
    yield process
    process.stop()


def ok(response, status=200):
    assert response.status_code == status, response.text
    return response.json()


@pytest.fixture(scope="module")
def tenant(admin, worker):
    spec = {
        "id": "smol",
        "deployments": [{"id": "pool", "upstream": {"url": f"{worker.url}/v1", "model": "smollm2-135m-instruct"}}],
        "price": PRICE,
    }
    ok(admin.post("/models", json=spec))
    tenant = ok(admin.post("/tenants", json={"name": "Acme", "billing": "prepaid"}), 201)
    ok(admin.post(f"/tenants/{tenant['id']}/credits", json={"amount_usd": "1"}), 201)
    key = ok(admin.post(f"/tenants/{tenant['id']}/keys", json={"name": "app", "role": "member"}), 201)
    return tenant["id"], key["key"]


@pytest.fixture(scope="module")
def gateway(aws):
    env, _ = aws
    # Uploaded files go to the bucket, under files/.
    emulator = Emulator("gateway", {**env, "FERRY_S3_BUCKET": "ferry-exports", "FERRY_S3_FORCE_PATH_STYLE": "true"})
    yield emulator
    emulator.stop()


@pytest.fixture(scope="module")
def billing(aws):
    env, _ = aws
    emulator = Emulator("billing", {**env, "FERRY_S3_BUCKET": "ferry-exports", "FERRY_S3_FORCE_PATH_STYLE": "true"})
    yield emulator
    emulator.stop()


MESSAGES = [{"role": "user", "content": "Name a colour."}]


def test_the_gateway_answers_through_a_function_url_streamed_and_not(admin, tenant, gateway):
    tenant_id, key = tenant
    client = openai.OpenAI(base_url=f"{gateway.url}/lambda-url/_/v1", api_key=key, timeout=120, max_retries=0)

    whole = client.chat.completions.create(model="smol", messages=MESSAGES, max_tokens=12, temperature=0)
    assert whole.choices[0].message.content
    assert whole.usage.completion_tokens == 12
    assert whole.choices[0].finish_reason == "length"

    # `no-store`: the stream comes from the worker through the function URL, not from the cache.
    stream = client.chat.completions.create(
        model="smol",
        messages=MESSAGES,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"Cache-Control": "no-store"},
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    usage = chunks[-1].usage
    # Greedy decoding: the stream says what the whole answer said, token for token.
    assert text == whole.choices[0].message.content
    assert usage.completion_tokens == 12
    assert sum(1 for chunk in chunks if chunk.choices and chunk.choices[0].delta.content) > 1, "streamed, not buffered"

    with pytest.raises(openai.AuthenticationError) as refused:
        openai.OpenAI(base_url=f"{gateway.url}/lambda-url/_/v1", api_key=make_key(), max_retries=0).models.list()
    assert refused.value.body["type"] == "authentication_error"

    # Both calls were metered and settled in DynamoDB, exactly.
    events = ok(admin.get(f"/tenants/{tenant_id}/usage/events"))["data"]
    assert [event["status"] for event in events] == [200, 200]
    assert [event["completion_tokens"] for event in events] == [12, 12]
    spent = sum(Decimal(event["cost"]) for event in events)
    account = ok(admin.get(f"/tenants/{tenant_id}"))
    assert Decimal(account["held_usd"]) == 0
    assert Decimal(account["available_usd"]) == Decimal("1") - spent


def test_the_gateway_keeps_uploaded_files_in_the_bucket(aws, tenant, gateway):
    tenant_id, key = tenant
    client = openai.OpenAI(base_url=f"{gateway.url}/lambda-url/_/v1", api_key=key, timeout=60, max_retries=0)
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "smol", "messages": MESSAGES}}
    content = (json.dumps(line) + "\n").encode()
    uploaded = client.files.create(file=("in.jsonl", content), purpose="batch")
    assert client.files.retrieve(uploaded.id).bytes == len(content)
    assert client.files.content(uploaded.id).read() == content
    assert [file.id for file in client.files.list().data] == [uploaded.id]
    _, s3 = aws
    stored = s3.get_object(Bucket="ferry-exports", Key=f"files/{tenant_id}/{uploaded.id}.jsonl")["Body"].read()
    assert stored == content
    # The deployed functions run no batches yet: refused, not left waiting.
    with pytest.raises(openai.InternalServerError) as refused:
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert refused.value.status_code == 503 and refused.value.body["code"] == "batches_unavailable"
    assert client.files.delete(uploaded.id).deleted
    assert client.files.list().data == []


def test_the_billing_function_runs_its_jobs_as_eventbridge_invokes_it(aws, admin, tenant, gateway, billing):
    _, s3 = aws
    tenant_id, key = tenant
    client = openai.OpenAI(base_url=f"{gateway.url}/lambda-url/_/v1", api_key=key, timeout=120, max_retries=0)
    client.chat.completions.create(model="smol", messages=MESSAGES, max_tokens=4)
    period = time.strftime("%Y-%m", time.gmtime())

    assert billing.invoke({"job": "expire_holds"}) == {"expired_holds": 0}
    closed = billing.invoke({"job": "close_period", "period": period})
    [invoice] = [closed_invoice for closed_invoice in closed["invoices"] if closed_invoice["invoice"]["tenant_id"] == tenant_id]
    events = ok(admin.get(f"/tenants/{tenant_id}/usage/events"))["data"]
    assert Decimal(invoice["invoice"]["total_usd"]) == sum(Decimal(event["cost"]) for event in events)
    assert invoice["usage_events"] == len(events)

    # The exports are in the bucket, under the prefix the billing role may write.
    stored = s3.get_object(Bucket="ferry-exports", Key=invoice["invoice_export"].removeprefix("s3://ferry-exports/"))
    assert json.loads(stored["Body"].read())["total_usd"] == invoice["invoice"]["total_usd"]
    lines = s3.get_object(Bucket="ferry-exports", Key=invoice["usage_export"].removeprefix("s3://ferry-exports/"))["Body"].read()
    assert len(lines.decode().splitlines()) == len(events)
    assert invoice["usage_export"].startswith("s3://ferry-exports/exports/")

    # Closing again changes nothing; the books reconcile; an unknown job fails the invocation.
    again = billing.invoke({"job": "close_period", "period": period})
    assert [item["created"] for item in again["invoices"]] == [False] * len(again["invoices"])
    assert billing.invoke({"job": "reconcile"})["discrepancies"] == []
    failed = billing.invoke({"job": "close_the_books"})
    assert "unknown variant" in failed["errorMessage"]
