"""End to end: operating Ferry. Traces reach an OTLP receiver with the GenAI attributes and
W3C trace context carried through to the backend; `/metrics` parses as OpenMetrics and carries
the named series; logs are JSON lines without secrets; SIGTERM lets a stream in flight finish,
records its usage and exits."""

import json
import secrets
import signal
import time

import httpx
import openai
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from conftest import Ferry, dashboard_series
from otlp_receiver import OtlpReceiver

METRICS_TOKEN = "scrape-" + secrets.token_hex(16)
PRICE = {"input_per_mtok_usd": "1", "output_per_mtok_usd": "2"}
SECRET_PROMPT = "the launch code is swordfish-" + secrets.token_hex(4)


def admin(ferry, method, path, **kwargs):
    headers = {"Authorization": f"Bearer {ferry.operator_key}"}
    response = httpx.request(method, f"{ferry.url}/admin/v1{path}", headers=headers, timeout=10, **kwargs)
    assert response.status_code < 300, response.text
    return response.json() if response.content else None


def traceparent():
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent_id, f"00-{trace_id}-{parent_id}-01"


def wait_for_spans(receiver, trace_id, names, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        spans = receiver.of_trace(trace_id)
        if names <= {span["name"] for span in spans}:
            return spans
        time.sleep(0.1)
    raise AssertionError(f"spans {names} not all received; got {[s['name'] for s in receiver.of_trace(trace_id)]}")


@pytest.fixture(scope="module")
def receiver():
    otlp = OtlpReceiver()
    yield otlp
    otlp.stop()


OBSERVED_ENV = {
    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
    "OTEL_BSP_SCHEDULE_DELAY": "100",
    "FERRY_LOG": "info",
    "FERRY_LOG_JSON": "true",
    "FERRY_METRICS_TOKEN": METRICS_TOKEN,
}


@pytest.fixture(scope="module")
def observed(tmp_path_factory, upstream, receiver):
    env = {**OBSERVED_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
    ferry = Ferry(tmp_path_factory.mktemp("ferry-ops"), env=env)
    deployment = lambda name, model, weight: {"id": name, "weight": weight, "upstream": {"url": upstream.base_url, "model": model}}  # noqa: E731
    admin(ferry, "POST", "/models", json={"id": "echo-model", "deployments": [deployment("d1", "echo", 1)], "price": PRICE})
    admin(ferry, "POST", "/models", json={"id": "slow-model", "deployments": [deployment("d1", "slow-echo", 1)], "price": PRICE})
    resilient = {
        "id": "resilient-model",
        "deployments": [deployment("primary", "broken", 1), deployment("standby", "echo", 0)],
        "route": {"fallbacks": ["standby"]},
        "price": PRICE,
    }
    admin(ferry, "POST", "/models", json=resilient)
    tenant = admin(ferry, "POST", "/tenants", json={"name": "Ops"})
    admin(ferry, "POST", f"/tenants/{tenant['id']}/credits", json={"amount_usd": "10"})
    key = admin(ferry, "POST", f"/tenants/{tenant['id']}/keys", json={"name": "app", "role": "member"})["key"]
    client = openai.OpenAI(base_url=f"{ferry.url}/v1", api_key=key, max_retries=0, timeout=30)
    yield {"ferry": ferry, "client": client, "key": key, "tenant": tenant["id"]}
    ferry.stop()


def test_a_call_is_traced_from_the_caller_through_each_attempt_to_the_backend(observed, receiver, upstream):
    trace_id, parent_id, header = traceparent()
    completion = observed["client"].chat.completions.create(
        model="resilient-model", messages=[{"role": "user", "content": "trace me"}], extra_headers={"traceparent": header}
    )
    assert completion.choices[0].message.content == "You said: trace me"
    names = {"POST /v1/chat/completions", "chat resilient-model", "admit", "route", "chat broken", "chat echo", "settle"}
    spans = wait_for_spans(receiver, trace_id, names)
    by_name = {span["name"]: span for span in spans}

    server = by_name["POST /v1/chat/completions"]
    assert server["parent_id"] == parent_id, "the caller's trace is continued"
    assert server["kind"] == 2  # SERVER
    assert server["attributes"]["http.route"] == "/v1/chat/completions"
    assert server["resource"]["service.name"] == "ferry"

    call = by_name["chat resilient-model"]
    attributes = call["attributes"]
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "resilient-model"
    assert attributes["gen_ai.response.model"] == "echo"
    assert attributes["gen_ai.usage.input_tokens"] == completion.usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == completion.usage.completion_tokens
    assert (attributes["ferry.deployment"], attributes["ferry.route"], attributes["ferry.attempts"]) == ("standby", "fallback", 2)
    for child in ("admit", "route", "chat broken", "chat echo", "settle"):
        assert by_name[child]["parent_id"] == call["span_id"], child

    failed, answered = by_name["chat broken"], by_name["chat echo"]
    assert failed["kind"] == answered["kind"] == 3  # CLIENT
    assert failed["attributes"]["error.type"] == "5xx"
    assert failed["status"].get("code") == 2  # ERROR
    assert answered["attributes"]["gen_ai.request.model"] == "echo"
    assert by_name["settle"]["attributes"]["gen_ai.usage.output_tokens"] == completion.usage.completion_tokens

    # The backend saw the trace: each attempt's own span is its parent.
    sent = [r["traceparent"] for r in upstream.requests if r["traceparent"] and trace_id in r["traceparent"]]
    assert sorted(tp.split("-")[2] for tp in sent) == sorted([failed["span_id"], answered["span_id"]])


def test_metrics_parse_as_openmetrics_and_carry_the_named_series(observed):
    ferry, client = observed["ferry"], observed["client"]
    stream = client.chat.completions.create(model="echo-model", messages=[{"role": "user", "content": "count me"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "You said: count me"

    response = httpx.get(f"{ferry.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    for name in [
        "ferry_http_requests",
        "ferry_http_request_duration_seconds",
        "ferry_requests",
        "ferry_request_duration_seconds",
        "ferry_gateway_overhead_seconds",
        "ferry_time_to_first_token_seconds",
        "ferry_tokens",
        "ferry_cache_requests",
        "ferry_admissions",
        "ferry_held_nanodollars",
        "ferry_spend_nanodollars",
        "ferry_calls_in_flight",
        "ferry_upstream_attempts",
        "ferry_breaker_state",
    ]:
        assert name in families, f"{name} missing"

    def value(family, suffix="", **labels):
        return sum(
            sample.value
            for sample in families[family].samples
            if sample.name == family + suffix and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    assert value("ferry_requests", "_total", model="echo-model", status="2xx") >= 1
    assert value("ferry_time_to_first_token_seconds", "_count", model="echo-model") >= 1
    assert value("ferry_tokens", "_total", model="echo-model", type="completion") >= 3
    assert value("ferry_upstream_attempts", "_total", model="resilient-model", deployment="primary", outcome="retryable") >= 1
    assert value("ferry_spend_nanodollars", "_total", model="echo-model") > 0
    assert families["ferry_breaker_state"].type == "gauge"

    # Every series the Grafana dashboard queries is one Ferry exports (the pool's: in
    # test_local_models.py, where there is a pool).
    queried = {name for name in dashboard_series() if not name.startswith("ferry_pool_")}
    assert len(queried) >= 10
    assert queried <= set(families), f"the dashboard queries series Ferry does not export: {queried - set(families)}"

    # Operators and the scraper only.
    member = httpx.get(f"{ferry.url}/metrics", headers={"Authorization": f"Bearer {observed['key']}"}, timeout=10)
    assert member.status_code == 403


def test_logs_are_json_lines_with_request_ids_and_no_secrets(observed):
    ferry, client = observed["ferry"], observed["client"]
    raw = client.chat.completions.with_raw_response.create(model="echo-model", messages=[{"role": "user", "content": SECRET_PROMPT}])
    request_id = raw.headers["x-request-id"]
    deadline = time.time() + 5
    line = None
    while line is None and time.time() < deadline:
        for text in list(ferry.lines):
            if text.startswith("{") and request_id in text:
                record = json.loads(text)
                if record["fields"].get("message") == "request":
                    line = record
        time.sleep(0.05)
    assert line is not None, "no request log line:\n" + "\n".join(ferry.lines[-20:])
    fields = line["fields"]
    assert fields["request_id"] == request_id
    assert fields["tenant"] == observed["tenant"]
    assert fields["model"] == "echo-model"
    assert fields["status"] == 200
    assert fields["route"] == "/v1/chat/completions"
    assert fields["latency_ms"] > 0
    everything = "\n".join(ferry.lines)
    assert observed["key"] not in everything and observed["key"].split("_")[2] not in everything, "a key was logged"
    assert "swordfish" not in everything, "a prompt was logged"
    assert ferry.operator_key not in everything


def test_a_tenant_whose_operator_turned_prompt_logging_on_has_its_prompts_logged(observed):
    ferry = observed["ferry"]
    tenant = admin(ferry, "POST", "/tenants", json={"name": "Audited", "billing": "postpaid"})
    assert tenant["log_prompts"] is False
    patched = admin(ferry, "PATCH", f"/tenants/{tenant['id']}", json={"log_prompts": True})
    assert patched["log_prompts"] is True
    key = admin(ferry, "POST", f"/tenants/{tenant['id']}/keys", json={"name": "app", "role": "member"})["key"]
    marker = "audit-me-" + secrets.token_hex(4)
    client = openai.OpenAI(base_url=f"{ferry.url}/v1", api_key=key, max_retries=0, timeout=30)
    raw = client.chat.completions.with_raw_response.create(model="echo-model", messages=[{"role": "user", "content": marker}])
    request_id = raw.headers["x-request-id"]
    deadline = time.time() + 5
    logged = []
    while not logged and time.time() < deadline:
        logged = [json.loads(t) for t in list(ferry.lines) if t.startswith("{") and marker in t]
        time.sleep(0.05)
    assert len(logged) == 1, logged
    line = logged[0]
    assert line["target"] == "ferry::prompts"
    assert (line["fields"]["request_id"], line["fields"]["tenant"], line["fields"]["model"]) == (request_id, tenant["id"], "echo-model")
    assert marker in line["fields"]["prompt"]
    assert key not in "\n".join(ferry.lines), "the key is still never logged"
    # Everyone else's prompts are still not logged (test_logs_are_json_lines_... checks the
    # other tenant's); turning it off stops it.
    admin(ferry, "PATCH", f"/tenants/{tenant['id']}", json={"log_prompts": False})
    quiet = "quiet-" + secrets.token_hex(4)
    client.chat.completions.create(model="echo-model", messages=[{"role": "user", "content": quiet}])
    time.sleep(0.3)
    assert quiet not in "\n".join(ferry.lines)


def test_sigterm_during_a_stream_lets_it_finish_records_its_usage_and_exits(observed, receiver):
    ferry, client = observed["ferry"], observed["client"]
    words = [f"w{index}" for index in range(30)]
    trace_id, _, header = traceparent()
    stream = client.chat.completions.create(
        model="slow-model", messages=[{"role": "user", "content": " ".join(words)}], stream=True, extra_headers={"traceparent": header}
    )
    chunks = iter(stream)
    text = next(chunks).choices[0].delta.content or ""
    ferry.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{ferry.url}/healthz", timeout=2)  # no longer accepting
    text += "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: " + " ".join(words), "the stream in flight was finished"
    assert ferry.process.wait(timeout=20) == 0, "\n".join(ferry.lines[-20:])
    # Spans still buffered were exported on the way out.
    assert "settle" in {span["name"] for span in receiver.of_trace(trace_id)}

    again = Ferry(ferry.data_dir, operator_key=ferry.operator_key)
    try:
        events = admin(again, "GET", f"/tenants/{observed['tenant']}/usage/events")["data"]
        streamed = [event for event in events if event["model"] == "slow-model"]
        assert len(streamed) == 1
        assert streamed[0]["status"] == 200
        assert streamed[0]["completion_tokens"] == len(words) + 2  # "You", "said:" and the words
    finally:
        again.stop()
