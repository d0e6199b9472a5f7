"""The Prometheus metrics that msk-triton's own processes export (clients, gateway, web).

Defined once here so the dashboard, the alert rules and the code agree on names and labels.
Triton's own metrics (`nv_inference_*`) come from the server's metrics port.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from msk.constants import DEFAULT_HOST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

REQUEST_LATENCY = Histogram(
    "msk_client_request_latency_seconds",
    "End-to-end latency of one inference request as seen by the client (load excluded).",
    ["pipeline", "outcome"], buckets=LATENCY_BUCKETS,
)
REQUESTS = Counter(
    "msk_client_requests_total", "Inference requests sent by clients, by outcome.",
    ["pipeline", "outcome"],
)
BYTES_SENT = Counter(
    "msk_client_bytes_sent_total", "Bytes of input tensors sent to Triton.", ["pipeline"],
)
GATEWAY_QUEUE_DEPTH = Gauge(
    "msk_gateway_queue_depth", "Studies in the PACS gateway's durable queue, by state.",
    ["state"],
)


def observe_request(pipeline: str, outcome: str, seconds: float, sent_bytes: int) -> None:
    """Record one request; `outcome` is "ok" or a short error class (e.g. "invalid_input")."""
    REQUEST_LATENCY.labels(pipeline, outcome).observe(seconds)
    REQUESTS.labels(pipeline, outcome).inc()
    if sent_bytes:
        BYTES_SENT.labels(pipeline).inc(sent_bytes)


def start_metrics_server(port: int, addr: str = DEFAULT_HOST) -> None:
    """Expose this process's metrics on http://addr:port/metrics (loopback by default)."""
    start_http_server(port, addr=addr)
