"""OpenAI's Files API for batch input, end to end with the official SDK against `ferry serve`:
upload (multipart, `purpose="batch"`), retrieve, list, content and delete; a file with a bad
line is refused naming the line and nothing is kept; tenants never see each other's files.
(Each answer is also validated against OpenAI's description in test_openai_schema.py.)"""

import io
import json

import httpx
import openai
import pytest

from conftest import Ferry

LINES = [
    {"custom_id": f"req-{n}", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": [{"role": "user", "content": f"Say {n}"}], "max_tokens": 5}}
    for n in range(3)
]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    server = Ferry(tmp_path_factory.mktemp("ferry-files"))
    yield server
    server.stop()


def admin(served, method, path, **kwargs):
    return httpx.request(method, f"{served.url}/admin/v1{path}", headers={"Authorization": f"Bearer {served.operator_key}"}, timeout=30, **kwargs)


def tenant_key(served, name):
    tenant = admin(served, "POST", "/tenants", json={"name": name}).json()
    return admin(served, "POST", f"/tenants/{tenant['id']}/keys", json={"name": "app", "role": "member"}).json()["key"]


def client_of(served, key):
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key=key, max_retries=0, timeout=60)


def jsonl(lines):
    return ("\n".join(json.dumps(line) for line in lines) + "\n").encode()


def test_upload_retrieve_list_read_and_delete(served):
    client = client_of(served, tenant_key(served, "Uploader"))
    content = jsonl(LINES)
    uploaded = client.files.create(file=("input.jsonl", io.BytesIO(content)), purpose="batch")
    assert uploaded.object == "file" and uploaded.purpose == "batch" and uploaded.status == "processed"
    assert uploaded.bytes == len(content) and uploaded.filename == "input.jsonl"
    assert client.files.retrieve(uploaded.id) == uploaded
    assert client.files.content(uploaded.id).read() == content
    second = client.files.create(file=("second.jsonl", io.BytesIO(jsonl(LINES[:1]))), purpose="batch")
    listed = client.files.list()
    assert [file.id for file in listed.data] == [second.id, uploaded.id], "newest first"
    page = client.files.list(limit=1, order="asc")
    assert [file.id for file in page.data] == [uploaded.id] and page.has_more
    assert [file.id for file in client.files.list(after=uploaded.id, order="asc").data] == [second.id]
    deleted = client.files.delete(uploaded.id)
    assert deleted.deleted and deleted.id == uploaded.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(uploaded.id)
    assert [file.id for file in client.files.list().data] == [second.id]


def test_a_bad_line_is_refused_naming_it_and_nothing_is_kept(served):
    client = client_of(served, tenant_key(served, "Careless"))
    bad = jsonl(LINES[:2]) + b'{"custom_id": "req-9", "method": "POST", "url": "/v1/images/generations", "body": {"model": "m"}}\n'
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("bad.jsonl", io.BytesIO(bad)), purpose="batch")
    assert refused.value.body["param"] == "file"
    assert refused.value.body["message"].startswith("line 3: url must be one of")
    duplicate = jsonl([LINES[0], LINES[0]])
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("dup.jsonl", io.BytesIO(duplicate)), purpose="batch")
    assert refused.value.body["message"].startswith("line 2: custom_id `req-0`")
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("x.jsonl", io.BytesIO(jsonl(LINES))), purpose="fine-tune")
    assert refused.value.body["param"] == "purpose"
    assert client.files.list().data == []


def test_tenants_never_see_each_others_files(served):
    alice, bob = client_of(served, tenant_key(served, "Alice")), client_of(served, tenant_key(served, "Bob"))
    file = alice.files.create(file=("a.jsonl", io.BytesIO(jsonl(LINES))), purpose="batch")
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(file.id)
    with pytest.raises(openai.NotFoundError):
        bob.files.content(file.id)
    with pytest.raises(openai.NotFoundError):
        bob.files.delete(file.id)
    assert bob.files.list().data == []
    assert alice.files.retrieve(file.id).id == file.id
    for bad in ("..%2F..%2Fferry.db", "file_..", "tnt_x"):
        answer = httpx.get(f"{served.url}/v1/files/{bad}/content", headers={"Authorization": f"Bearer {served.operator_key}"})
        assert answer.status_code == 404, answer.text


def test_a_member_sees_only_its_own_files_and_an_admin_all(served):
    tenant = admin(served, "POST", "/tenants", json={"name": "Shared"}).json()
    key = lambda role: admin(served, "POST", f"/tenants/{tenant['id']}/keys", json={"name": role, "role": role}).json()["key"]  # noqa: E731
    first, second, owner = client_of(served, key("member")), client_of(served, key("member")), client_of(served, key("tenant-admin"))
    file = first.files.create(file=("a.jsonl", io.BytesIO(jsonl(LINES))), purpose="batch")
    with pytest.raises(openai.NotFoundError):
        second.files.retrieve(file.id)
    with pytest.raises(openai.NotFoundError):
        second.files.delete(file.id)
    assert second.files.list().data == []
    assert owner.files.retrieve(file.id).id == file.id
    assert [f.id for f in owner.files.list().data] == [file.id]
    assert first.files.retrieve(file.id).id == file.id

