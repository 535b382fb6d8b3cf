"""Money end to end: prepaid holds under concurrency (one and two gateway processes sharing a
store), crashes mid-load, rate limits across processes, budgets, postpaid billing, price changes
mid-period, and `ferry billing close` / `ferry billing reconcile` on the data of real runs."""

import asyncio
import json
import random
import re
import sqlite3
import subprocess
import threading
import time
from decimal import Decimal

import httpx
import openai
import pytest

from conftest import Ferry, ferry_binary

PRICE = {"input_per_mtok_usd": "1", "output_per_mtok_usd": "2", "per_call_usd": "0.001"}
MESSAGES = [{"role": "user", "content": "count my money"}]


def admin(ferry, method, path, key=None, **kwargs):
    headers = {"Authorization": f"Bearer {key or ferry.operator_key}"}
    return httpx.request(method, f"{ferry.url}/admin/v1{path}", headers=headers, timeout=10, **kwargs)


def ok(response, status=200):
    assert response.status_code == status, response.text
    return response.json()


def billing(ferry_or_dir, *args):
    data_dir = getattr(ferry_or_dir, "data_dir", ferry_or_dir)
    return subprocess.run(
        [str(ferry_binary()), "billing", *args, "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60
    )


def this_month():
    return time.strftime("%Y-%m", time.gmtime())


def register(ferry, upstream, model_id="money-model", upstream_model="slow-echo", price=PRICE, **extra):
    spec = {"id": model_id, "deployments": [{"id": "d1", "upstream": {"url": upstream.base_url, "model": upstream_model}}], **extra}
    if price:
        spec["price"] = price
    ok(admin(ferry, "POST", "/models", json=spec))


def tenant_with_key(ferry, credit=None, billing_mode="prepaid", key_fields=None, tenant_fields=None):
    tenant = ok(admin(ferry, "POST", "/tenants", json={"name": "Acme", "billing": billing_mode, **(tenant_fields or {})}), 201)
    if credit:
        ok(admin(ferry, "POST", f"/tenants/{tenant['id']}/credits", json={"amount_usd": credit}), 201)
    key = ok(admin(ferry, "POST", f"/tenants/{tenant['id']}/keys", json={"name": "app", "role": "member", **(key_fields or {})}), 201)
    return tenant["id"], key["key"]


def balance(ferry, tenant_id):
    tenant = ok(admin(ferry, "GET", f"/tenants/{tenant_id}"))
    return Decimal(tenant["available_usd"]), Decimal(tenant["held_usd"])


def events(ferry, tenant_id):
    return ok(admin(ferry, "GET", f"/tenants/{tenant_id}/usage/events", params={"limit": 10000}))["data"]


def ledger(ferry, tenant_id):
    return ok(admin(ferry, "GET", f"/tenants/{tenant_id}/ledger", params={"limit": 1000}))["data"]


def hold_amount(transaction):
    return sum(Decimal(e["amount_usd"]) for e in transaction["entries"] if e["account"].endswith(":held"))


def assert_reconciles(ferry):
    result = billing(ferry, "reconcile")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reconciled" in result.stdout


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def gateway(data_dir):
    started = Ferry(data_dir)
    yield started
    started.stop()


# ---------------------------------------------------------------------------------------------
# Concurrency: the balance bounds what concurrent calls may spend.


class BalanceWatch:
    """Polls the tenant's balance while a load runs, remembering the lowest it saw."""

    def __init__(self, ferry, tenant_id):
        self.ferry, self.tenant_id = ferry, tenant_id
        self.lowest_available = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            available, _ = balance(self.ferry, self.tenant_id)
            self.lowest_available = available if self.lowest_available is None else min(self.lowest_available, available)
            time.sleep(0.01)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


async def fire(urls, key, count, model="money-model"):
    clients = [
        openai.AsyncOpenAI(
            base_url=f"{url}/v1",
            api_key=key,
            max_retries=0,
            timeout=60,
            http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=count, max_keepalive_connections=count)),
        )
        for url in urls
    ]

    async def one(index):
        client = clients[index % len(clients)]
        try:
            raw = await client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES, max_tokens=100)
            completion = raw.parse()
            return {"ok": True, "request_id": raw.headers["x-request-id"], "cost": Decimal(completion.usage.model_extra["cost"])}
        except openai.APIStatusError as error:
            return {"ok": False, "status": error.status_code, "error": error.response.json()["error"], "headers": error.response.headers}

    try:
        return await asyncio.gather(*(one(index) for index in range(count)))
    finally:
        for client in clients:
            await client.close()


