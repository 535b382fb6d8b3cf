"""Structured outputs and tool calls on the native engine, end to end: `ferry serve` with
SmolLM2-135M, the OpenAI SDKs (Python, and Node for a streamed tool call), `response_format`
with a JSON schema, `tools` and `tool_choice`. The engine masks every sampled token to a
grammar, so a 135M model's answers and calls parse and validate every time; what it cannot do
as asked is a 400 naming the field, before anything runs."""

import concurrent.futures
import datetime
import json
import os
import socket
import subprocess

import httpx
import jsonschema
import openai
import pydantic
import pytest

from conftest import Ferry, model_cache

CHAT = "smollm2-135m-instruct"
FRESH = {"extra_headers": {"Cache-Control": "no-store"}}

NAME = {"type": "string", "minLength": 1, "maxLength": 30}
SCHEMAS = {
    "one string": {"type": "object", "properties": {"name": NAME}, "required": ["name"], "additionalProperties": False},
    "bounded integer": {"type": "object", "properties": {"age": {"type": "integer", "minimum": 18, "maximum": 99}}, "required": ["age"], "additionalProperties": False},
    # A number's digits are unbounded unless the schema bounds them: multipleOf does.
    "exclusive number bounds": {"type": "object", "properties": {"score": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 10, "multipleOf": 0.25}}, "required": ["score"], "additionalProperties": False},
    "boolean": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False},
    "string enum": {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"], "additionalProperties": False},
    "number enum": {"type": "object", "properties": {"size": {"enum": [1, 2.5, 10]}}, "required": ["size"], "additionalProperties": False},
    "const": {"type": "object", "properties": {"version": {"const": "v1"}, "name": NAME}, "required": ["version", "name"], "additionalProperties": False},
    "nested object": {
        "type": "object",
        "properties": {"person": {"type": "object", "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"], "additionalProperties": False}},
        "required": ["person"],
        "additionalProperties": False,
    },
    "three levels deep": {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"b": {"type": "object", "properties": {"c": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["c"], "additionalProperties": False}}, "required": ["b"], "additionalProperties": False}},
        "required": ["a"],
        "additionalProperties": False,
    },
    "array of strings": {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 15}, "minItems": 1, "maxItems": 4}}, "required": ["tags"], "additionalProperties": False},
    "array of objects": {
        "type": "object",
        "properties": {"items": {"type": "array", "maxItems": 3, "items": {"type": "object", "properties": {"sku": NAME, "qty": {"type": "integer", "minimum": 1, "maximum": 50}}, "required": ["sku", "qty"], "additionalProperties": False}}},
        "required": ["items"],
        "additionalProperties": False,
    },
    "nested arrays": {"type": "object", "properties": {"grid": {"type": "array", "maxItems": 3, "items": {"type": "array", "maxItems": 3, "items": {"type": "integer", "minimum": 0, "maximum": 9}}}}, "required": ["grid"], "additionalProperties": False},
    "top-level array": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 100}, "minItems": 2, "maxItems": 5},
    "tuple with prefixItems": {"type": "array", "prefixItems": [{"type": "string", "maxLength": 20}, {"type": "integer", "minimum": 0, "maximum": 1000}], "items": False},
    "anyOf of scalars": {"type": "object", "properties": {"id": {"anyOf": [{"type": "string", "maxLength": 12}, {"type": "integer", "minimum": 0, "maximum": 10000}]}}, "required": ["id"], "additionalProperties": False},
    "anyOf of objects": {
        "type": "object",
        "properties": {
            "shape": {
                "anyOf": [
                    {"type": "object", "properties": {"kind": {"const": "circle"}, "radius": {"type": "number", "minimum": 0, "maximum": 100}}, "required": ["kind", "radius"], "additionalProperties": False},
                    {"type": "object", "properties": {"kind": {"const": "square"}, "side": {"type": "number", "minimum": 0, "maximum": 100}}, "required": ["kind", "side"], "additionalProperties": False},
                ]
            }
        },
        "required": ["shape"],
        "additionalProperties": False,
    },
    "oneOf with disjoint branches": {"type": "object", "properties": {"value": {"oneOf": [{"type": "boolean"}, {"type": "null"}]}}, "required": ["value"], "additionalProperties": False},
    "allOf": {"allOf": [{"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 5}}, "required": ["a"]}, {"type": "object", "properties": {"b": {"type": "boolean"}}, "required": ["b"]}], "additionalProperties": False, "properties": {"a": {}, "b": {}}},
    "$ref and $defs": {
        "type": "object",
        "$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer", "minimum": -10, "maximum": 10}, "y": {"type": "integer", "minimum": -10, "maximum": 10}}, "required": ["x", "y"], "additionalProperties": False}},
        "properties": {"from": {"$ref": "#/$defs/point"}, "to": {"$ref": "#/$defs/point"}},
        "required": ["from", "to"],
        "additionalProperties": False,
    },
    "nullable": {"type": "object", "properties": {"nickname": {"type": ["string", "null"], "maxLength": 20}}, "required": ["nickname"], "additionalProperties": False},
    "optional properties": {"type": "object", "properties": {"name": NAME, "email": {"type": "string", "format": "email", "maxLength": 40}, "phone": {"type": "string", "pattern": "^[0-9]{3}-[0-9]{4}$"}}, "required": ["name"], "additionalProperties": False},
    # (An open map, additionalProperties as a schema, is enforced too, but nothing bounds its
    # number of keys: a 135M model may write keys until max_tokens. Not in the validity suite.)
    "fixed-length array": {"type": "object", "properties": {"rgb": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}, "minItems": 3, "maxItems": 3}}, "required": ["rgb"], "additionalProperties": False},
    "negative integer range": {"type": "object", "properties": {"celsius": {"type": "integer", "minimum": -40, "maximum": -1}}, "required": ["celsius"], "additionalProperties": False},
    "string lengths": {"type": "object", "properties": {"code": {"type": "string", "minLength": 3, "maxLength": 5}}, "required": ["code"], "additionalProperties": False},
    "string pattern": {"type": "object", "properties": {"ticket": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}}, "required": ["ticket"], "additionalProperties": False},
    "format date": {"type": "object", "properties": {"day": {"type": "string", "format": "date"}}, "required": ["day"], "additionalProperties": False},
    "format date-time": {"type": "object", "properties": {"at": {"type": "string", "format": "date-time"}}, "required": ["at"], "additionalProperties": False},
    "format email": {"type": "object", "properties": {"email": {"type": "string", "format": "email", "maxLength": 40}}, "required": ["email"], "additionalProperties": False},
    "format uuid": {"type": "object", "properties": {"id": {"type": "string", "format": "uuid"}}, "required": ["id"], "additionalProperties": False},
    "format ipv4": {"type": "object", "properties": {"ip": {"type": "string", "format": "ipv4"}}, "required": ["ip"], "additionalProperties": False},
    "multipleOf": {"type": "object", "properties": {"even": {"type": "integer", "multipleOf": 2, "minimum": 0, "maximum": 100}}, "required": ["even"], "additionalProperties": False},
    "mixed record": {
        "type": "object",
        "properties": {
            "title": NAME,
            "year": {"type": "integer", "minimum": 1900, "maximum": 2030},
            "rating": {"type": "number", "minimum": 0, "maximum": 5},
            "genres": {"type": "array", "items": {"enum": ["drama", "comedy", "action"]}, "maxItems": 3},
            "watched": {"type": "boolean"},
        },
        "required": ["title", "year", "rating", "genres", "watched"],
        "additionalProperties": False,
    },
}

