"""Every answer on Ferry's OpenAI surface, validated against OpenAI's own OpenAPI description
(`tests/e2e/openai-openapi/openapi.json`, MIT; its revision in README.md): chat completions
from the native engine and from an upstream that leaves optional-looking fields out, plain and
every streamed chunk; completions; embeddings as floats and as base64; the model list and a
model; and the error body of every status Ferry answers `/v1` with. The routes come from
Ferry's own `/openapi.json`: a route this test has no schema check for fails it."""

import copy
import json
import pathlib

import httpx
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from conftest import Ferry, model_cache

DESCRIPTION = pathlib.Path(__file__).parent / "openai-openapi" / "openapi.json"
CHAT, EMBED = "smollm2-135m-instruct", "all-minilm-l6-v2"
MESSAGES = [{"role": "user", "content": "Name a colour."}]
FRESH = {"Cache-Control": "no-store"}


def allow_nullable(node):
    """OpenAPI 3.0's `nullable: true`, which a 3.1 validator ignores, as "null is allowed too"."""
    if isinstance(node, list):
        return [allow_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: allow_nullable(value) for key, value in node.items()}
    if node.pop("nullable", False):
        return {"anyOf": [node, {"type": "null"}]}
    return node


def load_description():
    description = allow_nullable(json.loads(DESCRIPTION.read_text()))
    schemas = description["components"]["schemas"]
    # The description gives a streamed choice's `finish_reason` as a string; the API (and the
    # official SDKs' types) send null in every chunk but the last.
    choice = schemas["CreateChatCompletionStreamResponse"]["properties"]["choices"]["items"]
    choice["properties"]["finish_reason"] = {"anyOf": [choice["properties"]["finish_reason"], {"type": "null"}]}
    # Asked for as base64, an embedding is a string (as the API sends it), not a list of floats.
    base64 = copy.deepcopy(schemas["CreateEmbeddingResponse"])
    base64["properties"]["data"]["items"] = copy.deepcopy(schemas["Embedding"])
    base64["properties"]["data"]["items"]["properties"]["embedding"] = {"type": "string"}
    schemas["FerryBase64EmbeddingResponse"] = base64
    # The same for a streamed completion, which the description gives no schema of its own:
    # each chunk is a `CreateCompletionResponse` whose `finish_reason` is null but in the last.
    chunk = copy.deepcopy(schemas["CreateCompletionResponse"])
    reason = chunk["properties"]["choices"]["items"]["properties"]["finish_reason"]
    chunk["properties"]["choices"]["items"]["properties"]["finish_reason"] = {"anyOf": [reason, {"type": "null"}]}
    schemas["FerryCompletionChunk"] = chunk
    return description


@pytest.fixture(scope="module")
def validate():
    """Checks an answer against a schema of the description, naming every place it differs."""
    description = Resource.from_contents(load_description(), default_specification=DRAFT202012)
    registry = Registry().with_resource("urn:openai", description)
    validators = {}

    def check(schema, instance, what):
        if schema not in validators:
            validators[schema] = Draft202012Validator({"$ref": f"urn:openai#/components/schemas/{schema}"}, registry=registry)
        errors = sorted(validators[schema].iter_errors(instance), key=lambda error: list(error.absolute_path))
        assert not errors, f"{what} is not a {schema}:\n" + "\n".join(
            f"  at {'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message[:300]}" for error in errors[:10]
        ) + f"\n{json.dumps(instance)[:2000]}"

    return check


@pytest.fixture(scope="module")
def served(tmp_path_factory, upstream):
    """`ferry serve` with its local models (the native engine), and an upstream model whose
    answers leave out `logprobs` and `refusal` (as some OpenAI-compatible servers do)."""
    server = Ferry(tmp_path_factory.mktemp("ferry-schema"), env={"FERRY_MODELS_DIR": model_cache()}, args=(), start_timeout=600)
    spec = {
        "id": "upstream-model",
        "deployments": [{"id": "d1", "upstream": {"url": upstream.base_url, "model": "echo"}}],
        "price": {"input_per_mtok_usd": "1", "output_per_mtok_usd": "2", "per_call_usd": "0.001"},
    }
    registered = httpx.post(f"{server.url}/admin/v1/models", json=spec, headers=auth(server.operator_key), timeout=10)
    assert registered.status_code == 200, registered.text
    yield server
    server.stop()


def auth(key):
    return {"Authorization": f"Bearer {key}"}