@pytest.mark.parametrize("processes", [1, 2])
def test_concurrent_calls_never_spend_more_than_the_balance(data_dir, upstream, processes):
    first = Ferry(data_dir)
    gateways = [first] + [Ferry(data_dir, operator_key=first.operator_key) for _ in range(processes - 1)]
    try:
        register(first, upstream, max_output_tokens=100)
        # Each call holds about 0.0014 USD (its bytes as prompt tokens, 100 output tokens and the
        # per-call fee) and costs about 0.00101: the balance covers about 10 worst cases.
        start = Decimal("0.0145")
        tenant_id, key = tenant_with_key(first, credit=str(start))
        with BalanceWatch(first, tenant_id) as watch:
            results = asyncio.run(fire([g.url for g in gateways], key, 200))

        admitted = [r for r in results if r["ok"]]
        refused = [r for r in results if not r["ok"]]
        assert len(admitted) + len(refused) == 200
        assert admitted and refused
        for refusal in refused:
            assert refusal["status"] == 402, refusal
            assert refusal["error"]["type"] == "insufficient_quota"
            assert refusal["error"]["code"] in ("insufficient_credit", "in_flight_budget_exhausted"), refusal
            assert refusal["error"]["limit_source"] == "tenant_balance"
            if refusal["error"]["code"] == "in_flight_budget_exhausted":
                assert int(refusal["headers"]["retry-after"]) >= 1

        holds = [t for t in ledger(first, tenant_id) if t["kind"] == "hold"]
        worst_case = hold_amount(holds[0])
        assert all(hold_amount(t) == worst_case for t in holds)
        assert 8 <= start / worst_case <= 12, worst_case
        # Never more admitted at once than the balance covers; in all, no more than it pays for.
        assert len(admitted) <= start / min(r["cost"] for r in admitted)

        recorded = {e["request_id"]: e for e in events(first, tenant_id)}
        assert set(recorded) == {r["request_id"] for r in admitted}, "every admitted call completes and is charged"
        for call in admitted:
            assert recorded[call["request_id"]]["status"] == 200
            assert Decimal(recorded[call["request_id"]]["cost"]) == call["cost"]
        charged = sum(r["cost"] for r in admitted)
        assert charged <= start
        available, held = balance(first, tenant_id)
        assert held == 0, "every hold is released"
        assert available == start - charged
        assert watch.lowest_available is not None and watch.lowest_available >= 0
        assert_reconciles(first)
    finally:
        for gateway in gateways:
            gateway.stop()


# ---------------------------------------------------------------------------------------------
# Crashes: a gateway killed mid-call charges every answer its caller received exactly once.


class Load:
    """Worker threads calling whichever gateway is up, streamed and plain, recording every
    answer received whole (a plain 200, or a stream that reached `[DONE]`)."""

    def __init__(self, key, url, threads=6, model="money-model"):
        self.key, self.url, self.model = key, url, model
        self.received = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(seed,), daemon=True) for seed in range(threads)]

    def _run(self, seed):
        chooser = random.Random(seed)
        while not self.stop.is_set():
            url = self.url
            body = {"model": self.model, "messages": MESSAGES, "max_tokens": 50}
            headers = {"Authorization": f"Bearer {self.key}"}
            try:
                if chooser.random() < 0.5:
                    response = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=10)
                    if response.status_code == 200:
                        self._got(response.headers["x-request-id"], response.json()["usage"]["cost"])
                else:
                    body |= {"stream": True, "stream_options": {"include_usage": True}}
                    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=10) as response:
                        if response.status_code != 200:
                            continue
                        cost, done = None, False
                        for line in response.iter_lines():
                            if line == "data: [DONE]":
                                done = True
                            elif line.startswith("data: ") and '"usage"' in line:
                                usage = json.loads(line[6:]).get("usage")
                                cost = usage["cost"] if usage else cost
                        if done:
                            self._got(response.headers["x-request-id"], cost)
            except (httpx.HTTPError, json.JSONDecodeError):
                time.sleep(0.05)

    def _got(self, request_id, cost):
        with self.lock:
            assert request_id not in self.received
            self.received[request_id] = Decimal(cost)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join()


