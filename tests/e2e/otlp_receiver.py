"""An OTLP/HTTP trace receiver for tests (what an OpenTelemetry Collector would be), on
loopback: it takes `POST /v1/traces` in OTLP's JSON encoding and keeps every span."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _value(value):
    """An OTLP AnyValue as a Python value (64-bit integers arrive as strings in OTLP JSON)."""
    for kind in ("stringValue", "boolValue", "doubleValue"):
        if kind in value:
            return value[kind]
    if "intValue" in value:
        return int(value["intValue"])
    if "arrayValue" in value:
        return [_value(v) for v in value["arrayValue"].get("values", [])]
    return None


class OtlpReceiver:
    def __init__(self):
        self.spans = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/v1/traces" or "json" not in self.headers.get("Content-Type", ""):
                    self.send_response(415)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                request = json.loads(body)
                with receiver.lock:
                    for resource_spans in request.get("resourceSpans", []):
                        resource = {a["key"]: _value(a["value"]) for a in resource_spans.get("resource", {}).get("attributes", [])}
                        for scope_spans in resource_spans.get("scopeSpans", []):
                            for span in scope_spans.get("spans", []):
                                receiver.spans.append(
                                    {
                                        "name": span["name"],
                                        "trace_id": span["traceId"],
                                        "span_id": span["spanId"],
                                        "parent_id": span.get("parentSpanId", ""),
                                        "kind": span.get("kind"),
                                        "attributes": {a["key"]: _value(a["value"]) for a in span.get("attributes", [])},
                                        "status": span.get("status", {}),
                                        "resource": resource,
                                    }
                                )
                reply = b"{}"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def of_trace(self, trace_id):
        with self.lock:
            return [span for span in self.spans if span["trace_id"] == trace_id]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