def post(served, path, body, key=None, **kwargs):
    return httpx.post(f"{served.url}{path}", json=body, headers={**auth(key or served.operator_key), **FRESH}, timeout=120, **kwargs)


def stream_events(served, path, body):
    """Each `data:` event of a streamed answer, parsed, up to `[DONE]`."""
    events = []
    with httpx.stream("POST", f"{served.url}{path}", json=body, headers={**auth(served.operator_key), **FRESH}, timeout=120) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line == "data: [DONE]":
                return events
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
    raise AssertionError("the stream ended without [DONE]")


@pytest.mark.parametrize("model", [CHAT, "upstream-model"])
def test_chat_completions_plain_and_streamed(served, validate, model):
    answer = post(served, "/v1/chat/completions", {"model": model, "messages": MESSAGES, "max_tokens": 8})
    assert answer.status_code == 200, answer.text
    validate("CreateChatCompletionResponse", answer.json(), f"{model}'s answer")
    body = {"model": model, "messages": MESSAGES, "max_tokens": 8, "stream": True, "stream_options": {"include_usage": True}}
    chunks = stream_events(served, "/v1/chat/completions", body)
    assert chunks
    for index, chunk in enumerate(chunks):
        validate("CreateChatCompletionStreamResponse", chunk, f"{model}'s chunk {index}")


def test_log_probabilities_plain_and_streamed(served, validate):
    body = {"model": CHAT, "messages": MESSAGES, "max_tokens": 8, "logprobs": True, "top_logprobs": 2}
    answer = post(served, "/v1/chat/completions", body)
    assert answer.status_code == 200, answer.text
    validate("CreateChatCompletionResponse", answer.json(), "an answer with log probabilities")
    content = answer.json()["choices"][0]["logprobs"]["content"]
    assert content and all(len(entry["top_logprobs"]) == 2 for entry in content)
    for index, chunk in enumerate(stream_events(served, "/v1/chat/completions", {**body, "stream": True})):
        validate("CreateChatCompletionStreamResponse", chunk, f"a chunk with log probabilities {index}")
    completion = post(served, "/v1/completions", {"model": CHAT, "prompt": "Colours:", "max_tokens": 6, "logprobs": 2})
    assert completion.status_code == 200, completion.text
    validate("CreateCompletionResponse", completion.json(), "a completion with log probabilities")
    logprobs = completion.json()["choices"][0]["logprobs"]
    assert "".join(logprobs["tokens"]) == completion.json()["choices"][0]["text"]
    assert len(logprobs["token_logprobs"]) == len(logprobs["tokens"]) == len(logprobs["text_offset"])


def test_a_structured_output_plain_and_streamed(served, validate):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}}, "required": ["name"], "additionalProperties": False}
    body = {"model": CHAT, "messages": MESSAGES, "max_tokens": 40, "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}}
    answer = post(served, "/v1/chat/completions", body)
    assert answer.status_code == 200, answer.text
    validate("CreateChatCompletionResponse", answer.json(), "a structured answer")
    json.loads(answer.json()["choices"][0]["message"]["content"])
    for index, chunk in enumerate(stream_events(served, "/v1/chat/completions", {**body, "stream": True})):
        validate("CreateChatCompletionStreamResponse", chunk, f"a structured answer's chunk {index}")


def test_a_tool_call_plain_and_streamed(served, validate):
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}}, "required": ["city"], "additionalProperties": False}}}
    body = {"model": CHAT, "messages": [{"role": "user", "content": "Weather in Paris?"}], "max_tokens": 40, "tools": [tool], "tool_choice": "required"}
    answer = post(served, "/v1/chat/completions", body)
    assert answer.status_code == 200, answer.text
    validate("CreateChatCompletionResponse", answer.json(), "a tool call")
    assert answer.json()["choices"][0]["message"]["tool_calls"]
    for index, chunk in enumerate(stream_events(served, "/v1/chat/completions", {**body, "stream": True})):
        validate("CreateChatCompletionStreamResponse", chunk, f"a tool call's chunk {index}")


@pytest.mark.parametrize("model", [CHAT, "upstream-model"])
def test_completions_plain_and_streamed(served, validate, model):
    answer = post(served, "/v1/completions", {"model": model, "prompt": "Colours:", "max_tokens": 8})
    assert answer.status_code == 200, answer.text
    validate("CreateCompletionResponse", answer.json(), f"{model}'s completion")
    body = {"model": model, "prompt": "Colours:", "max_tokens": 8, "stream": True, "stream_options": {"include_usage": True}}
    for index, chunk in enumerate(stream_events(served, "/v1/completions", body)):
        validate("FerryCompletionChunk", chunk, f"{model}'s completion chunk {index}")