def test_a_gateway_killed_mid_load_charges_each_answer_received_exactly_once(data_dir, upstream):
    # Holds of calls cut short by a crash expire 3 s after they were made (calls take < 1 s).
    args = ("--no-local-models", "--hold-ttl-seconds", "3")
    gateway = Ferry(data_dir, args=args)
    try:
        register(gateway, upstream)
        start = Decimal("100")
        tenant_id, key = tenant_with_key(gateway, credit=str(start))
        with Load(key, gateway.url) as load:
            for _ in range(4):
                time.sleep(1.5)
                gateway.kill()
                gateway = Ferry(data_dir, args=args, operator_key=gateway.operator_key)
                load.url = gateway.url
            time.sleep(1.5)
        received = dict(load.received)
        assert len(received) >= 10

        deadline = time.monotonic() + 20
        while balance(gateway, tenant_id)[1] != 0:
            assert time.monotonic() < deadline, "holds of killed calls must expire"
            time.sleep(0.5)

        recorded = events(gateway, tenant_id)
        by_id = {e["request_id"]: e for e in recorded}
        assert len(by_id) == len(recorded), "one usage event per request id"
        for request_id, cost in received.items():
            assert by_id[request_id]["status"] == 200, by_id[request_id]
            assert Decimal(by_id[request_id]["cost"]) == cost
        settles = [t["request_id"] for t in ledger(gateway, tenant_id) if t["kind"] in ("settle", "charge")]
        assert len(settles) == len(set(settles)), "nothing is settled twice"
        charged = sum(Decimal(e["cost"]) for e in recorded)
        available, held = balance(gateway, tenant_id)
        assert (available, held) == (start - charged, 0)
        assert_reconciles(gateway)
    finally:
        gateway.stop()


# ---------------------------------------------------------------------------------------------
# Rate limits: one atomic take across every bucket and every process.


def test_a_60_rpm_key_gets_60_calls_then_429s_across_two_processes(data_dir, upstream):
    first = Ferry(data_dir)
    second = Ferry(data_dir, operator_key=first.operator_key)
    try:
        register(first, upstream, model_id="rate-model", upstream_model="echo", price=None)
        _, key = tenant_with_key(first, key_fields={"limits": {"rpm": 60}})
        clients = [openai.OpenAI(base_url=f"{g.url}/v1", api_key=key, max_retries=0, timeout=10) for g in (first, second)]
        answers = []
        began = time.monotonic()
        for index in range(70):
            try:
                raw = clients[index % 2].chat.completions.with_raw_response.create(model="rate-model", messages=MESSAGES)
                answers.append((200, raw.headers, None))
            except openai.RateLimitError as error:
                answers.append((429, error.response.headers, error.response.json()["error"]))
            if index == 59:
                sixtieth_after = time.monotonic() - began
        elapsed = time.monotonic() - began

        assert [status for status, _, _ in answers[:60]] == [200] * 60
        assert answers[0][1]["x-ratelimit-limit-requests"] == "60"
        assert answers[0][1]["x-ratelimit-remaining-requests"] == "59"
        # Sixty taken; what is left is what refilled meanwhile (one a second), and no more.
        assert int(answers[59][1]["x-ratelimit-remaining-requests"]) <= int(sixtieth_after) + 1
        granted = sum(1 for status, _, _ in answers if status == 200)
        # A 60/min bucket refills one call a second.
        assert 60 <= granted <= 60 + int(elapsed) + 1
        refused = [(headers, error) for status, headers, error in answers if status == 429]
        assert refused
        for headers, error in refused:
            assert error["code"] == "rate_limit_requests" and error["type"] == "rate_limit_error"
            assert 1 <= int(headers["retry-after"]) <= 2
            assert headers["x-ratelimit-limit-requests"] == "60"
            assert headers["x-ratelimit-remaining-requests"] == "0"
            assert headers["x-ratelimit-reset-requests"].endswith(("ms", "s"))
    finally:
        first.stop()
        second.stop()


