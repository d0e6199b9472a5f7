"""What tritonserver exposes, and how: Triton's own switches for its HTTP and gRPC APIs.

Why: tritonserver 2.51 parses an HTTP/JSON inference request by allocating the declared shape
before it looks at the data (a 90-byte request with shape [100000, 100000] made it allocate
~10 GB), and its HTTP API also carries model control, tracing and logging. `msk serve` therefore
keeps HTTP to health and metadata (metrics live on their own port) unless `--http-inference` is
given, and restricts on gRPC everything but health, metadata and inference (`GRPC_RESTRICTED`).
Triton's restricted-API mechanism requires a header with a secret value for a restricted API; the
secret is made per server by `server.serve` and held only by the front door (the gRPC and HTTP
guards), so a restricted API answers "This API is restricted" to anyone else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TRITON_APIS = ("health", "metadata", "inference", "shared-memory", "model-config",
               "model-repository", "statistics", "trace", "logging")
"""API groups tritonserver 2.51 accepts in --http-restricted-api and --grpc-restricted-protocol."""

HTTP_OPEN = ("health", "metadata")
"""HTTP by default: probes (/v2/health/*) and model metadata."""

GRPC_RESTRICTED = ("model-repository", "model-config", "shared-memory", "statistics", "trace",
                   "logging")
"""Restricted on Triton's gRPC (NVIDIA's deployment guide): only the gRPC guard holds the key, and
it forwards the config, statistics, shared-memory and repository-index calls our clients make
(server/grpc_guard.py) while refusing model loading, tracing and logging."""

RESTRICTED_HEADER = "msk-restricted-key"


@dataclass(frozen=True)
class ServerTls:
    """gRPC TLS of the front door (terminated by the gRPC guard, never by Triton): `ca` set =
    mutual TLS (clients must present a certificate it signed)."""

    cert: Path
    key: Path
    ca: Path | None = None

    def __post_init__(self) -> None:
        for flag, path in (("--tls-cert", self.cert), ("--tls-key", self.key),
                           ("--tls-ca", self.ca)):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{flag} {path}: no such file")

    def credentials(self):
        """grpc server credentials for the same files (used by the gRPC guard, server/guard.py)."""
        import grpc

        root = Path(self.ca).read_bytes() if self.ca else None
        return grpc.ssl_server_credentials(
            [(Path(self.key).read_bytes(), Path(self.cert).read_bytes())],
            root_certificates=root, require_client_auth=root is not None)


def exposure_args(*, http_inference: bool, secret: str) -> tuple[str, ...]:
    """tritonserver flags for the exposure policy (see module docstring); `secret` opens the
    restricted APIs and is held by the front door only."""
    http_open = (*HTTP_OPEN, "inference") if http_inference else HTTP_OPEN
    http_closed = [api for api in TRITON_APIS if api not in http_open]
    return (f"--http-restricted-api={','.join(http_closed)}:{RESTRICTED_HEADER}={secret}",
            f"--grpc-restricted-protocol={','.join(GRPC_RESTRICTED)}:"
            f"{RESTRICTED_HEADER}={secret}")