def test_embeddings_as_floats_and_as_base64(served, validate):
    floats = post(served, "/v1/embeddings", {"model": EMBED, "input": ["red", "green"]})
    assert floats.status_code == 200, floats.text
    validate("CreateEmbeddingResponse", floats.json(), "embeddings")
    base64 = post(served, "/v1/embeddings", {"model": EMBED, "input": "red", "encoding_format": "base64"})
    assert base64.status_code == 200, base64.text
    validate("FerryBase64EmbeddingResponse", base64.json(), "base64 embeddings")


def test_the_model_list_and_a_model(served, validate):
    listed = httpx.get(f"{served.url}/v1/models", headers=auth(served.operator_key), timeout=10)
    validate("ListModelsResponse", listed.json(), "the model list")
    assert {CHAT, EMBED, "upstream-model"} <= {model["id"] for model in listed.json()["data"]}
    one = httpx.get(f"{served.url}/v1/models/{CHAT}", headers=auth(served.operator_key), timeout=10)
    validate("Model", one.json(), "a model")


def named_stream_events(served, path, body):
    """Each event of a stream of named events (the Responses API's), parsed."""
    events = []
    with httpx.stream("POST", f"{served.url}{path}", json=body, headers={**auth(served.operator_key), **FRESH}, timeout=120) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
    return events


RESPONSE_CASES = {
    "text": {"input": "Name a colour.", "instructions": "Answer in one word.", "max_output_tokens": 8},
    "cut short": {"input": [{"role": "user", "content": [{"type": "input_text", "text": "Name a colour."}]}], "max_output_tokens": 2},
    "function call": {
        "input": "Weather in Paris?",
        "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}}, "required": ["city"], "additionalProperties": False}, "strict": True}],
        "tool_choice": "required",
        "max_output_tokens": 40,
    },
    "json schema": {
        "input": "Name a colour.",
        "text": {"format": {"type": "json_schema", "name": "colour", "schema": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10}}, "required": ["name"], "additionalProperties": False}, "strict": True}},
        "max_output_tokens": 30,
    },
}


@pytest.mark.parametrize("case", RESPONSE_CASES)
@pytest.mark.parametrize("model", [CHAT, "upstream-model"])
def test_responses_plain_and_streamed(served, validate, model, case):
    if model == "upstream-model" and case != "text":
        pytest.skip("the mock upstream echoes text only")
    body = {"model": model, **RESPONSE_CASES[case]}
    answer = post(served, "/v1/responses", body)
    assert answer.status_code == 200, answer.text
    validate("Response", answer.json(), f"{model}'s {case} response")
    events = named_stream_events(served, "/v1/responses", {**body, "stream": True})
    assert events[-1]["type"] in ("response.completed", "response.incomplete")
    for index, event in enumerate(events):
        validate("ResponseStreamEvent", event, f"{model}'s {case} event {index} ({event['type']})")


def test_files_uploaded_listed_read_and_deleted(served, validate):
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": CHAT, "messages": MESSAGES}}
    content = (json.dumps(line) + "\n").encode()
    headers = auth(served.operator_key)
    uploaded = httpx.post(f"{served.url}/v1/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"}, headers=headers, timeout=30)
    assert uploaded.status_code == 200, uploaded.text
    validate("OpenAIFile", uploaded.json(), "an uploaded file")
    file_id = uploaded.json()["id"]
    validate("OpenAIFile", httpx.get(f"{served.url}/v1/files/{file_id}", headers=headers).json(), "a file")
    validate("ListFilesResponse", httpx.get(f"{served.url}/v1/files", headers=headers).json(), "the file list")
    # The content is the file's own bytes, which no schema describes.
    assert httpx.get(f"{served.url}/v1/files/{file_id}/content", headers=headers).content == content
    validate("DeleteFileResponse", httpx.delete(f"{served.url}/v1/files/{file_id}", headers=headers).json(), "a deleted file")