# JSON Schema formats that jsonschema leaves unchecked without optional packages.
FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(text):
    datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    return True


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("ferry-structured")
    # The pool's activator at a known address: one test registers the worker behind it as a
    # plain upstream.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (data_dir / "ferry.toml").write_text(f'[pool]\nactivator_addr = "127.0.0.1:{port}"\n')
    server = Ferry(data_dir, env={"FERRY_MODELS_DIR": model_cache()}, args=(), start_timeout=600)
    server.activator = f"http://127.0.0.1:{port}"
    yield server
    server.stop()


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key=served.operator_key, max_retries=0, timeout=300)


def ask(client, name, schema, seed, stream=False):
    messages = [{"role": "user", "content": f"Answer with JSON only ({name}): make up an example."}]
    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    if stream:
        chunks = client.chat.completions.create(model=CHAT, messages=messages, response_format=response_format, temperature=1.0, seed=seed, max_tokens=400, stream=True, **FRESH)
        text, reason = "", None
        for chunk in chunks:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                reason = chunk.choices[0].finish_reason or reason
        return text, reason
    reply = client.chat.completions.create(model=CHAT, messages=messages, response_format=response_format, temperature=1.0, seed=seed, max_tokens=400, **FRESH)
    return reply.choices[0].message.content, reply.choices[0].finish_reason