def test_token_limits_take_the_estimate_at_admission_and_the_actual_after(gateway, upstream):
    register(gateway, upstream, model_id="token-model", upstream_model="echo", price=None)
    _, key = tenant_with_key(gateway, key_fields={"limits": {"tpm": 1000}})
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=10)

    first = client.chat.completions.with_raw_response.create(model="token-model", messages=MESSAGES, max_tokens=200)
    after_first = int(first.headers["x-ratelimit-remaining-tokens"])
    actual = first.parse().usage.total_tokens
    # The estimate (about a token per 4 bytes of body, plus max_tokens) is well above the actual.
    assert 1000 - after_first > 200 > actual
    second = client.chat.completions.with_raw_response.create(model="token-model", messages=MESSAGES, max_tokens=200)
    after_second = int(second.headers["x-ratelimit-remaining-tokens"])
    # Between the two, the first call's estimate was replaced by its actual token count.
    assert abs((after_first - after_second) - actual) <= 3, (after_first, after_second, actual)

    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="token-model", messages=MESSAGES, max_tokens=2000)
    assert refused.value.response.json()["error"]["code"] == "rate_limit_tokens"
    assert "retry-after" not in refused.value.response.headers, "a call larger than the limit never fits"


# ---------------------------------------------------------------------------------------------
# Budgets, postpaid tenants, idempotent credits.


def test_a_hard_key_budget_refuses_and_a_soft_tenant_budget_alerts(gateway, upstream):
    register(gateway, upstream, max_output_tokens=100)
    tenant_id, key = tenant_with_key(
        gateway,
        credit="10",
        key_fields={"budgets": [{"period": "day", "amount_usd": "0.0025"}]},
        tenant_fields={"budgets": [{"period": "month", "amount_usd": "0.0015", "enforcement": "soft"}]},
    )
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=10)
    for _ in range(2):
        client.chat.completions.create(model="money-model", messages=MESSAGES, max_tokens=100)
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="money-model", messages=MESSAGES, max_tokens=100)
    error = refused.value.response.json()["error"]
    assert refused.value.status_code == 402
    assert (error["code"], error["limit_source"]) == ("insufficient_credit", "key_daily_budget")
    assert int(refused.value.response.headers["retry-after"]) <= 86400

    alerts = ok(admin(gateway, "GET", f"/tenants/{tenant_id}/alerts"))["data"]
    assert [(a["limit_source"], a["enforcement"]) for a in alerts] == [("tenant_monthly_budget", "soft")]


def test_a_postpaid_tenant_calls_without_credit_and_is_invoiced(gateway, upstream):
    register(gateway, upstream)
    tenant_id, key = tenant_with_key(gateway, billing_mode="postpaid")
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=10)
    costs = [Decimal(client.chat.completions.create(model="money-model", messages=MESSAGES).usage.model_extra["cost"]) for _ in range(3)]
    available, held = balance(gateway, tenant_id)
    assert (available, held) == (-sum(costs), 0), "a postpaid balance is what the tenant owes"
    assert not [t for t in ledger(gateway, tenant_id) if t["kind"] == "hold"]

    closed = billing(gateway, "close", "--period", this_month())
    assert closed.returncode == 0, closed.stderr
    invoice = ok(admin(gateway, "GET", f"/tenants/{tenant_id}/invoices"))["data"][0]
    assert Decimal(invoice["total_usd"]) == sum(costs)
    assert_reconciles(gateway)


