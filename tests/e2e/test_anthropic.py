"""Anthropic's door, end to end: `ferry serve` with SmolLM2-135M and a mock OpenAI-compatible
upstream, called by the official `anthropic` Python SDK at `POST /v1/messages`, whole and
streamed, with tools, and failing in Anthropic's error shapes. Every answer and every streamed
event is checked against the SDK's own pydantic types in strict mode. The call is the chat
call underneath: the same greedy answer, the same tokens, billed the same way."""

import json
from decimal import Decimal

import anthropic
import httpx
import pydantic
import pytest
from anthropic.types import Message, RawMessageStreamEvent

from conftest import Ferry, model_cache

CHAT = "smollm2-135m-instruct"
SYSTEM = "You are a helpful AI assistant."
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
FRESH = {"extra_headers": {"Cache-Control": "no-store"}}
# The SDK no longer takes sampling settings as arguments; the API (and Ferry) still read them.
GREEDY = {**FRESH, "extra_body": {"temperature": 0}}
PRICE = {"input_per_mtok_usd": "1", "output_per_mtok_usd": "2", "per_call_usd": "0.001"}
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"], "additionalProperties": False},
}
EVENTS = pydantic.TypeAdapter(RawMessageStreamEvent)


@pytest.fixture(scope="module")
def served(tmp_path_factory, upstream):
    server = Ferry(tmp_path_factory.mktemp("ferry-anthropic"), env={"FERRY_MODELS_DIR": model_cache()}, args=(), start_timeout=600)
    spec = {"id": "upstream-model", "deployments": [{"id": "d1", "upstream": {"url": upstream.base_url, "model": "echo"}}], "price": PRICE}
    assert admin(server, "POST", "/models", json=spec).status_code == 200
    yield server
    server.stop()


def admin(served, method, path, **kwargs):
    return httpx.request(method, f"{served.url}/admin/v1{path}", headers={"Authorization": f"Bearer {served.operator_key}"}, timeout=30, **kwargs)


def client_of(served, key=None):
    return anthropic.Anthropic(base_url=served.url, api_key=key or served.operator_key, max_retries=0, timeout=300)


def tenant_with_key(served, credit=None, **key_fields):
    tenant = admin(served, "POST", "/tenants", json={"name": "Claude fans", "billing": "prepaid"}).json()
    if credit:
        assert admin(served, "POST", f"/tenants/{tenant['id']}/credits", json={"amount_usd": credit}).status_code == 201
    key = admin(served, "POST", f"/tenants/{tenant['id']}/keys", json={"name": "app", "role": "member", **key_fields})
    return tenant["id"], key.json()["key"]


def raw_events(served, body, key=None):
    """Each event of a streamed answer as sent: (event name, data), data checked strictly."""
    events = []
    headers = {"x-api-key": key or served.operator_key, "anthropic-version": "2023-06-01", "Cache-Control": "no-store"}
    with httpx.stream("POST", f"{served.url}/v1/messages", json={**body, "stream": True}, headers=headers, timeout=300) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: ") :])
                assert data["type"] == name, (name, data)
                if name != "error":
                    EVENTS.validate_python(data, strict=True)
                events.append((name, data))
    return events


def strict(message):
    """The raw JSON of an SDK answer, validated as the SDK's `Message` in strict mode."""
    raw = message if isinstance(message, dict) else json.loads(message.to_json())
    return Message.model_validate(raw, strict=True)


