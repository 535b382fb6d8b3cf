"""End to end: the real `ferry serve` binary, driven by the official OpenAI Python SDK and plain
HTTP, in front of an OpenAI-compatible upstream."""

import re
import time

import httpx
import openai
import pytest

from conftest import Ferry

UUID_V7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
PRICE = {"input_per_mtok_usd": "1", "output_per_mtok_usd": "2"}
UPSTREAM_OF = {
    "echo-model": "echo",
    "broken-model": "broken",
    "busy-model": "busy",
    "break-model": "break-stream",
    "slow-model": "slow-stream",
    "error-event-model": "error-event",
    "other-model": "echo",
}


def admin(ferry, method, path, key=None, **kwargs):
    headers = {"Authorization": f"Bearer {key or ferry.operator_key}"}
    return httpx.request(method, f"{ferry.url}/admin/v1{path}", headers=headers, timeout=10, **kwargs)


@pytest.fixture(scope="session")
def world(ferry, upstream):
    """A tenant with a member key that may use every model but `other-model`."""
    for model_id, upstream_model in UPSTREAM_OF.items():
        spec = {"id": model_id, "deployments": [{"id": "d1", "upstream": {"url": upstream.base_url, "model": upstream_model}}], "price": PRICE}
        assert admin(ferry, "POST", "/models", json=spec).status_code == 200
    tenant = admin(ferry, "POST", "/tenants", json={"name": "Acme", "billing": "prepaid"}).json()
    topped = admin(ferry, "POST", f"/tenants/{tenant['id']}/credits", json={"amount_usd": "100"})
    assert topped.status_code == 201, topped.text
    allowed = [m for m in UPSTREAM_OF if m != "other-model"]
    created = admin(ferry, "POST", f"/tenants/{tenant['id']}/keys", json={"name": "app", "role": "member", "models": allowed})
    assert created.status_code == 201, created.text
    return {"tenant": tenant, "key": created.json()["key"], "key_id": created.json()["id"]}


@pytest.fixture
def client(ferry, world):
    return openai.OpenAI(base_url=f"{ferry.url}/v1", api_key=world["key"], max_retries=0, timeout=20)


def test_chat_completion_answers_with_usage_and_exact_cost(client):
    raw = client.chat.completions.with_raw_response.create(model="echo-model", messages=[{"role": "user", "content": "Hello there"}])
    assert UUID_V7.match(raw.headers["x-request-id"])
    completion = raw.parse()
    assert completion.choices[0].message.content == "You said: Hello there"
    assert completion.model == "echo-model"
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (6, 4, 10)
    assert usage.prompt_tokens_details.cached_tokens == 0
    # 6 prompt tokens at $1/Mtok + 4 completion tokens at $2/Mtok.
    assert usage.model_extra["cost"] == "0.000014"


