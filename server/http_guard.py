"""HTTP in front of tritonserver: what `msk serve` exposes on its HTTP port.

Why: tritonserver runs without HTTP (server/exposure.py): its HTTP/JSON parser allocates the
shape a request declares before it looks at the data (a 90-byte body declaring [100000, 100000]
made 2.51 allocate ~10 GB), and Triton's HTTP restricted-API key would have to sit on its command
line. This guard answers KServe v2 HTTP itself (server/http_kserve.py translates) and sends every
request through the gRPC guard's checked path (`GrpcGuard.call`): health, server and model
metadata, model readiness, and inference only when `msk serve --http-inference` turned it on;
anything else is 403. A request is judged from its line and headers before its body is read: a
refused one (403, 503, 411, 413) is answered without reading the body, and the connection closed.
"""

from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler

import grpc

from server.grpc_guard import MAX_MESSAGE_BYTES, GrpcGuard
from server.http_door import HttpDoor
from server.http_kserve import (
    BINARY_HEADER,
    BadRequest,
    infer_request,
    infer_response,
    model_metadata,
    server_metadata,
)

_MODEL = r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?"
_INFER = re.compile(_MODEL + r"/infer$")
_MODEL_READY = re.compile(_MODEL + r"/ready$")
_MODEL_META = re.compile(_MODEL + r"$")
STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
          grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.UNAVAILABLE: 503,
          grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
          grpc.StatusCode.UNIMPLEMENTED: 501}
"""HTTP status of a gRPC status code (anything else: 500)."""


class HttpGuard(HttpDoor):
    """Listens on `host:port`; answers KServe v2 HTTP through `grpc_guard` (module docstring)."""

    def __init__(self, grpc_guard: GrpcGuard, host: str, port: int, inference: bool) -> None:
        guard = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # no per-request lines (and no patient data)
                return None

            def _answer(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _json(self, status: int, doc: dict) -> None:
                self._answer(status, json.dumps(doc).encode(),
                             {"Content-Type": "application/json"})

            def _refuse(self, status: int, message: str) -> None:
                """Refuse without reading the body: the connection cannot be reused."""
                guard.refused += 1
                self.close_connection = True
                self._answer(status, json.dumps({"error": message}).encode(),
                             {"Content-Type": "application/json", "Connection": "close"})

            def _call(self, name: str, request) -> bytes | None:
                code, details, raw = guard.grpc_guard.call(name, request.SerializeToString())
                if code is None:
                    return raw
                self._json(STATUS.get(code, 500), {"error": details})
                return None

            def _route(self) -> None:
                from tritonclient.grpc import service_pb2 as pb

                path = self.path.split("?", 1)[0]
                infer = _INFER.match(path)
                if self.command == "POST" and infer:
                    return self._infer(infer.group("model"), infer.group("version") or "")
                if self.command not in ("GET", "HEAD") or self.headers.get("Content-Length",
                                                                          "0") != "0":
                    return self._refuse(403, f"{self.command} {path} is not offered over HTTP "
                                        "by this server (health, metadata and, where turned "
                                        "on, inference)")
                if path == "/v2/health/live":
                    raw = self._call("ServerLive", pb.ServerLiveRequest())
                    live = raw is not None and pb.ServerLiveResponse.FromString(raw).live
                    return self._answer(200 if live else 503, b"", {})
                if path == "/v2/health/ready":
                    raw = self._call("ServerReady", pb.ServerReadyRequest())
                    ready = raw is not None and pb.ServerReadyResponse.FromString(raw).ready
                    return self._answer(200 if ready and guard.accepting else 503, b"", {})
                if path == "/v2":
                    raw = self._call("ServerMetadata", pb.ServerMetadataRequest())
                    return None if raw is None else self._json(200, server_metadata(raw))
                if match := _MODEL_READY.match(path):
                    raw = self._call("ModelReady", pb.ModelReadyRequest(
                        name=match.group("model"), version=match.group("version") or ""))
                    ready = raw is not None and pb.ModelReadyResponse.FromString(raw).ready
                    return self._answer(200 if ready and guard.accepting else 503, b"", {})
                if match := _MODEL_META.match(path):
                    raw = self._call("ModelMetadata", pb.ModelMetadataRequest(
                        name=match.group("model"), version=match.group("version") or ""))
                    return None if raw is None else self._json(200, model_metadata(raw))
                return self._refuse(403, f"GET {path} is not offered over HTTP by this server "
                                    "(health and metadata; model control, config, statistics, "
                                    "tracing and logging are not)")

            def _infer(self, model: str, version: str) -> None:
                if not guard.inference:
                    return self._refuse(403, "inference over HTTP is off on this server (msk "
                                        "serve --http-inference turns it on); use gRPC")
                if not guard.accepting:
                    return self._refuse(503, "not ready: this server is starting or shutting "
                                        "down")
                if self.headers.get("Transfer-Encoding"):
                    return self._refuse(411, "send a Content-Length (chunked bodies are refused)")
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    return self._refuse(400, "Content-Length is not a number")
                if length > MAX_MESSAGE_BYTES:
                    return self._refuse(413, f"request body of {length} bytes; at most "
                                        f"{MAX_MESSAGE_BYTES}")
                body = self.rfile.read(length)
                header = self.headers.get(BINARY_HEADER)
                try:
                    translation = infer_request(model, version, body,
                                                int(header) if header else None)
                except (BadRequest, ValueError) as exc:
                    guard.refused += 1
                    return self._json(400, {"error": str(exc)})
                raw = self._call("ModelInfer", translation.request)
                if raw is not None:
                    payload, headers = infer_response(raw, translation)
                    self._answer(200, payload, headers)

            do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _route

        self.grpc_guard = grpc_guard
        self.inference = inference
        self.accepting = True
        """False while msk serve warms up or drains: readiness 503, inference 503."""
        self.refused = 0
        super().__init__(host, port, Handler, "http-guard")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"