def test_every_answer_parses_and_validates_for_every_schema(client):
    assert len(SCHEMAS) >= 30
    for schema in SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    # Two sampled answers a schema (temperature 1, different seeds), eight at a time: the
    # engine batches them, each with its own mask.
    cases = [(name, schema, seed) for name, schema in SCHEMAS.items() for seed in (1, 2)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda case: (case, ask(client, *case)), cases))
    failures = []
    for (name, schema, seed), (text, reason) in answers:
        try:
            assert reason == "stop", f"finish_reason {reason}"
            jsonschema.validate(json.loads(text), schema, format_checker=FORMATS)
        except (AssertionError, ValueError, jsonschema.ValidationError) as error:
            failures.append(f"{name} (seed {seed}): {error}: {text!r}")
    assert not failures, "\n".join(failures)


def test_a_streamed_structured_answer_is_the_same_json_in_pieces(client):
    schema = SCHEMAS["mixed record"]
    text, reason = ask(client, "a film", schema, seed=7, stream=True)
    assert reason == "stop"
    jsonschema.validate(json.loads(text), schema)
    whole, _ = ask(client, "a film", schema, seed=7)
    assert text == whole, "the same seed gives the same answer, streamed or not"


def test_json_object_mode_answers_an_object(client):
    reply = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "Give me a JSON object describing a cat."}], response_format={"type": "json_object"}, temperature=1.0, seed=3, max_tokens=200, **FRESH)
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=30)
    country: str = pydantic.Field(max_length=30)
    population: int = pydantic.Field(ge=0, le=100_000_000)


def test_the_sdks_parse_helper_returns_a_pydantic_object(client):
    completion = client.chat.completions.parse(model=CHAT, messages=[{"role": "user", "content": "Describe Paris."}], response_format=City, temperature=0, max_tokens=200, **FRESH)
    city = completion.choices[0].message.parsed
    assert isinstance(city, City), completion
    assert city.population >= 0


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"type": "object", "properties": {"card": {"type": "string", "format": "credit-card"}}}, "credit-card"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "nsatisfiable"),
        ({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "minProperties": 1}, "min/maxProperties"),
    ],
)
def test_a_schema_the_engine_cannot_enforce_is_a_400_naming_what(client, schema, keyword):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "Hi"}], response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}, max_tokens=10, **FRESH)
    error = refused.value.body
    assert refused.value.status_code == 400
    assert error["param"] == "response_format", error
    assert keyword in error["message"], error


def test_a_json_schema_without_its_schema_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "Hi"}], response_format={"type": "json_schema", "json_schema": {"name": "x"}}, max_tokens=10, **FRESH)
    assert refused.value.body["param"] == "response_format.json_schema.schema"


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"], "additionalProperties": False},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time in a timezone.", "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 30}}, "required": ["zone"], "additionalProperties": False}}}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_a_required_tool_call_has_an_id_and_arguments_that_validate(client):
    reply = client.chat.completions.create(model=CHAT, messages=ASK_WEATHER, tools=[WEATHER, TIME], tool_choice="required", temperature=1.0, seed=4, max_tokens=120, **FRESH)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    tool = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


