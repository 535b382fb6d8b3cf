"""Credit leases across gateway processes sharing one data directory (one SQLite file, one
journal directory): the balance is spent exactly, to the last call it pays for, whatever the
number of processes and whether calls were served from leases or one by one; a lease holder
killed mid-load is made good by the process that lives (its journal written to the store, its
lease given back), and the books reconcile."""

import asyncio
import time
from decimal import Decimal

import httpx
import pytest

from conftest import Ferry
from test_money import (
    MESSAGES,
    Load,
    assert_reconciles,
    balance,
    events,
    fire,
    hold_amount,
    ledger,
    register,
    tenant_with_key,
)


def one_call(ferry, key, model="money-model"):
    body = {"model": model, "messages": MESSAGES, "max_tokens": 100}
    return httpx.post(f"{ferry.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def hold_and_cost(ferry):
    """What one call holds and what it costs, from a probe tenant's first call (admitted alone)."""
    tenant_id, key = tenant_with_key(ferry, credit="10")
    answer = one_call(ferry, key)
    assert answer.status_code == 200, answer.text
    (hold,) = [t for t in ledger(ferry, tenant_id) if t["kind"] == "hold"]
    return hold_amount(hold), Decimal(answer.json()["usage"]["cost"])


def spend_to_the_last_call(gateways, key, calls_paid_for, burst, model="money-model", overloaded_allowed=False, seconds=30):
    """Calls until the balance refuses: bursts across the gateways, busy enough to be served
    from leases, then one at a time, waiting out credit other gateways' leases still hold. What
    was answered, each with its request id and stated cost."""
    answered = []
    while len(answered) < calls_paid_for:
        results = asyncio.run(fire([g.url for g in gateways], key, min(burst, 2 * calls_paid_for), model=model))
        served = [r for r in results if r["ok"]]
        for refusal in (r for r in results if not r["ok"]):
            overloaded = overloaded_allowed and refusal["error"]["code"] == "overloaded"
            assert refusal["status"] == 402 or overloaded, refusal
        answered += served
        if not served:
            break
    deadline = time.monotonic() + seconds
    while True:
        answer = one_call(gateways[len(answered) % len(gateways)], key, model=model)
        if answer.status_code == 200:
            answered.append({"request_id": answer.headers["x-request-id"], "cost": Decimal(answer.json()["usage"]["cost"])})
            continue
        assert answer.status_code == 402 or (overloaded_allowed and answer.status_code == 503), answer.text
        if answer.json()["error"]["code"] == "insufficient_credit":
            return answered
        assert time.monotonic() < deadline, "credit held by leases comes back"
        time.sleep(0.3)


def assert_each_answer_charged_once(recorded, received):
    """Each answer received (request id: stated cost) has one usage event, of that cost; what
    all the events charged."""
    by_id = {e["request_id"]: e for e in recorded}
    assert len(by_id) == len(recorded), "one usage event per request id"
    for request_id, cost in received.items():
        assert by_id[request_id]["status"] == 200, by_id[request_id]
        assert Decimal(by_id[request_id]["cost"]) == cost, "each answer charged what it said"
    return sum(Decimal(e["cost"]) for e in recorded)


def leases(ferry, tenant_id):
    """The tenant's holds that are credit leases."""
    return [t for t in ledger(ferry, tenant_id) if t["kind"] == "hold" and t["request_id"].startswith("lease:")]


def wait_until_nothing_held(ferry, tenant_id, seconds=20):
    deadline = time.monotonic() + seconds
    while balance(ferry, tenant_id)[1] != 0:
        assert time.monotonic() < deadline, "every lease and hold is given back"
        time.sleep(0.2)


@pytest.mark.parametrize("calls_paid_for", [1, 3, 1000])
def test_three_gateways_spend_a_balance_to_its_last_call_and_no_further(tmp_path, upstream, calls_paid_for):
    data_dir = tmp_path / "data"
    first = Ferry(data_dir)
    gateways = [first] + [Ferry(data_dir, operator_key=first.operator_key) for _ in range(2)]
    try:
        register(first, upstream, upstream_model="echo", max_output_tokens=100)
        hold, cost = hold_and_cost(first)
        assert cost < hold
        # Pays for exactly `calls_paid_for` calls: after one fewer, a whole hold is left; after
        # them, less than one.
        credit = hold + (calls_paid_for - 1) * cost
        tenant_id, key = tenant_with_key(first, credit=str(credit))

        answered = spend_to_the_last_call(gateways, key, calls_paid_for, burst=300)
        assert len(answered) == calls_paid_for
        wait_until_nothing_held(first, tenant_id)
        available, held = balance(first, tenant_id)
        charged = sum(call["cost"] for call in answered)
        assert (available, held) == (credit - charged, 0)
        assert 0 <= available < hold
        recorded = {e["request_id"]: Decimal(e["cost"]) for e in events(first, tenant_id)}
        assert recorded == {call["request_id"]: call["cost"] for call in answered}
        holds = [t for t in ledger(first, tenant_id) if t["kind"] == "hold"]
        if calls_paid_for >= 1000:
            # One by one: each gateway's first calls (before it is busy) and the last ~128 (a
            # balance too small to share); the rest from leases.
            assert len(holds) < calls_paid_for / 2, f"{len(holds)} holds: most calls came from leases"
        assert_reconciles(first)
    finally:
        for gateway in gateways:
            gateway.stop()


def test_a_lease_holder_killed_mid_load_is_made_good_by_the_gateway_that_lives(tmp_path, upstream):
    # Holds (and leases) of calls cut short expire 3 s after they were made.
    args = ("--no-local-models", "--hold-ttl-seconds", "3")
    data_dir = tmp_path / "data"
    doomed = Ferry(data_dir, args=args)
    survivor = Ferry(data_dir, args=args, operator_key=doomed.operator_key)
    try:
        register(doomed, upstream, upstream_model="echo")
        start = Decimal("100")
        tenant_id, key = tenant_with_key(doomed, credit=str(start))
        # Busy enough to lease on a loaded machine too (calls crowding the store), and killed
        # only once it holds a lease and has answered a good many calls.
        with Load(key, doomed.url, threads=8) as on_doomed, Load(key, survivor.url, threads=8) as on_survivor:
            deadline = time.monotonic() + 30
            while len(on_doomed.received) < 32 or not leases(doomed, tenant_id):
                assert time.monotonic() < deadline, "the gateways answer, from leases"
                time.sleep(0.2)
            doomed.kill()
            time.sleep(2)
        received = {**on_doomed.received, **on_survivor.received}
        assert len(on_doomed.received) >= 16, "the doomed gateway was busy"
        holds = [t for t in ledger(survivor, tenant_id) if t["kind"] == "hold"]
        assert len(holds) < len(received) / 2, "most calls came from leases"

        # The survivor adopts the dead gateway's journal (within seconds) and gives its lease back.
        wait_until_nothing_held(survivor, tenant_id)
        charged = assert_each_answer_charged_once(events(survivor, tenant_id), received)
        assert balance(survivor, tenant_id) == (start - charged, 0)
        leftovers = [path for path in (data_dir / "journal").iterdir() if not path.name.startswith(".")]
        assert len(leftovers) == 1, "only the survivor's own journal is left"
        assert_reconciles(survivor)
    finally:
        survivor.stop()
        doomed.stop()
