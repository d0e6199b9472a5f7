"""The metrics port of `msk serve`: Triton's metrics and `msk serve`'s own, on one endpoint.

Why: Prometheus is pointed at one address per server. Serving `msk serve`'s own metrics
(`msk_serve_triton_restarts_total`, `msk_serve_triton_up`, server/supervisor.py) on a second port
of fixed default made a second `msk serve` on the same host fail unless given yet another flag;
here they follow the user's `--metrics-port`. Triton's metrics endpoint listens on a loopback
port of its own and is read per scrape; if Triton is down (restarting) the scrape still answers,
with `msk_serve_triton_up 0`, so the outage is visible rather than a failed scrape.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from server.http_door import HttpDoor


class MetricsDoor(HttpDoor):
    """Listens on `host:port`; `GET /metrics` = Triton's metrics (loopback `upstream_port`) plus
    `registry`'s."""

    def __init__(self, upstream_port: int, host: str, port: int,
                 registry: CollectorRegistry) -> None:
        door = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:      # no per-scrape lines
                return None

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?", 1)[0] != "/metrics":
                    payload, status = b"not found: only /metrics is served here\n", 404
                else:
                    payload, status = door.scrape(), 200
                self.send_response(status)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.upstream = f"http://127.0.0.1:{upstream_port}/metrics"
        self.registry = registry
        super().__init__(host, port, Handler, "metrics-door")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def scrape(self) -> bytes:
        """Triton's exposition (when it answers) followed by ours."""
        try:
            with urllib.request.urlopen(self.upstream, timeout=10) as reply:
                triton = reply.read()
        except (urllib.error.URLError, OSError):
            triton = b""
        if triton and not triton.endswith(b"\n"):
            triton += b"\n"
        return triton + generate_latest(self.registry)
