"""End to end with real models: `ferry serve` with its defaults pulls SmolLM2-135M-Instruct and
all-MiniLM-L6-v2, serves them from its local worker, and answers the OpenAI SDK."""

import math
import subprocess
import time
from decimal import ROUND_CEILING, Decimal

import httpx
import openai
import pytest

from conftest import Ferry, dashboard_series, ferry_binary, model_cache

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
# Under its template's default system prompt this Q4_1 135M model answers wrongly, in llama.cpp
# and in Ferry alike (see gpu-pool/tests/real_model.rs); with this system message it is right.
QUESTION = [
    {"role": "system", "content": "You are a helpful AI assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    server = Ferry(tmp_path_factory.mktemp("ferry-local"), env={"FERRY_MODELS_DIR": model_cache()}, args=(), start_timeout=600)
    yield server
    server.stop()


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key=served.operator_key, max_retries=0, timeout=120)


def test_the_default_models_are_registered(client, served):
    assert {CHAT, EMBED} <= {model.id for model in client.models.list()}
    assert f'"model":"{CHAT}"' in "\n".join(served.lines), "the printed curl calls the local model"


# These tests are about the engine: `no-store` keeps the response cache out of them.
FRESH = {"extra_headers": {"Cache-Control": "no-store"}}


def test_paris_greedy_streamed_and_not(client):
    whole = client.chat.completions.create(model=CHAT, messages=QUESTION, temperature=0, max_tokens=40, **FRESH)
    assert "Paris" in whole.choices[0].message.content
    chunks = list(client.chat.completions.create(model=CHAT, messages=QUESTION, temperature=0, max_tokens=40, stream=True, stream_options={"include_usage": True}, **FRESH))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    usage = chunks[-1].usage
    assert usage.prompt_tokens == whole.usage.prompt_tokens
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens


def test_the_pool_shows_in_the_metrics(client, served):
    """After a call, the local pool's replicas, queue and the cold start it took are exported."""
    client.chat.completions.create(model=CHAT, messages=QUESTION, temperature=0, max_tokens=5, **FRESH)
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    scraped = httpx.get(f"{served.url}/metrics", headers={"Authorization": f"Bearer {served.operator_key}"}, timeout=10)
    assert scraped.status_code == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(scraped.text)
        for sample in family.samples
    }
    local = (("deployment", "local"),)
    assert samples[("ferry_pool_replicas", (("deployment", "local"), ("state", "ready")))] >= 1
    assert samples[("ferry_pool_queue_depth", local)] == 0
    assert samples[("ferry_pool_cold_starts_total", local)] >= 1, "the first call woke the pool from zero"
    assert samples[("ferry_pool_cold_start_seconds_total", local)] > 0
    assert samples[("ferry_pool_replica_starts_total", local)] >= 1

    # The dashboard's pool panels query series Ferry exports (the rest: test_operations.py).
    families = {family.name for family in text_string_to_metric_families(scraped.text)}
    pool = {name for name in dashboard_series() if name.startswith("ferry_pool_")}
    assert len(pool) >= 5
    assert pool <= families, f"the dashboard queries series Ferry does not export: {pool - families}"


def test_the_same_seed_gives_the_same_text_both_ways(client):
    ask = dict(model=CHAT, messages=[{"role": "user", "content": "Write a line about the sea."}], temperature=0.9, seed=77, max_tokens=20, **FRESH)
    first = client.chat.completions.create(**ask).choices[0].message.content
    second = client.chat.completions.create(**ask).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**ask, stream=True) if c.choices)
    assert first == second == streamed


def test_max_tokens_finishes_with_length(client):
    reply = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "Tell me a long story."}], temperature=0, max_tokens=5)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5


def test_text_completions_on_the_local_model(client):
    reply = client.completions.create(model=CHAT, prompt="The capital of France is", temperature=0, max_tokens=5)
    assert reply.choices[0].text.strip()
    assert reply.usage.prompt_tokens > 0


def test_embeddings_through_the_gateway(client):
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply on Tuesday."]
    vectors = [d.embedding for d in client.embeddings.create(model=EMBED, input=texts).data]

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    assert abs(cosine(vectors[0], vectors[1]) - 0.755) < 0.01
    assert abs(cosine(vectors[0], vectors[2])) < 0.15


def test_a_prompt_longer_than_the_context_is_a_400(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "word " * 9000}], max_tokens=5)


def test_a_priced_local_model_bills_its_tenant_and_the_books_close(served):
    """Money on a real model: a tenant pays for real tokens, and `ferry billing close` and
    `ferry billing reconcile` run on the data of this very `ferry serve`."""

    def admin(method, path, **kwargs):
        headers = {"Authorization": f"Bearer {served.operator_key}"}
        return httpx.request(method, f"{served.url}/admin/v1{path}", headers=headers, timeout=30, **kwargs)

    price = {"input_per_mtok_usd": "0.10", "output_per_mtok_usd": "0.40", "per_call_usd": "0.0001"}
    assert admin("POST", f"/models/{CHAT}/prices", json={"price": price}).status_code == 201
    tenant = admin("POST", "/tenants", json={"name": "Local"}).json()
    assert admin("POST", f"/tenants/{tenant['id']}/credits", json={"amount_usd": "1"}).status_code == 201
    key = admin("POST", f"/tenants/{tenant['id']}/keys", json={"name": "k", "role": "member"}).json()["key"]
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key=key, max_retries=0, timeout=120)

    whole = client.chat.completions.create(model=CHAT, messages=QUESTION, temperature=0, max_tokens=20, **FRESH)
    chunks = list(client.chat.completions.create(model=CHAT, messages=QUESTION, temperature=0, max_tokens=20, stream=True, stream_options={"include_usage": True}, **FRESH))
    costs = []
    for usage in (whole.usage, chunks[-1].usage):
        exact = Decimal("0.0001") + (usage.prompt_tokens * Decimal("0.10") + usage.completion_tokens * Decimal("0.40")) / 1_000_000
        cost = Decimal(usage.model_extra["cost"])
        assert cost == exact.quantize(Decimal("0.000000001"), rounding=ROUND_CEILING)
        costs.append(cost)
    shown = admin("GET", f"/tenants/{tenant['id']}").json()
    assert (Decimal(shown["available_usd"]), Decimal(shown["held_usd"])) == (1 - sum(costs), 0)

    month = time.strftime("%Y-%m", time.gmtime())
    ferry = [str(ferry_binary()), "billing"]
    closed = subprocess.run([*ferry, "close", "--period", month, "--data-dir", str(served.data_dir)], capture_output=True, text=True, timeout=60)
    assert closed.returncode == 0, closed.stdout + closed.stderr
    (invoice,) = admin("GET", f"/tenants/{tenant['id']}/invoices").json()["data"]
    assert [(line["model"], line["requests"]) for line in invoice["lines"]] == [(CHAT, 2)]
    assert Decimal(invoice["total_usd"]) == sum(costs)
    reconciled = subprocess.run([*ferry, "reconcile", "--data-dir", str(served.data_dir)], capture_output=True, text=True, timeout=60)
    assert reconciled.returncode == 0, reconciled.stdout