def test_streamed_chat_with_include_usage_ends_with_a_usage_chunk(client):
    stream = client.chat.completions.create(
        model="echo-model", messages=[{"role": "user", "content": "stream me please"}], stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: stream me please"
    assert all(c.model == "echo-model" for c in chunks)
    last = chunks[-1]
    assert last.choices == []
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (7, 5)
    assert last.usage.model_extra["cost"] == "0.000017"
    assert all(c.usage is None for c in chunks[:-1])


def test_streamed_chat_without_include_usage_carries_no_usage(client, upstream):
    chunks = list(client.chat.completions.create(model="echo-model", messages=[{"role": "user", "content": "quiet"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "You said: quiet"
    assert all(c.usage is None for c in chunks)
    # Ferry still asked the upstream for usage, to meter the call.
    assert upstream.requests[-1]["body"]["stream_options"] == {"include_usage": True}
    assert upstream.requests[-1]["body"]["model"] == "echo"


def test_text_completions_streamed_and_not(client):
    completion = client.completions.create(model="echo-model", prompt="once upon", max_tokens=5)
    assert completion.choices[0].text == "completion of: once upon"
    assert completion.usage.completion_tokens == 4
    chunks = list(client.completions.create(model="echo-model", prompt="a time", stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "completion of: a time"
    assert chunks[-1].usage.total_tokens == 6


def test_embeddings_as_floats_and_base64(client):
    floats = client.embeddings.create(model="echo-model", input=["abc", "de"], encoding_format="float")
    assert [d.embedding for d in floats.data] == [[3.0, 1.0, 0.5], [2.0, 1.0, 0.5]]
    assert floats.usage.prompt_tokens == 2
    # The SDK asks for base64 by default and decodes it.
    decoded = client.embeddings.create(model="echo-model", input="abcd")
    assert decoded.data[0].embedding == [4.0, 1.0, 0.5]
    tokens = client.embeddings.create(model="echo-model", input=[1, 2, 3], encoding_format="float")
    assert tokens.data[0].embedding[0] == 6.0


def test_models_lists_only_what_the_key_may_use(client):
    listed = sorted(model.id for model in client.models.list())
    assert listed == sorted(m for m in UPSTREAM_OF if m != "other-model")
    assert client.models.retrieve("echo-model").owned_by == "ferry"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("other-model")


def test_errors_follow_the_openai_contract(client):
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client.chat.completions.create(model="other-model", messages=[{"role": "user", "content": "x"}])
    assert denied.value.code == "model_not_allowed"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="echo-model", messages=[{"role": "user", "content": "x"}], temperature=5)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model="echo-model", messages=[])
    assert empty.value.param == "messages"


def test_wrong_keys_are_refused(ferry, world):
    tampered = world["key"][:-1] + ("b" if world["key"].endswith("a") else "a")
    for key in ["not-a-key", "fy_aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", tampered]:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{ferry.url}/v1", api_key=key, max_retries=0).models.list()


def test_upstream_failures_become_clear_errors(client):
    with pytest.raises(openai.APIStatusError) as broken:
        client.chat.completions.create(model="broken-model", messages=[{"role": "user", "content": "x"}])
    assert broken.value.status_code == 502
    assert "10.1.2.3" not in str(broken.value.body), "upstream internals must not leak"
    with pytest.raises(openai.APIStatusError) as busy:
        client.chat.completions.create(model="busy-model", messages=[{"role": "user", "content": "x"}])
    assert busy.value.status_code == 503
    assert busy.value.response.headers["retry-after"] == "7"


def test_a_stream_that_breaks_ends_with_an_error_event(client, ferry):
    stream = client.chat.completions.create(model="break-model", messages=[{"role": "user", "content": "one two three four"}], stream=True)
    received = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["You", " said:"]
    assert client.models.retrieve("echo-model").id == "echo-model"


def test_an_upstream_error_event_reaches_the_caller_once(ferry, world):
    headers = {"Authorization": f"Bearer {world['key']}"}
    body = {"model": "error-event-model", "messages": [{"role": "user", "content": "a b c"}], "stream": True}
    with httpx.stream("POST", f"{ferry.url}/v1/chat/completions", json=body, headers=headers, timeout=10) as response:
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    errors = [event for event in events if '"error"' in event]
    assert len(errors) == 1, events
    assert "data: [DONE]" not in events


def test_a_client_that_disconnects_stops_the_upstream(ferry, world, upstream):
    headers = {"Authorization": f"Bearer {world['key']}"}
    body = {"model": "slow-model", "messages": [{"role": "user", "content": "go"}], "stream": True}
    with httpx.stream("POST", f"{ferry.url}/v1/chat/completions", json=body, headers=headers, timeout=10) as response:
        lines = response.iter_lines()
        seen = [line for _, line in zip(range(6), lines)]
        assert any(line.startswith("data: ") for line in seen)
    time.sleep(1.0)
    sent_after_close = upstream.slow_chunks_sent
    time.sleep(1.0)
    assert upstream.slow_chunks_sent - sent_after_close <= 1, "the upstream kept generating for a caller who left"


def test_bad_bodies_get_400_or_413_and_the_server_stays_up(ferry, world):
    url = f"{ferry.url}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {world['key']}", "Content-Type": "application/json"}
    cases = [
        (b"{not json", 400, None),
        (b"\xff\xfe\xfd", 400, None),
        (b'{"model": "echo-model"}', 400, "messages"),
        (b'{"model": 7, "messages": []}', 400, "model"),
        (b'{"model": "echo-model", "messages": [{"role": "user", "content": "x"}], "n": "two"}', 400, "n"),
        (b'{"model": "echo-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}', 400, "max_tokens"),
        (b"[]", 400, None),
    ]
    for body, status, param in cases:
        response = httpx.post(url, content=body, headers=headers, timeout=10)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["param"] == param, (body, error)
        assert UUID_V7.match(response.headers["x-request-id"])
    too_big = httpx.post(url, content=b'{"model": "' + b"x" * (9 * 1024 * 1024) + b'"}', headers=headers, timeout=30)
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "request_too_large"
    assert ferry.alive()
    assert httpx.get(f"{ferry.url}/readyz", timeout=5).status_code == 200


def test_revoked_keys_stop_working_at_once(ferry, world):
    created = admin(ferry, "POST", f"/tenants/{world['tenant']['id']}/keys", json={"name": "temp", "role": "member"}).json()
    temp = openai.OpenAI(base_url=f"{ferry.url}/v1", api_key=created["key"], max_retries=0)
    assert temp.models.list().data
    assert admin(ferry, "DELETE", f"/keys/{created['id']}").json()["revoked_at"] is not None
    with pytest.raises(openai.AuthenticationError):
        temp.models.list()


def test_tenants_cannot_see_each_other(ferry, world):
    other = admin(ferry, "POST", "/tenants", json={"name": "Globex"}).json()
    other_admin = admin(ferry, "POST", f"/tenants/{other['id']}/keys", json={"name": "boss", "role": "tenant-admin"}).json()["key"]
    assert admin(ferry, "GET", f"/tenants/{other['id']}", key=other_admin).status_code == 200
    assert admin(ferry, "GET", f"/tenants/{world['tenant']['id']}", key=other_admin).status_code == 404
    assert admin(ferry, "GET", f"/tenants/{world['tenant']['id']}/keys", key=other_admin).status_code == 404
    assert admin(ferry, "DELETE", f"/keys/{world['key_id']}", key=other_admin).status_code == 404
    listed = admin(ferry, "GET", f"/tenants/{world['tenant']['id']}/keys").json()["data"]
    assert listed and all("key" not in key for key in listed), "secrets are shown once, never listed"


def test_openapi_document_describes_the_surface(ferry):
    document = httpx.get(f"{ferry.url}/openapi.json", timeout=5).json()
    for path in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/admin/v1/tenants", "/admin/v1/models"]:
        assert path in document["paths"], path


def test_first_start_prints_a_working_operator_key_once(tmp_path, upstream):
    env = {"FERRY_OPERATOR_KEY": ""}
    first = Ferry(tmp_path, env=env)
    try:
        printed = next(line for line in first.lines if line.startswith("operator key"))
        key = printed.split()[-1]
        assert any("curl" in line and key in line for line in first.lines), "a ready-to-paste curl"
        assert any("OpenAI(base_url=" in line for line in first.lines), "an OpenAI SDK snippet"
        models = httpx.get(f"{first.url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
        assert models.status_code == 200
    finally:
        first.stop()
    second = Ferry(tmp_path, env=env)
    try:
        assert not any(line.startswith("operator key") for line in second.lines)
        assert httpx.get(f"{second.url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5).status_code == 200
    finally:
        second.stop()


def test_models_from_the_config_file_are_registered(tmp_path, upstream):
    (tmp_path / "ferry.toml").write_text(
        f"""
[[models]]
id = "from-config"
deployments = [{{ id = "d", upstream = {{ url = "{upstream.base_url}", model = "echo" }} }}]
"""
    )
    server = Ferry(tmp_path)
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.operator_key, max_retries=0)
        reply = client.chat.completions.create(model="from-config", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "You said: hi"
    finally:
        server.stop()