def test_credits_are_idempotent_and_never_overdraw(gateway):
    tenant = ok(admin(gateway, "POST", "/tenants", json={"name": "Acme"}), 201)
    path = f"/tenants/{tenant['id']}/credits"
    first = ok(admin(gateway, "POST", path, json={"amount_usd": "5.25", "idempotency_key": "stripe-evt-1"}), 201)
    again = ok(admin(gateway, "POST", path, json={"amount_usd": "5.25", "idempotency_key": "stripe-evt-1"}), 200)
    assert again["replayed"] and again["transaction"]["id"] == first["transaction"]["id"]
    assert again["balance_usd"] == "5.25"
    reused = admin(gateway, "POST", path, json={"amount_usd": "9", "idempotency_key": "stripe-evt-1"})
    assert reused.status_code == 400
    for body, param in [({"amount_usd": "0"}, "amount_usd"), ({"amount_usd": "-1"}, "amount_usd"), ({"amount_usd": "1.0000000001"}, "amount_usd")]:
        refused = admin(gateway, "POST", path, json=body)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param, refused.text
    overdraw = admin(gateway, "POST", f"/tenants/{tenant['id']}/adjustments", json={"amount_usd": "-6", "memo": "test"})
    assert overdraw.status_code == 400
    assert ok(admin(gateway, "GET", f"/tenants/{tenant['id']}"))["balance_usd"] == "5.25"


# ---------------------------------------------------------------------------------------------
# Prices change mid-period; invoices and reconciliation.


def test_a_price_change_mid_period_bills_each_call_at_its_own_price(gateway, upstream):
    register(gateway, upstream, price={"input_per_mtok_usd": "1", "output_per_mtok_usd": "2"})
    tenant_id, key = tenant_with_key(gateway, credit="10")
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=10)
    call = lambda: Decimal(client.chat.completions.create(model="money-model", messages=MESSAGES).usage.model_extra["cost"])  # noqa: E731
    before = [call() for _ in range(3)]
    past = admin(gateway, "POST", "/models/money-model/prices", json={"price": PRICE, "effective_from": 1_000_000_000})
    assert past.status_code == 400 and past.json()["error"]["param"] == "effective_from"
    ok(admin(gateway, "POST", "/models/money-model/prices", json={"price": {"input_per_mtok_usd": "10", "output_per_mtok_usd": "20"}}), 201)
    after = [call() for _ in range(2)]
    assert after[0] == before[0] * 10
    assert len(ok(admin(gateway, "GET", "/models/money-model/prices"))["data"]) == 2
    assert ok(admin(gateway, "GET", "/models/money-model"))["price"]["input_per_mtok_usd"] == "10.00", "the model shows the price in effect"

    closed = billing(gateway, "close", "--period", this_month())
    assert closed.returncode == 0, closed.stdout + closed.stderr
    (invoice,) = ok(admin(gateway, "GET", f"/tenants/{tenant_id}/invoices"))["data"]
    (line,) = invoice["lines"]
    assert (line["model"], line["requests"]) == ("money-model", 5)
    assert Decimal(line["cost_usd"]) == sum(before) + sum(after) == Decimal(invoice["total_usd"])
    again = billing(gateway, "close", "--period", this_month())
    assert "unchanged" in again.stdout, "closing again reproduces the same invoice"

    export = gateway.data_dir / "objects" / "usage" / f"period={this_month()}" / f"tenant={tenant_id}.jsonl"
    exported = [json.loads(line) for line in export.read_text().splitlines()]
    assert [e["specversion"] for e in exported] == ["1.0"] * 5
    assert sorted(Decimal(e["data"]["cost"]) for e in exported) == sorted(before + after)

    report = ok(admin(gateway, "GET", f"/tenants/{tenant_id}/usage", params={"group_by": "day,model,key"}))["data"]
    assert [(r["model"], r["requests"]) for r in report] == [("money-model", 5)]
    assert_reconciles(gateway)


def test_reconcile_finds_a_nanodollar_out_of_place(data_dir, upstream):
    gateway = Ferry(data_dir)
    try:
        register(gateway, upstream)
        tenant_id, key = tenant_with_key(gateway, credit="1")
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0).chat.completions.create(model="money-model", messages=MESSAGES)
        assert_reconciles(gateway)
    finally:
        gateway.stop()
    with sqlite3.connect(data_dir / "ferry.db") as db:
        db.execute("UPDATE usage_events SET cost_nanos = cost_nanos + 1 WHERE tenant_id = ?", (tenant_id,))
    result = billing(data_dir, "reconcile")
    assert result.returncode == 1
    assert "difference 0.000000001" in result.stdout


