"""HTTP in front of tritonserver: what `msk serve` exposes on its HTTP port.

Why: tritonserver 2.51 parses an HTTP/JSON inference request by allocating the shape it declares
before it looks at the data (a 90-byte body declaring [100000, 100000] made it allocate ~10 GB).
This guard reads `Content-Length` first (a body larger than the largest legal request is refused
with 413 before it is read), then the JSON header of an `/infer` request, and refuses any input
whose declared shape is negative or larger than `MAX_IMAGE_PIXELS` (400) before Triton sees it.
Everything else (health, metadata) is passed through. Triton's own HTTP inference API stays
restricted (server/exposure.py) and only this guard holds the header that opens it, and only when
`msk serve --http-inference` gave it the key (`secret`); without it inference answers 403 here
whatever headers a client sends.
"""

from __future__ import annotations

import http.client
import json
import re
from http.server import BaseHTTPRequestHandler

from server.exposure import RESTRICTED_HEADER
from server.grpc_guard import MAX_MESSAGE_BYTES, RequestRefused, check_shape
from server.http_door import HttpDoor

_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?/infer$")
_READY = re.compile(r"^/v2/health/ready$|^/v2/models/[^/]+(?:/versions/[^/]+)?/ready$")
_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "te", "upgrade",
        "proxy-connection", "content-length", RESTRICTED_HEADER}


def check_http_infer(model: str, body: bytes, header_length: int | None) -> None:
    """Check the declared shapes of a KServe v2 HTTP inference request (JSON or binary)."""
    try:
        doc = json.loads(body[:header_length] if header_length else body)
        inputs = doc.get("inputs", [])
        for tensor in inputs:
            check_shape(model, str(tensor.get("name")), [int(d) for d in tensor["shape"]])
    except RequestRefused:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise RequestRefused(f"inference request for model {model!r} is not valid JSON with "
                             f"inputs[].shape ({exc})") from exc


class HttpGuard(HttpDoor):
    """Listens on `host:port`, forwards to Triton's HTTP at `upstream_port` on loopback."""

    def __init__(self, upstream_port: int, host: str, port: int, secret: str | None) -> None:
        guard = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # no per-request lines (and no patient data)
                return None

            def _answer(self, status: int, payload: bytes, headers=()) -> None:
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _refuse(self, status: int, message: str) -> None:
                guard.refused += 1
                self._answer(status, json.dumps({"error": message}).encode(),
                             [("Content-Type", "application/json")])

            def _forward(self) -> None:
                if self.headers.get("Transfer-Encoding"):
                    return self._refuse(411, "send a Content-Length (chunked bodies are refused)")
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_MESSAGE_BYTES:
                    return self._refuse(413, f"request body of {length} bytes; at most "
                                        f"{MAX_MESSAGE_BYTES}")
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                match = _INFER.match(path)
                if not guard.accepting and (match or _READY.match(path)):
                    return self._refuse(503, "not ready: this server is starting or shutting "
                                        "down")
                if match and not guard.secret:
                    return self._refuse(403, "inference over HTTP is off on this server (msk "
                                        "serve --http-inference turns it on); use gRPC")
                if match and self.command == "POST":
                    header = self.headers.get("Inference-Header-Content-Length")
                    try:
                        check_http_infer(match.group(1), body, int(header) if header else None)
                    except (RequestRefused, ValueError) as exc:
                        return self._refuse(400, str(exc))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                if match and guard.secret:  # opens inference only; the rest stays restricted
                    headers[RESTRICTED_HEADER] = guard.secret
                conn = http.client.HTTPConnection("127.0.0.1", guard.upstream_port)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    payload = response.read()
                except OSError as exc:
                    return self._refuse(503, f"tritonserver is not answering ({exc})")
                finally:
                    conn.close()
                self._answer(response.status, payload,
                             [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP])

            do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _forward

        self.upstream_port = upstream_port
        self.secret = secret
        self.accepting = True
        """False while msk serve warms up or drains: readiness 503, inference 503."""
        self.refused = 0
        super().__init__(host, port, Handler, "http-guard")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"
