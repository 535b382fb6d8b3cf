"""OpenAI's Batch API end to end with the official SDK against `ferry serve`: upload a file,
`client.batches.create`, poll `retrieve`, read the output and error files; against the local
SmolLM2 and a mock upstream. Each request is a call, billed once; a cancelled batch says which
requests did not run; a batch whose `ferry serve` is killed mid-run resumes after a restart and
completes with every request run and billed exactly once."""

import io
import json
import time
from decimal import Decimal

import httpx
import openai
import pytest

from conftest import Ferry, make_key, model_cache

CHAT = "smollm2-135m-instruct"
PRICE = {"input_per_mtok_usd": "1", "output_per_mtok_usd": "2", "per_call_usd": "0.001"}


def admin(served, method, path, **kwargs):
    return httpx.request(method, f"{served.url}/admin/v1{path}", headers={"Authorization": f"Bearer {served.operator_key}"}, timeout=30, **kwargs)


def register(served, upstream, model_id, upstream_model):
    spec = {"id": model_id, "deployments": [{"id": "d1", "upstream": {"url": upstream.base_url, "model": upstream_model}}], "price": PRICE}
    assert admin(served, "POST", "/models", json=spec).status_code == 200


def tenant_with_key(served, credit="5"):
    tenant = admin(served, "POST", "/tenants", json={"name": "Bulk", "billing": "prepaid"}).json()
    assert admin(served, "POST", f"/tenants/{tenant['id']}/credits", json={"amount_usd": credit}).status_code == 201
    key = admin(served, "POST", f"/tenants/{tenant['id']}/keys", json={"name": "app", "role": "member"}).json()["key"]
    return tenant["id"], key


def client_of(served, key):
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key=key, max_retries=0, timeout=120)


def requests_for(model, count, max_tokens=8):
    return [
        {"custom_id": f"req-{n}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": model, "messages": [{"role": "user", "content": f"Say {n}"}], "max_tokens": max_tokens}}
        for n in range(count)
    ]


def submit(client, lines):
    content = ("\n".join(json.dumps(line) for line in lines) + "\n").encode()
    file = client.files.create(file=("batch.jsonl", io.BytesIO(content)), purpose="batch")
    return client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"job": "nightly"})


def wait_for(client, batch_id, statuses, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout} s")


def started(client, batch_id, timeout=60):
    """Waits until some of the batch's requests have run."""
    deadline = time.monotonic() + timeout
    while client.batches.retrieve(batch_id).request_counts.completed == 0:
        assert time.monotonic() < deadline, "no request ran"
        time.sleep(0.05)


def lines_of(client, file_id):
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()] if file_id else []


def spent(served, tenant_id):
    events = admin(served, "GET", f"/tenants/{tenant_id}/usage/events", params={"limit": 10000}).json()["data"]
    tenant = admin(served, "GET", f"/tenants/{tenant_id}").json()
    return events, Decimal(tenant["available_usd"])


@pytest.fixture(scope="module")
def served(tmp_path_factory, upstream):
    server = Ferry(tmp_path_factory.mktemp("ferry-batches"), env={"FERRY_MODELS_DIR": model_cache()}, args=(), start_timeout=600)
    register(server, upstream, "upstream-model", "echo")
    register(server, upstream, "slow-model", "slow-echo")
    yield server
    server.stop()