def test_the_hold_bounds_everything_a_call_may_generate(gateway, upstream):
    register(gateway, upstream, upstream_model="echo", max_output_tokens=1000)
    tenant_id, key = tenant_with_key(gateway, credit="10")

    def hold_for(path, body):
        raw = json.dumps(body).encode()
        response = httpx.post(f"{gateway.url}/v1{path}", content=raw, headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}, timeout=10)
        assert response.status_code == 200, response.text
        request_id = response.headers["x-request-id"]
        (hold,) = [t for t in ledger(gateway, tenant_id) if t["kind"] == "hold" and t["request_id"] == request_id]
        return hold_amount(hold), len(raw)

    def expected(body_bytes, output_tokens):
        # Prompt bound: the body's bytes plus 64 template tokens at $1/Mtok; output at $2/Mtok;
        # plus the $0.001 fee. In nanodollars: 1000 per input token, 2000 per output token.
        return Decimal((body_bytes + 64) * 1000 + output_tokens * 2000 + 1_000_000) / 10**9

    hold, size = hold_for("/completions", {"model": "money-model", "prompt": ["a", "b", "c"], "max_tokens": 100, "n": 2})
    assert hold == expected(size, 3 * 2 * 100), "every prompt of a batch, every choice"
    hold, size = hold_for("/completions", {"model": "money-model", "prompt": "a"})
    assert hold == expected(size, 16), "legacy completions default to 16 tokens"
    hold, size = hold_for("/chat/completions", {"model": "money-model", "messages": MESSAGES, "max_tokens": 700, "max_completion_tokens": 5})
    assert hold == expected(size, 700), "with both limits set, a backend may read either"
    hold, size = hold_for("/chat/completions", {"model": "money-model", "messages": MESSAGES})
    assert hold == expected(size, 1000), "no max_tokens: the model's cap"
    too_many = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "money-model", "messages": MESSAGES, "max_tokens": 1001}, headers={"Authorization": f"Bearer {key}"})
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "max_tokens"


def test_a_stream_that_would_outlive_its_hold_is_cut_off_and_charged_for_what_it_delivered(data_dir, upstream):
    gateway = Ferry(data_dir, args=("--no-local-models", "--hold-ttl-seconds", "3"))
    try:
        register(gateway, upstream, model_id="endless", upstream_model="slow-stream")
        tenant_id, key = tenant_with_key(gateway, credit="10")
        body = {"model": "endless", "messages": MESSAGES, "stream": True}
        lines = []
        began = time.monotonic()
        with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30) as response:
            assert response.status_code == 200
            request_id = response.headers["x-request-id"]
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert time.monotonic() - began < 10, "cut off at the call's time limit, before its hold expires"
        assert "data: [DONE]" not in lines
        final = json.loads(lines[-1][6:])
        assert final["choices"][0]["finish_reason"] == "error" and final["error"]["type"] == "timeout_error"
        (event,) = [e for e in events(gateway, tenant_id) if e["request_id"] == request_id]
        assert event["status"] == 504
        assert event["completion_tokens"] == len(lines) - 1 > 10
        assert Decimal(event["cost"]) > Decimal("0.001"), "charged the fee and every token delivered"
        assert balance(gateway, tenant_id)[1] == 0
        assert_reconciles(gateway)
    finally:
        gateway.stop()


# ---------------------------------------------------------------------------------------------
# One truth per charge: what an answer says a call cost is what the tenant was charged.