def test_a_message_is_the_chat_call_greedy_answer_whole_and_streamed(served):
    client = client_of(served)
    message = client.messages.create(model=CHAT, max_tokens=40, system=SYSTEM, messages=QUESTION, **GREEDY)
    strict(message.model_dump(mode="json"))
    assert message.role == "assistant" and message.type == "message" and message.model == CHAT
    assert message.id.startswith("msg_")
    assert "Paris" in message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    # The same call as a chat completion: the same greedy text and tokens.
    chat = httpx.post(
        f"{served.url}/v1/chat/completions",
        json={"model": CHAT, "max_tokens": 40, "temperature": 0, "messages": [{"role": "system", "content": SYSTEM}, *QUESTION]},
        headers={"Authorization": f"Bearer {served.operator_key}", "Cache-Control": "no-store"},
        timeout=300,
    ).json()
    assert message.content[0].text == chat["choices"][0]["message"]["content"]
    assert message.usage.input_tokens == chat["usage"]["prompt_tokens"] > 0
    assert message.usage.output_tokens == chat["usage"]["completion_tokens"] > 0

    with client.messages.stream(model=CHAT, max_tokens=40, system=SYSTEM, messages=QUESTION, **GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == message.content[0].text == final.content[0].text
    assert final.stop_reason == message.stop_reason
    assert (final.usage.input_tokens, final.usage.output_tokens) == (message.usage.input_tokens, message.usage.output_tokens)


def test_the_streamed_events_come_in_anthropics_order(served):
    events = raw_events(served, {"model": CHAT, "max_tokens": 12, "system": SYSTEM, "messages": QUESTION, "temperature": 0})
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names[1] == "content_block_start" and names[-3] == "content_block_stop"
    assert set(names[2:-3]) == {"content_block_delta"}
    assert events[-2][1]["delta"]["stop_reason"] in ("end_turn", "max_tokens")
    assert events[-2][1]["usage"]["output_tokens"] > 0


def test_stop_sequences_and_max_tokens(served):
    client = client_of(served)
    cut = client.messages.create(model=CHAT, max_tokens=3, system=SYSTEM, messages=QUESTION, **GREEDY)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 3
    whole = client.messages.create(model=CHAT, max_tokens=40, system=SYSTEM, messages=QUESTION, **GREEDY)
    word = whole.content[0].text.split()[2]
    stopped = client.messages.create(model=CHAT, max_tokens=40, system=SYSTEM, messages=QUESTION, stop_sequences=[word], **GREEDY)
    assert word not in stopped.content[0].text
    assert whole.content[0].text.startswith(stopped.content[0].text)
    # The engine says which stop sequence ended it.
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", word)
    with client.messages.stream(model=CHAT, max_tokens=40, system=SYSTEM, messages=QUESTION, stop_sequences=["zzz", word], **GREEDY) as stream:
        streamed = stream.get_final_message()
    assert (streamed.stop_reason, streamed.stop_sequence) == ("stop_sequence", word)
    assert streamed.content[0].text == stopped.content[0].text


def test_a_tool_call_whole_and_streamed_then_its_result(served):
    client = client_of(served)
    ask = {"role": "user", "content": "What is the weather in Paris?"}
    message = client.messages.create(
        model=CHAT, max_tokens=60, messages=[ask], tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"}, **FRESH
    )
    strict(message.model_dump(mode="json"))
    assert message.stop_reason == "tool_use"
    (call,) = [block for block in message.content if block.type == "tool_use"]
    assert call.name == "get_weather" and isinstance(call.input["city"], str)

    with client.messages.stream(
        model=CHAT, max_tokens=60, messages=[ask], tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"}, **FRESH
    ) as stream:
        final = stream.get_final_message()
    (streamed,) = [block for block in final.content if block.type == "tool_use"]
    assert streamed.name == "get_weather" and isinstance(streamed.input["city"], str)
    assert final.stop_reason == "tool_use"

    answer = client.messages.create(
        model=CHAT,
        max_tokens=30,
        tools=[WEATHER],
        messages=[
            ask,
            {"role": "assistant", "content": [block.model_dump() for block in message.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 C"}]},
        ],
        **FRESH,
    )
    strict(answer.model_dump(mode="json"))
    assert answer.content and answer.stop_reason in ("end_turn", "max_tokens", "tool_use")


def test_a_structured_output(served):
    schema = {"type": "object", "properties": {"capital": {"type": "string", "maxLength": 20}}, "required": ["capital"], "additionalProperties": False}
    message = client_of(served).messages.create(
        model=CHAT, max_tokens=40, system=SYSTEM, messages=QUESTION, output_config={"format": {"type": "json_schema", "schema": schema}}, **FRESH
    )
    answer = json.loads(message.content[0].text)
    assert set(answer) == {"capital"} and len(answer["capital"]) <= 20


def test_an_upstream_model_answers_too_and_the_call_is_billed(served, upstream):
    tenant_id, key = tenant_with_key(served, credit="1")
    client = client_of(served, key)
    message = client.messages.create(model="upstream-model", max_tokens=20, messages=[{"role": "user", "content": "hello there"}], metadata={"user_id": "end-user-7"}, **FRESH)
    strict(message.model_dump(mode="json"))
    assert message.content[0].text == "You said: hello there"
    assert message.stop_reason == "end_turn"
    sent = upstream.requests[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"]["messages"] == [{"role": "user", "content": "hello there"}] and sent["body"]["user"] == "end-user-7"
    # Billed as the chat call it is: the per-call fee and the tokens at the model's price.
    usage = message.usage
    cost = Decimal("0.001") + (usage.input_tokens * Decimal("1") + usage.output_tokens * Decimal("2")) / 1_000_000
    assert Decimal(message.usage.model_extra["cost"]) == cost
    tenant = admin(served, "GET", f"/tenants/{tenant_id}").json()
    assert Decimal(tenant["available_usd"]) == Decimal("1") - cost
    # Attributed to the caller's own end user, and reported by it.
    (event,) = admin(served, "GET", f"/tenants/{tenant_id}/usage/events").json()["data"]
    assert event["user"] == "end-user-7" and event["endpoint"] == "chat.completions"
    (row,) = admin(served, "GET", f"/tenants/{tenant_id}/usage", params={"group_by": "user"}).json()["data"]
    assert row["user"] == "end-user-7" and row["requests"] == 1 and Decimal(row["cost_usd"]) == cost

    events = raw_events(served, {"model": "upstream-model", "max_tokens": 20, "messages": [{"role": "user", "content": "one two"}]}, key=key)
    text = "".join(data["delta"]["text"] for name, data in events if name == "content_block_delta")
    assert text == "You said: one two"
    # The mock counts a word a token.
    assert events[-2][1]["usage"]["output_tokens"] == len(text.split())


def test_failures_have_anthropics_error_shape(served, upstream):
    client = client_of(served)
    with pytest.raises(anthropic.AuthenticationError) as failed:
        client_of(served, "fy_aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb").messages.create(model=CHAT, max_tokens=5, messages=QUESTION)
    assert failed.value.body == {"type": "error", "error": {"type": "authentication_error", "message": failed.value.body["error"]["message"]}}
    with pytest.raises(anthropic.NotFoundError) as failed:
        client.messages.create(model="no-such-model", max_tokens=5, messages=QUESTION)
    assert failed.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as failed:
        client.messages.create(model=CHAT, max_tokens=5, messages=QUESTION, extra_body={"temperature": 3})
    assert failed.value.body["error"]["type"] == "invalid_request_error"
    assert "temperature" in failed.value.body["error"]["message"]
    _, broke = tenant_with_key(served)
    with pytest.raises(anthropic.APIStatusError) as failed:
        client_of(served, broke).messages.create(model="upstream-model", max_tokens=5, messages=QUESTION)
    assert failed.value.status_code == 402 and failed.value.body["error"]["type"] == "billing_error"
    _, limited = tenant_with_key(served, credit="1", limits={"rpm": 1})
    client_of(served, limited).messages.create(model="upstream-model", max_tokens=5, messages=QUESTION)
    with pytest.raises(anthropic.RateLimitError) as failed:
        client_of(served, limited).messages.create(model="upstream-model", max_tokens=5, messages=QUESTION)
    assert failed.value.body["error"]["type"] == "rate_limit_error"
    assert failed.value.response.headers.get("retry-after")
    # What the SDK would not send: the body's own faults, still in Anthropic's shape.
    headers = {"x-api-key": served.operator_key, "content-type": "application/json"}
    for body in (b"{not json", json.dumps({"model": CHAT, "messages": QUESTION}).encode(), json.dumps({"model": CHAT, "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document"}]}]}).encode()):
        answer = httpx.post(f"{served.url}/v1/messages", content=body, headers=headers, timeout=30)
        assert answer.status_code == 400, answer.text
        assert answer.json()["type"] == "error" and answer.json()["error"]["type"] == "invalid_request_error", answer.text


def test_a_broken_upstream_stream_ends_with_an_error_event(served, upstream):
    spec = {"id": "error-event-model", "deployments": [{"id": "d1", "upstream": {"url": upstream.base_url, "model": "error-event"}}]}
    assert admin(served, "POST", "/models", json=spec).status_code == 200
    events = raw_events(served, {"model": "error-event-model", "max_tokens": 20, "messages": [{"role": "user", "content": "one two three"}]})
    assert events[0][0] == "message_start"
    assert events[-1][0] == "error" and events[-1][1]["error"]["type"] == "api_error"
