"""A test double of an OpenAI-compatible upstream (what vLLM or TGI would be), on loopback.

Its behaviour is chosen by the upstream model name, so one server covers every case:
  "echo"          answers "You said: <last user message>", streamed word by word
  "broken"        answers 500
  "busy"          answers 429 with Retry-After
  "busy-once"     answers 429 (Retry-After: 1) to a conversation the first time, then as "echo"
  "break-stream"  streams two chunks, then drops the connection
  "error-event"   streams one chunk, then its own error event, and closes
  "slow-stream"   streams one chunk every 50 ms for a long time (for disconnect tests)
  "slow-echo"     as "echo", but takes 200 ms to start and 50 ms per streamed word (calls overlap)
  "overshoot"     as "echo", but reports 2,000 completion tokens whatever `max_tokens` allowed
                  (a misbehaving or misconfigured backend)
Every request is recorded so tests can see what Ferry forwarded.
"""

import base64
import json
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


OVERSHOOT_TOKENS = 2000


class MockUpstream:
    def __init__(self):
        self.requests = []
        self.slow_chunks_sent = 0
        self.refused_once = set()
        self.lock = threading.Lock()
        handler = _make_handler(self)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def _words(text):
    words = text.split(" ")
    return [word if index == 0 else " " + word for index, word in enumerate(words)]


def _prompt_tokens(body):
    if "messages" in body:
        return sum(len(str(m.get("content") or "").split()) + 4 for m in body["messages"])
    prompt = body.get("prompt", "")
    return len(prompt.split()) if isinstance(prompt, str) else len(prompt)


def _make_handler(mock):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _json(self, status, body, headers=None):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _start_stream(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()

        def _event(self, payload):
            data = payload if isinstance(payload, str) else json.dumps(payload)
            self.wfile.write(f"data: {data}\n\n".encode())
            self.wfile.flush()

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            with mock.lock:
                mock.requests.append(
                    {"path": self.path, "body": body, "auth": self.headers.get("Authorization"), "traceparent": self.headers.get("traceparent")}
                )
            model = body.get("model", "")
            if model == "broken":
                return self._json(500, {"error": {"message": "internal upstream detail 10.1.2.3", "type": "server_error"}})
            if model == "busy":
                return self._json(429, {"error": {"message": "slow down"}}, {"Retry-After": "7"})
            if model == "busy-once":
                conversation = json.dumps(body.get("messages"), sort_keys=True)
                with mock.lock:
                    first = conversation not in mock.refused_once
                    mock.refused_once.add(conversation)
                if first:
                    return self._json(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"})
            slow = model == "slow-echo"
            if slow:
                time.sleep(0.2)
            if self.path == "/v1/embeddings":
                return self._embeddings(body)
            if self.path == "/v1/chat/completions":
                last = next((m for m in reversed(body["messages"]) if m["role"] == "user"), {"content": ""})
                text = f"You said: {last.get('content')}"
                kind, chunk_object = "chat", "chat.completion.chunk"
            elif self.path == "/v1/completions":
                text = f"completion of: {body.get('prompt')}"
                kind, chunk_object = "text", "text_completion"
            else:
                return self._json(404, {"error": {"message": "no such path"}})
            prompt_tokens = _prompt_tokens(body)
            words = _words(text)
            completion_tokens = OVERSHOOT_TOKENS if model == "overshoot" else len(words)
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
            if not body.get("stream"):
                if kind == "chat":
                    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    obj = "chat.completion"
                else:
                    choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
                    obj = "text_completion"
                return self._json(200, {"id": "up-1", "object": obj, "created": 1, "model": model, "choices": [choice], "usage": usage})
            self._start_stream()
            try:
                if model == "slow-stream":
                    return self._slow(kind, chunk_object)
                for index, word in enumerate(words):
                    if model == "error-event" and index == 1:
                        self._event({"error": {"message": "the engine failed", "type": "server_error"}})
                        return
                    if model == "break-stream" and index == 2:
                        self.wfile.flush()
                        self.connection.shutdown(2)
                        return
                    if kind == "chat":
                        delta = {"content": word} if index else {"role": "assistant", "content": word}
                        choice = {"index": 0, "delta": delta, "finish_reason": None}
                    else:
                        choice = {"index": 0, "text": word, "finish_reason": None}
                    self._event({"id": "up-1", "object": chunk_object, "created": 1, "model": model, "choices": [choice]})
                    if slow:
                        time.sleep(0.05)
                final = {"index": 0, "delta": {}, "finish_reason": "stop"} if kind == "chat" else {"index": 0, "text": "", "finish_reason": "stop"}
                self._event({"id": "up-1", "object": chunk_object, "created": 1, "model": model, "choices": [final]})
                if (body.get("stream_options") or {}).get("include_usage"):
                    self._event({"id": "up-1", "object": chunk_object, "created": 1, "model": model, "choices": [], "usage": usage})
                self._event("[DONE]")
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass
            finally:
                self.close_connection = True

        def _slow(self, kind, chunk_object):
            for _ in range(2000):
                choice = {"index": 0, "delta": {"content": " tick"}, "finish_reason": None}
                self._event({"id": "up-1", "object": chunk_object, "created": 1, "model": "slow-stream", "choices": [choice]})
                with mock.lock:
                    mock.slow_chunks_sent += 1
                time.sleep(0.05)

        def _embeddings(self, body):
            inputs = body["input"]
            if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)):
                inputs = [inputs]
            data = []
            for index, item in enumerate(inputs):
                seed = len(item) if isinstance(item, str) else sum(item)
                vector = [float(seed), 1.0, 0.5]
                if body.get("encoding_format") == "base64":
                    vector = base64.b64encode(struct.pack("<3f", *vector)).decode()
                data.append({"object": "embedding", "index": index, "embedding": vector})
            tokens = sum(len(i.split()) if isinstance(i, str) else len(i) for i in inputs)
            self._json(200, {"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    return Handler
