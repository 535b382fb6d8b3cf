"""What a connection may hold, through the real `ferry serve`: open streams count against
`max_calls_in_flight` until they end; silent sockets, heads sent a byte at a time, bodies that
never arrive and connections past the cap are closed in time, as `[server]` configures."""

import json
import re
import socket
import threading
import time

import httpx
import pytest

from conftest import Ferry
from test_money import admin, ok, register, tenant_with_key

MESSAGES = [{"role": "user", "content": "stream for a while"}]


def configured(tmp_path, server):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    lines = "\n".join(f"{name} = {value}" for name, value in server.items())
    (data_dir / "ferry.toml").write_text(f"[server]\n{lines}\n")
    return Ferry(data_dir)


def metric(ferry, name):
    text = httpx.get(f"{ferry.url}/metrics", headers={"Authorization": f"Bearer {ferry.operator_key}"}).text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_open_streams_hold_their_in_flight_slots_until_they_end(tmp_path, upstream):
    ferry = configured(tmp_path, {"max_calls_in_flight": 10})
    try:
        register(ferry, upstream, model_id="endless", upstream_model="slow-stream", price=None)
        _, key = tenant_with_key(ferry, billing_mode="postpaid")
        headers = {"Authorization": f"Bearer {key}"}
        body = {"model": "endless", "messages": MESSAGES, "stream": True}
        client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=20))
        streams, statuses = [], []
        for _ in range(12):
            response = client.send(client.build_request("POST", f"{ferry.url}/v1/chat/completions", json=body, headers=headers), stream=True)
            statuses.append(response.status_code)
            if response.status_code == 200:
                # Kept: a discarded line iterator would close its response.
                lines = response.iter_lines()
                assert next(lines).startswith("data: "), "the stream is flowing"
                streams.append((response, lines))
            else:
                assert response.read() and response.json()["error"]["code"] == "overloaded"
                response.close()
        assert statuses.count(200) == 10 and statuses.count(503) == 2, statuses
        assert metric(ferry, "ferry_calls_in_flight") == 10
        plain = httpx.post(f"{ferry.url}/v1/chat/completions", json={**body, "stream": False}, headers=headers, timeout=10)
        assert plain.status_code == 503, "ten open streams fill the ten slots"

        for stream, _ in streams:
            stream.close()
        deadline = time.monotonic() + 10
        while metric(ferry, "ferry_calls_in_flight") != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert metric(ferry, "ferry_calls_in_flight") == 0, "a closed stream gives its slot back"
        again = client.send(client.build_request("POST", f"{ferry.url}/v1/chat/completions", json=body, headers=headers), stream=True)
        assert again.status_code == 200
        again.close()
        client.close()
    finally:
        ferry.stop()


def read_until_closed(sock, limit):
    """What the server sent until it closed the connection, and after how long (None: still open)."""
    sock.settimeout(0.2)
    began, data = time.monotonic(), b""
    while time.monotonic() - began < limit:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return data, time.monotonic() - began
        if not chunk:
            return data, time.monotonic() - began
        data += chunk
    return data, None


def test_connections_that_hold_without_progress_are_closed_and_the_cap_refuses_at_once(tmp_path):
    ferry = configured(
        tmp_path,
        {"max_connections": 8, "idle_timeout_seconds": 2, "header_read_timeout_seconds": 1, "body_read_timeout_seconds": 1},
    )
    host, port = ferry.url.removeprefix("http://").split(":")
    address = (host, int(port))
    try:
        # A silent socket: closed after the idle timeout.
        silent = socket.create_connection(address)
        data, after = read_until_closed(silent, 10)
        assert data == b"" and after is not None and 1.5 < after < 5, after

        # A head sent a byte at a time: cut off a second after its first byte.
        slow = socket.create_connection(address)
        began, closed = time.monotonic(), None
        for byte in b"GET /healthz HTTP/1.1\r\nhost: ferry\r\nx-slow: " + b"a" * 40:
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                closed = time.monotonic() - began
                break
            data, after = read_until_closed(slow, 0.25)
            if after is not None:
                closed = time.monotonic() - began
                break
        assert closed is not None and closed < 4, closed

        # A body that never arrives whole: 408 in the error contract.
        stuck = socket.create_connection(address)
        stuck.sendall(b"POST /admin/v1/tenants HTTP/1.1\r\nhost: ferry\r\ncontent-type: application/json\r\n"
                      + f"authorization: Bearer {ferry.operator_key}\r\ncontent-length: 100\r\n\r\n".encode() + b'{"name"')
        data, after = read_until_closed(stuck, 10)
        assert data.startswith(b"HTTP/1.1 408"), data
        error = json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]
        assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error"

        # Past the cap: refused at once with 503, while a connection already open is served.
        kept = httpx.Client(base_url=ferry.url, timeout=5)
        assert kept.get("/healthz").status_code == 200
        held = [socket.create_connection(address) for _ in range(7)]
        time.sleep(0.2)
        began = time.monotonic()
        refused = socket.create_connection(address)
        data, after = read_until_closed(refused, 5)
        assert data.startswith(b"HTTP/1.1 503") and after is not None and time.monotonic() - began < 1, data
        assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "overloaded"
        assert kept.get("/healthz").status_code == 200, "an open connection is still served"
        # The held ones go idle and are closed; new connections are taken again.
        for sock in held:
            read_until_closed(sock, 5)
        assert httpx.get(f"{ferry.url}/healthz", timeout=5).status_code == 200
        kept.close()
        assert metric(ferry, "ferry_connections_refused_total") >= 1
    finally:
        ferry.stop()
