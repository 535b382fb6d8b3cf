"""OpenAI's Responses API, end to end: `ferry serve` with SmolLM2-135M and a mock upstream,
called by the official `openai` SDK's `client.responses.create` and `client.responses.stream`,
whole and streamed, with instructions, function tools and a JSON schema. Stateless: stored
responses are refused with a 400 naming the field. (Every answer and event is also validated
against OpenAI's OpenAPI description in test_openai_schema.py.)"""

import json
from decimal import Decimal

import httpx
import openai
import pytest

from conftest import Ferry, model_cache

CHAT = "smollm2-135m-instruct"
INSTRUCTIONS = "You are a helpful AI assistant."
QUESTION = "What is the capital of France?"
FRESH = {"extra_headers": {"Cache-Control": "no-store"}}
PRICE = {"input_per_mtok_usd": "1", "output_per_mtok_usd": "2", "per_call_usd": "0.001"}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"], "additionalProperties": False},
    "strict": True,
}


@pytest.fixture(scope="module")
def served(tmp_path_factory, upstream):
    server = Ferry(tmp_path_factory.mktemp("ferry-responses"), env={"FERRY_MODELS_DIR": model_cache()}, args=(), start_timeout=600)
    spec = {"id": "upstream-model", "deployments": [{"id": "d1", "upstream": {"url": upstream.base_url, "model": "echo"}}], "price": PRICE}
    assert admin(server, "POST", "/models", json=spec).status_code == 200
    yield server
    server.stop()


def admin(served, method, path, **kwargs):
    return httpx.request(method, f"{served.url}/admin/v1{path}", headers={"Authorization": f"Bearer {served.operator_key}"}, timeout=30, **kwargs)


def client_of(served, key=None):
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key=key or served.operator_key, max_retries=0, timeout=300)


def test_a_response_is_the_chat_calls_greedy_answer_whole_and_streamed(served):
    client = client_of(served)
    response = client.responses.create(model=CHAT, instructions=INSTRUCTIONS, input=QUESTION, max_output_tokens=40, temperature=0, store=False, **FRESH)
    assert response.object == "response" and response.id.startswith("resp_") and response.model == CHAT
    assert response.status in ("completed", "incomplete")
    assert "Paris" in response.output_text
    assert response.output[0].type == "message" and response.output[0].content[0].type == "output_text"
    chat = client.chat.completions.create(
        model=CHAT, max_tokens=40, temperature=0, messages=[{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": QUESTION}], **FRESH
    )
    assert response.output_text == chat.choices[0].message.content
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens == chat.usage.completion_tokens
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens

    with client.responses.stream(model=CHAT, instructions=INSTRUCTIONS, input=QUESTION, max_output_tokens=40, temperature=0, **FRESH) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == response.output_text
    assert final.usage.output_tokens == response.usage.output_tokens

    events = list(client.responses.create(model=CHAT, instructions=INSTRUCTIONS, input=QUESTION, max_output_tokens=8, temperature=0, stream=True, **FRESH))
    names = [event.type for event in events]
    assert names[:2] == ["response.created", "response.in_progress"]
    assert names[-1] in ("response.completed", "response.incomplete")
    assert [event.sequence_number for event in events] == list(range(len(events)))


def test_input_items_and_a_length_cut(served):
    client = client_of(served)
    items = [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": [{"type": "input_text", "text": QUESTION}]},
    ]
    response = client.responses.create(model=CHAT, input=items, max_output_tokens=3, temperature=0, **FRESH)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3


def test_a_function_call_and_its_output(served):
    client = client_of(served)
    response = client.responses.create(
        model=CHAT, input="What is the weather in Paris?", tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=60, **FRESH
    )
    (call,) = [item for item in response.output if item.type == "function_call"]
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments)["city"], str)
    with client.responses.stream(
        model=CHAT, input="What is the weather in Paris?", tools=[WEATHER], tool_choice="required", max_output_tokens=60, **FRESH
    ) as stream:
        final = stream.get_final_response()
    (streamed,) = [item for item in final.output if item.type == "function_call"]
    assert isinstance(json.loads(streamed.arguments)["city"], str)
    follow_up = client.responses.create(
        model=CHAT,
        tools=[WEATHER],
        max_output_tokens=30,
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"},
        ],
        **FRESH,
    )
    assert follow_up.output and follow_up.status in ("completed", "incomplete")


def test_a_json_schema_answer(served):
    schema = {"type": "object", "properties": {"capital": {"type": "string", "maxLength": 20}}, "required": ["capital"], "additionalProperties": False}
    response = client_of(served).responses.create(
        model=CHAT, instructions=INSTRUCTIONS, input=QUESTION, max_output_tokens=40, text={"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}}, **FRESH
    )
    assert set(json.loads(response.output_text)) == {"capital"}


def test_an_upstream_model_answers_and_the_call_is_billed(served, upstream):
    tenant = admin(served, "POST", "/tenants", json={"name": "Responders", "billing": "prepaid"}).json()
    assert admin(served, "POST", f"/tenants/{tenant['id']}/credits", json={"amount_usd": "1"}).status_code == 201
    key = admin(served, "POST", f"/tenants/{tenant['id']}/keys", json={"name": "app", "role": "member"}).json()["key"]
    response = client_of(served, key).responses.create(model="upstream-model", input="hello there", user="end-user-9", metadata={"project": "apollo"}, **FRESH)
    assert response.metadata == {"project": "apollo"}
    assert response.output_text == "You said: hello there"
    assert upstream.requests[-1]["body"]["user"] == "end-user-9"
    usage = response.usage
    cost = Decimal("0.001") + (usage.input_tokens * Decimal("1") + usage.output_tokens * Decimal("2")) / 1_000_000
    assert Decimal(usage.model_extra["cost"]) == cost
    after = admin(served, "GET", f"/tenants/{tenant['id']}").json()
    assert Decimal(after["available_usd"]) == Decimal("1") - cost
    (event,) = admin(served, "GET", f"/tenants/{tenant['id']}/usage/events").json()["data"]
    assert event["user"] == "end-user-9" and event["metadata"] == {"project": "apollo"}


def test_stored_state_is_refused_naming_the_field(served):
    client = client_of(served)
    for fields, param in (({"previous_response_id": "resp_123"}, "previous_response_id"), ({"store": True}, "store")):
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(model=CHAT, input="hi", **fields)
        assert refused.value.body["param"] == param
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=CHAT, input="hi", tools=[{"type": "web_search"}])
    assert refused.value.body["param"] == "tools[0].type"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="hi")