def test_a_batch_runs_every_request_and_bills_each_once(served):
    tenant_id, key = tenant_with_key(served)
    client = client_of(served, key)
    lines = requests_for("upstream-model", 5) + [
        {"custom_id": "local-0", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": CHAT, "messages": [{"role": "system", "content": "You are a helpful AI assistant."}, {"role": "user", "content": "What is the capital of France?"}], "max_tokens": 20, "temperature": 0}},
        # Refused by the model's own rules: it fails alone, in the error file.
        {"custom_id": "too-long", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "upstream-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10_000_000}},
    ]
    batch = submit(client, lines)
    assert batch.status == "in_progress" and batch.request_counts.total == 7 and batch.metadata == {"job": "nightly"}
    assert client.batches.retrieve(batch.id).id == batch.id
    done = wait_for(client, batch.id, {"completed"})
    assert (done.request_counts.completed, done.request_counts.failed) == (6, 1)
    assert done.completed_at and done.output_file_id and done.error_file_id
    output = {line["custom_id"]: line for line in lines_of(client, done.output_file_id)}
    assert set(output) == {f"req-{n}" for n in range(5)} | {"local-0"}
    for n in range(5):
        response = output[f"req-{n}"]["response"]
        assert response["status_code"] == 200
        assert response["body"]["choices"][0]["message"]["content"] == f"You said: Say {n}"
    assert "Paris" in output["local-0"]["response"]["body"]["choices"][0]["message"]["content"]
    (error,) = lines_of(client, done.error_file_id)
    assert error["custom_id"] == "too-long" and error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["param"] == "max_tokens"
    # Billed as calls: one usage event a request that ran, under the batch's request ids (the
    # refused one was refused before it was admitted, as a call would be: nothing to bill).
    events, available = spent(served, tenant_id)
    ran = [event for event in events if event["request_id"].startswith(batch.id)]
    assert len({event["request_id"] for event in ran}) == len(ran) == 6
    charged = sum(Decimal(event["cost"]) for event in ran)
    assert available == Decimal("5") - charged
    # At the batch price: half of every amount, the default discount.
    for event in ran:
        if event["model"] == "upstream-model":
            full = Decimal("0.001") + (event["prompt_tokens"] + 2 * event["completion_tokens"]) * Decimal("0.000001")
            assert Decimal(event["cost"]) == full / 2, event
    assert [b.id for b in client.batches.list().data] == [batch.id]


def test_a_batch_is_refused_when_a_request_cannot_run(served):
    _, key = tenant_with_key(served)
    client = client_of(served, key)
    lines = requests_for("upstream-model", 2) + [{**requests_for("no-such-model", 1)[0], "custom_id": "other"}]
    with pytest.raises(openai.BadRequestError) as refused:
        submit(client, lines)
    assert refused.value.body["message"].startswith("line 3: the model `no-such-model`")
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.create(input_file_id="file_0000", endpoint="/v1/chat/completions", completion_window="1h")
    assert refused.value.body["param"] == "completion_window"
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file_0000", endpoint="/v1/chat/completions", completion_window="24h")


def test_requests_refused_for_now_are_tried_again_not_failed(served, upstream):
    register(served, upstream, "flaky-model", "busy-once")
    tenant_id, key = tenant_with_key(served)
    client = client_of(served, key)
    batch = submit(client, requests_for("flaky-model", 3))
    done = wait_for(client, batch.id, {"completed"}, timeout=90)
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 0)
    assert done.error_file_id is None
    output = {line["custom_id"]: line["response"] for line in lines_of(client, done.output_file_id)}
    assert {custom_id: response["status_code"] for custom_id, response in output.items()} == {f"req-{n}": 200 for n in range(3)}
    # Each upstream refusal was a call that failed, unbilled; each request was billed once.
    events, _ = spent(served, tenant_id)
    billed = [event for event in events if event["request_id"].startswith(batch.id) and Decimal(event["cost"]) > 0]
    assert len({event["request_id"] for event in billed}) == len(billed) == 3


def test_a_cancelled_batch_says_which_requests_did_not_run(served):
    _, key = tenant_with_key(served)
    client = client_of(served, key)
    batch = submit(client, requests_for("slow-model", 60))
    started(client, batch.id)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait_for(client, batch.id, {"cancelled"})
    ran = done.request_counts.completed + done.request_counts.failed
    assert 0 < ran < 60
    not_run = [line for line in lines_of(client, done.error_file_id) if line["error"]]
    assert len(not_run) == 60 - ran and {line["error"]["code"] for line in not_run} == {"batch_cancelled"}
    assert len(lines_of(client, done.output_file_id)) == ran
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_revoking_its_key_stops_a_batch(served):
    tenant_id, key = tenant_with_key(served)
    client = client_of(served, key)
    # The tenant's administrator still sees the batch once its creator's key is gone.
    owner = admin(served, "POST", f"/tenants/{tenant_id}/keys", json={"name": "owner", "role": "tenant-admin"}).json()["key"]
    batch = submit(client, requests_for("slow-model", 60))
    started(client, batch.id)
    assert admin(served, "DELETE", f"/keys/key_{key.split('_')[1]}").status_code == 200
    done = wait_for(client_of(served, owner), batch.id, {"cancelled"})
    assert done.request_counts.completed < 60
    not_run = [line for line in lines_of(client_of(served, owner), done.error_file_id) if line["error"]]
    assert not_run and {line["error"]["code"] for line in not_run} == {"batch_cancelled"}


def test_a_batch_killed_mid_run_resumes_and_bills_each_request_once(tmp_path, upstream):
    operator = make_key()
    first = Ferry(tmp_path, operator_key=operator)
    register(first, upstream, "slow-model", "slow-echo")
    tenant_id, key = tenant_with_key(first)
    batch = submit(client_of(first, key), requests_for("slow-model", 40))
    # Some requests have run: kill it mid-batch.
    started(client_of(first, key), batch.id)
    first.kill()
    second = Ferry(tmp_path, operator_key=operator)
    try:
        client = client_of(second, key)
        done = wait_for(client, batch.id, {"completed"})
        assert (done.request_counts.completed, done.request_counts.failed) == (40, 0)
        output = lines_of(client, done.output_file_id)
        assert sorted(line["custom_id"] for line in output) == sorted(f"req-{n}" for n in range(40))
        events, available = spent(second, tenant_id)
        ran = [event for event in events if event["request_id"].startswith(batch.id)]
        assert len({event["request_id"] for event in ran}) == len(ran) == 40, "each request billed exactly once"
        charged = sum(Decimal(event["cost"]) for event in ran)
        # Holds of requests cut off by the kill are released or settle as duplicates: the
        # balance is what the usage says, to the nanodollar, once no hold is left.
        deadline = time.monotonic() + 30
        while Decimal(admin(second, "GET", f"/tenants/{tenant_id}").json()["held_usd"]) != 0:
            assert time.monotonic() < deadline, "holds left"
            time.sleep(0.2)
        assert Decimal(admin(second, "GET", f"/tenants/{tenant_id}").json()["available_usd"]) == Decimal("5") - charged
    finally:
        second.stop()