async def overshooting_calls(url, key, count):
    """`count` concurrent calls to a backend that overshoots `max_tokens`, every other one
    streamed; each gives (request id, the cost its answer states), or None when refused (402)."""
    client = openai.AsyncOpenAI(
        base_url=f"{url}/v1",
        api_key=key,
        max_retries=0,
        timeout=60,
        http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=count, max_keepalive_connections=count)),
    )

    async def one(index):
        ask = {"model": "overshoot-model", "messages": MESSAGES, "max_tokens": 10}
        try:
            if index % 2:
                raw = await client.chat.completions.with_raw_response.create(**ask, stream=True, stream_options={"include_usage": True})
                usage = None
                async for chunk in raw.parse():
                    usage = chunk.usage or usage
                return raw.headers["x-request-id"], Decimal(usage.model_extra["cost"])
            raw = await client.chat.completions.with_raw_response.create(**ask)
            return raw.headers["x-request-id"], Decimal(raw.parse().usage.model_extra["cost"])
        except openai.APIStatusError as error:
            assert error.status_code == 402, error.response.text
            return None

    try:
        return await asyncio.gather(*(one(index) for index in range(count)))
    finally:
        await client.close()


@pytest.mark.parametrize(
    "billing_mode, credit",
    [("prepaid", "10"), ("prepaid", "0.02"), ("postpaid", None)],
    ids=["prepaid-enough", "prepaid-short", "postpaid"],
)
def test_an_answer_states_what_was_charged_when_the_backend_overshoots(gateway, upstream, billing_mode, credit):
    register(gateway, upstream, model_id="overshoot-model", upstream_model="overshoot")
    tenant_id, key = tenant_with_key(gateway, credit=credit, billing_mode=billing_mode)
    start, _ = balance(gateway, tenant_id)

    answered = [call for call in asyncio.run(overshooting_calls(gateway.url, key, 100)) if call]
    told = {request_id: cost for request_id, cost in answered}
    assert len(told) == len(answered) > 0

    recorded = {e["request_id"]: Decimal(e["cost"]) for e in events(gateway, tenant_id) if e["status"] == 200}
    assert recorded == told, "each usage event says what its answer said"
    available, held = balance(gateway, tenant_id)
    assert held == 0
    assert start - available == sum(told.values()), "the balance fell by exactly what the answers said"
    # Each call's whole cost, five times its hold: 7 prompt tokens at $1/Mtok, the 2,000
    # completion tokens at $2/Mtok, and the fee.
    full = Decimal(7 * 1000 + 2000 * 2000 + 1_000_000) / 10**9
    losses = [t for t in ledger(gateway, tenant_id) if t["kind"] == "loss"]
    written_off = sum(Decimal(e["amount_usd"]) for t in losses for e in t["entries"] if e["account"].endswith(":losses"))
    if billing_mode == "prepaid" and credit == "0.02":
        assert available == 0, "the balance paid what it could, and no more"
        assert written_off > 0
        assert sum(told.values()) + written_off == full * len(told), "what was not charged was written off"
        assert {t["request_id"] for t in losses} <= set(told)
        reported = re.search(r"written off ([0-9.]+) USD", billing(gateway, "reconcile").stdout)
        assert reported and Decimal(reported.group(1)) == written_off, "reconciliation shows the loss"
    else:
        assert set(told.values()) == {full}, "every call charged its whole cost"
        assert losses == []
    assert_reconciles(gateway)


def test_a_member_sees_only_its_own_keys_usage(gateway, upstream):
    register(gateway, upstream, upstream_model="echo")
    tenant_id, first_key = tenant_with_key(gateway, credit="1")
    second = ok(admin(gateway, "POST", f"/tenants/{tenant_id}/keys", json={"name": "other", "role": "member"}), 201)
    for key in (first_key, second["key"], second["key"]):
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0).chat.completions.create(model="money-model", messages=MESSAGES)

    own = ok(admin(gateway, "GET", f"/tenants/{tenant_id}/usage/events", key=second["key"]))["data"]
    assert [e["key_id"] for e in own] == [second["id"], second["id"]]
    report = ok(admin(gateway, "GET", f"/tenants/{tenant_id}/usage", key=first_key, params={"group_by": "key"}))["data"]
    assert [r["requests"] for r in report] == [1]
    assert len(events(gateway, tenant_id)) == 3, "the operator sees every key's"
    assert admin(gateway, "GET", f"/tenants/{tenant_id}/ledger", key=first_key).status_code == 403
    other_tenant, _ = tenant_with_key(gateway)
    assert admin(gateway, "GET", f"/tenants/{other_tenant}/usage/events", key=first_key).status_code == 404