def test_a_named_tool_call_streams_its_arguments_as_deltas(client):
    chunks = list(client.chat.completions.create(model=CHAT, messages=ASK_WEATHER, tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_weather"}}, temperature=1.0, seed=5, max_tokens=120, stream=True, **FRESH))
    deltas = [call for chunk in chunks if chunk.choices for call in (chunk.choices[0].delta.tool_calls or [])]
    assert deltas[0].id.startswith("call_") and deltas[0].function.name == "get_weather"
    assert len(deltas) >= 3, "the arguments arrive in pieces"
    arguments = "".join(delta.function.arguments or "" for delta in deltas)
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason] == ["tool_calls"]


def test_a_tool_result_goes_back_and_the_model_answers_in_text(client):
    first = client.chat.completions.create(model=CHAT, messages=ASK_WEATHER, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=120, **FRESH)
    call = first.choices[0].message.tool_calls[0]
    messages = [*ASK_WEATHER, first.choices[0].message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "clear"})}]
    # tool_choice none: the model may not call again; it answers from the result.
    second = client.chat.completions.create(model=CHAT, messages=messages, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=60, **FRESH)
    assert second.choices[0].finish_reason in ("stop", "length")
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls


def test_auto_answers_either_text_or_a_well_formed_call(client):
    seen = set()
    for seed in range(6):
        for messages in (ASK_WEATHER, [{"role": "user", "content": "Say hello."}]):
            choice = client.chat.completions.create(model=CHAT, messages=messages, tools=[WEATHER], temperature=1.0, seed=seed, max_tokens=120, **FRESH).choices[0]
            if choice.message.tool_calls:
                seen.add("call")
                assert choice.finish_reason == "tool_calls"
                jsonschema.validate(json.loads(choice.message.tool_calls[0].function.arguments), WEATHER["function"]["parameters"])
            else:
                seen.add("text")
                assert choice.message.content and not choice.message.content.startswith("<tool_call>")
    assert "text" in seen, seen


def test_what_the_engine_cannot_do_is_refused_naming_the_field(client):
    cases = [
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}}]}]}, "messages[0].content"),
        ({"logprobs": True, "top_logprobs": 25}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
    ]
    for extra, param in cases:
        body = {"model": CHAT, "messages": ASK_WEATHER, "max_tokens": 10, **extra}
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(**body, **FRESH)
        assert refused.value.body["param"] == param, (extra, refused.value.body)


def test_the_node_sdk_streams_a_tool_call(served):
    result = subprocess.run(["node", "tests/e2e/node/tool_call.mjs", CHAT], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "FERRY_URL": served.url, "FERRY_KEY": served.operator_key})
    assert result.returncode == 0, result.stderr
    call = json.loads(result.stdout)
    assert call["id"].startswith("call_") and call["name"] == "get_weather", call
    assert call["finish_reason"] == "tool_calls" and call["deltas"] >= 3, call
    jsonschema.validate(json.loads(call["arguments"]), WEATHER["function"]["parameters"])


def test_through_an_upstream_that_enforces_them_the_request_is_forwarded_as_sent(served, client):
    """The local worker registered as a plain upstream (as a vLLM server would be): the gateway
    forwards `tools`, `tool_choice` and `response_format` untouched, and its refusals keep
    their `param`."""
    activator = served.activator
    registered = httpx.post(f"{served.url}/admin/v1/models", headers={"Authorization": f"Bearer {served.operator_key}"},
                            json={"id": "worker-upstream", "deployments": [{"id": "w", "upstream": {"url": f"{activator}/local/v1", "model": CHAT}}]}, timeout=30)
    assert registered.status_code in (200, 201), registered.text
    reply = client.chat.completions.create(model="worker-upstream", messages=ASK_WEATHER, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=120, **FRESH)
    assert reply.choices[0].finish_reason == "tool_calls"
    jsonschema.validate(json.loads(reply.choices[0].message.tool_calls[0].function.arguments), WEATHER["function"]["parameters"])
    schema = SCHEMAS["mixed record"]
    text, reason = "", None
    for chunk in client.chat.completions.create(model="worker-upstream", messages=[{"role": "user", "content": "A film as JSON."}], response_format={"type": "json_schema", "json_schema": {"name": "film", "schema": schema}}, temperature=0, max_tokens=200, stream=True, **FRESH):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            reason = chunk.choices[0].finish_reason or reason
    assert reason == "stop"
    jsonschema.validate(json.loads(text), schema)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="worker-upstream", messages=ASK_WEATHER, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}}, max_tokens=10, **FRESH)
    assert refused.value.body["param"] == "response_format" and "uniqueItems" in refused.value.body["message"]