def test_a_batch_created_retrieved_listed_and_cancelled(served, validate):
    lines = [{"custom_id": f"r{n}", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "upstream-model", "messages": MESSAGES, "max_tokens": 4}} for n in range(2)]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    headers = auth(served.operator_key)
    file_id = httpx.post(f"{served.url}/v1/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"}, headers=headers, timeout=30).json()["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", "metadata": {"job": "x"}}
    created = post(served, "/v1/batches", body)
    assert created.status_code == 200, created.text
    validate("Batch", created.json(), "a created batch")
    batch_id = created.json()["id"]
    validate("ListBatchesResponse", httpx.get(f"{served.url}/v1/batches", headers=headers).json(), "the batch list")
    cancelled = post(served, f"/v1/batches/{batch_id}/cancel", {})
    if cancelled.status_code == 200:
        validate("Batch", cancelled.json(), "a cancelled batch")
    else:  # it finished first
        assert cancelled.status_code == 409, cancelled.text
    validate("Batch", httpx.get(f"{served.url}/v1/batches/{batch_id}", headers=headers).json(), "a batch")


def test_every_error_status_answers_an_error_body(served, validate, upstream):
    admin = f"{served.url}/admin/v1"
    operator = auth(served.operator_key)
    for model_id, upstream_model in {"broken-model": "broken", "busy-model": "busy"}.items():
        spec = {"id": model_id, "deployments": [{"id": "d1", "upstream": {"url": upstream.base_url, "model": upstream_model}}]}
        assert httpx.post(f"{admin}/models", json=spec, headers=operator).status_code == 200

    def key_of(credit, **fields):
        tenant = httpx.post(f"{admin}/tenants", json={"name": "Errors", "billing": "prepaid"}, headers=operator).json()
        if credit:
            httpx.post(f"{admin}/tenants/{tenant['id']}/credits", json={"amount_usd": credit}, headers=operator)
        key = httpx.post(f"{admin}/tenants/{tenant['id']}/keys", json={"name": "app", "role": "member", **fields}, headers=operator)
        return key.json()["key"]

    broke = key_of(None)
    limited = key_of("10", models=["upstream-model"], limits={"rpm": 1})
    chat = {"model": "upstream-model", "messages": MESSAGES, "max_tokens": 4}
    url = f"{served.url}/v1/chat/completions"
    as_json = {**operator, "Content-Type": "application/json"}
    assert post(served, "/v1/chat/completions", chat, key=limited).status_code == 200
    cases = {
        400: lambda: httpx.post(url, content=b"{not json", headers=as_json),
        401: lambda: httpx.get(f"{served.url}/v1/models", headers=auth("fy_aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")),
        402: lambda: post(served, "/v1/chat/completions", chat, key=broke),
        403: lambda: post(served, "/v1/chat/completions", {**chat, "model": "busy-model"}, key=limited),
        404: lambda: post(served, "/v1/chat/completions", {**chat, "model": "no-such-model"}),
        405: lambda: httpx.get(url, headers=operator),
        413: lambda: httpx.post(url, content=b'{"model": "' + b"x" * (9 * 1024 * 1024) + b'"}', headers=as_json, timeout=30),
        429: lambda: post(served, "/v1/chat/completions", chat, key=limited),
        502: lambda: post(served, "/v1/chat/completions", {**chat, "model": "broken-model"}),
        503: lambda: post(served, "/v1/chat/completions", {**chat, "model": "busy-model"}),
    }
    for status, make in cases.items():
        answer = make()
        assert answer.status_code == status, (status, answer.text)
        validate("ErrorResponse", answer.json(), f"the {status} answer")


def test_every_route_of_the_openai_surface_is_checked(served):
    """Ferry's own description lists its routes: each under `/v1` must be one this file checks."""
    document = httpx.get(f"{served.url}/openapi.json", timeout=10).json()
    routes = {(method.upper(), path) for path, item in document["paths"].items() if path.startswith("/v1/") for method in item}
    checked = CHECKED_ROUTES | set(CHECKED_ELSEWHERE)
    assert routes <= checked, f"no schema check for {sorted(routes - checked)}"


CHECKED_ROUTES = {
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{id}"),
    ("POST", "/v1/responses"),
    ("POST", "/v1/files"),
    ("GET", "/v1/files"),
    ("GET", "/v1/files/{id}"),
    ("GET", "/v1/files/{id}/content"),
    ("DELETE", "/v1/files/{id}"),
    ("POST", "/v1/batches"),
    ("GET", "/v1/batches"),
    ("GET", "/v1/batches/{id}"),
    ("POST", "/v1/batches/{id}/cancel"),
}
# Doors in another provider's dialect, checked against that provider's own reference.
CHECKED_ELSEWHERE = {
    ("POST", "/v1/messages"): "test_anthropic.py: the anthropic SDK's pydantic types, strict",
}
