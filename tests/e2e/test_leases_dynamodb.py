"""Credit leases across gateway functions sharing one DynamoDB table (moto), as on Knative: each
gateway process leases busy tenants' credit, with no journal (no disk outlives a pod), so each
leased call's usage is in the table before its answer. The balance is spent exactly, to the last
call it pays for, over three gateways; a lease holder killed mid-load loses nothing: its lease
expires, the billing function's `expire_holds` gives the credit back, and the books reconcile."""

import time
from decimal import Decimal
from types import SimpleNamespace

import httpx
import pytest

from conftest import ferry_binary, make_key
from test_lambda import AWS, Process, start_moto
from test_leases import assert_each_answer_charged_once, leases, one_call, spend_to_the_last_call
from test_money import Load, balance, events, hold_amount, ledger, register, tenant_with_key


@pytest.fixture(scope="module")
def aws():
    """moto, one request at a time, with a bucket for the billing function."""
    moto, endpoint, _ = start_moto()
    yield {
        **AWS,
        "AWS_ENDPOINT_URL": endpoint,
        "FERRY_STORE": "dynamodb",
        "FERRY_DYNAMODB_TABLE": "ferry-leases",
        "FERRY_S3_BUCKET": "ferry-exports",
        "FERRY_S3_FORCE_PATH_STYLE": "true",
    }
    moto.stop()


def function(name, env, *args):
    return Process(
        [ferry_binary(), "function", name, *args, "--addr", "127.0.0.1:0"],
        env=env,
        ready_prefix="listening on ",
        timeout=60,
    )


@pytest.fixture(scope="module")
def admin(aws):
    """The admin function, which creates the table; shaped like `Ferry` for test_money's helpers."""
    key = make_key()
    process = function("admin", {**aws, "FERRY_OPERATOR_KEY": key}, "--create-table")
    yield SimpleNamespace(url=process.url, operator_key=key)
    process.stop()


@pytest.fixture(scope="module")
def billing(aws):
    process = function("billing", aws)

    def run(job):
        answer = httpx.post(f"{process.url}/jobs", json={"job": job}, timeout=120)
        assert answer.status_code == 200, answer.text
        return answer.json()

    yield run
    process.stop()


def gateways(aws, count, **env):
    return [function("gateway", {**aws, "FERRY_LEASES": "true", **env}) for _ in range(count)]


def assert_reconciles(billing):
    outcome = billing("reconcile")
    assert outcome["discrepancies"] == [], outcome


@pytest.mark.parametrize("calls_paid_for", [1, 3, 1000])
def test_three_gateway_functions_spend_a_balance_to_its_last_call(aws, admin, billing, upstream, calls_paid_for):
    model = f"leased-{calls_paid_for}"
    register(admin, upstream, model_id=model, upstream_model="echo", max_output_tokens=100)
    started = gateways(aws, 3)
    try:
        # What one call holds and costs, from a probe tenant's first call (admitted alone).
        probe_id, probe_key = tenant_with_key(admin, credit="10")
        wait_for_key(started[:1], probe_key)
        answer = wait_for_model(started[0], probe_key, model)
        assert answer.status_code == 200, answer.text
        (probe_hold,) = [t for t in ledger(admin, probe_id) if t["kind"] == "hold"]
        hold, cost = hold_amount(probe_hold), Decimal(answer.json()["usage"]["cost"])
        assert cost < hold
        credit = hold + (calls_paid_for - 1) * cost
        tenant_id, key = tenant_with_key(admin, credit=str(credit))
        wait_for_key(started, key)

        # Sixty at once: as many as moto, one request at a time, answers within the SDK's
        # timeout on a busy machine. Near the end, the balance too small to lease, the calls
        # race each other at the store; one that lost too many races is refused as
        # `overloaded`, and not charged.
        answered = spend_to_the_last_call(started, key, calls_paid_for, burst=60, model=model, overloaded_allowed=True, seconds=60)
        assert len(answered) == calls_paid_for
        wait_until_nothing_held(admin, tenant_id)
        available, held = balance(admin, tenant_id)
        charged = sum(call["cost"] for call in answered)
        assert (available, held) == (credit - charged, 0)
        recorded = {e["request_id"]: Decimal(e["cost"]) for e in events(admin, tenant_id)}
        assert recorded == {call["request_id"]: call["cost"] for call in answered}
        if calls_paid_for >= 1000:
            holds = [t for t in ledger(admin, tenant_id) if t["kind"] == "hold"]
            assert len(holds) < calls_paid_for / 2, f"{len(holds)} holds: most calls came from leases"
        assert_reconciles(billing)
    finally:
        for gateway in started:
            gateway.stop()


def test_a_killed_lease_holder_loses_nothing_once_its_lease_expires(aws, admin, billing, upstream):
    model = "leased-kill"
    register(admin, upstream, model_id=model, upstream_model="echo")
    # Holds and leases of calls cut short expire 3 s after they were made.
    doomed, survivor = gateways(aws, 2, FERRY_HOLD_TTL_SECONDS="3")
    try:
        start = Decimal("100")
        tenant_id, key = tenant_with_key(admin, credit=str(start))
        wait_for_key([doomed, survivor], key)
        assert wait_for_model(doomed, key, model).status_code == 200
        with Load(key, doomed.url, threads=8, model=model) as on_doomed, Load(key, survivor.url, threads=8, model=model) as on_survivor:
            deadline = time.monotonic() + 30
            while len(on_doomed.received) < 32 or not leases(admin, tenant_id):
                assert time.monotonic() < deadline, "the gateways answer, from leases"
                time.sleep(0.2)
            doomed.process.kill()
            doomed.process.wait(timeout=10)
            time.sleep(2)
        received = {**on_doomed.received, **on_survivor.received}
        assert len(on_doomed.received) >= 16, "the doomed gateway was busy"
        # The survivor gives its own lease back when it stops; the dead one's lease expires.
        survivor.stop()
        deadline = time.monotonic() + 20
        while balance(admin, tenant_id)[1] != 0:
            assert time.monotonic() < deadline, "the dead gateway's lease expires"
            time.sleep(1)
            billing("expire_holds")

        # The first call (`wait_for_model`'s) is in the events too.
        charged = assert_each_answer_charged_once(events(admin, tenant_id), received)
        assert balance(admin, tenant_id) == (start - charged, 0)
        assert_reconciles(billing)
    finally:
        survivor.stop()
        doomed.stop()


def wait_for_key(gateways, key, seconds=15):
    """Until every gateway knows a key made on the admin function (within its key directory's
    recheck), asked with a call that costs nothing."""
    deadline = time.monotonic() + seconds
    for gateway in gateways:
        while httpx.get(f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 401:
            assert time.monotonic() < deadline, "a new key works on every gateway"
            time.sleep(0.3)


def wait_for_model(gateway, key, model, seconds=15):
    """The first call on a gateway, once its read cache has seen the model registered."""
    deadline = time.monotonic() + seconds
    while True:
        answer = one_call(gateway, key, model=model)
        if answer.status_code != 404 or time.monotonic() > deadline:
            return answer
        time.sleep(0.5)


def wait_until_nothing_held(admin, tenant_id, seconds=30):
    deadline = time.monotonic() + seconds
    while balance(admin, tenant_id)[1] != 0:
        assert time.monotonic() < deadline, "every lease and hold is given back"
        time.sleep(0.3)
