"""What tritonserver exposes, and how: Triton's own switches for HTTP/gRPC APIs and gRPC TLS.

Why: tritonserver 2.51 parses an HTTP/JSON inference request by allocating the declared shape
before it looks at the data (a 90-byte request with shape [100000, 100000] made it allocate
~10 GB), and its HTTP API also carries model control, tracing and logging. `msk serve` therefore
keeps HTTP to health and metadata (metrics live on their own port) unless `--http-inference` is
given, and keeps the tracing/logging controls off gRPC. Triton's restricted-API mechanism requires
a header with a secret value for a restricted API; the secret is made here, per server, and never
shown, so a restricted API answers "This API is restricted" to everyone.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

TRITON_APIS = ("health", "metadata", "inference", "shared-memory", "model-config",
               "model-repository", "statistics", "trace", "logging")
"""API groups tritonserver 2.51 accepts in --http-restricted-api and --grpc-restricted-protocol."""

HTTP_OPEN = ("health", "metadata")
"""HTTP by default: probes (/v2/health/*) and model metadata."""

GRPC_RESTRICTED = ("trace", "logging")
"""gRPC serves inference, metadata, config, statistics, shared memory and the repository index to
our clients; changing the server's trace and log settings is nobody's business over the wire."""

RESTRICTED_HEADER = "msk-restricted-key"


@dataclass(frozen=True)
class ServerTls:
    """gRPC TLS for tritonserver: `ca` set = mutual TLS (clients must present a cert it signed)."""

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

    def triton_args(self) -> tuple[str, ...]:
        args = [f"--grpc-server-cert={Path(self.cert).resolve()}",
                f"--grpc-server-key={Path(self.key).resolve()}"]
        if self.ca is not None:
            # Triton's mutual mode: the root cert verifies client certificates.
            return ("--grpc-use-ssl-mutual=true", *args,
                    f"--grpc-root-cert={Path(self.ca).resolve()}")
        return ("--grpc-use-ssl=true", *args)


def exposure_args(*, http_inference: bool = False, tls: ServerTls | None = None,
                  secret: str | None = None) -> tuple[str, ...]:
    """tritonserver flags for `msk serve`'s exposure policy (see module docstring)."""
    secret = secret or secrets.token_hex(16)
    http_open = (*HTTP_OPEN, "inference") if http_inference else HTTP_OPEN
    http_closed = [api for api in TRITON_APIS if api not in http_open]
    args = [f"--http-restricted-api={','.join(http_closed)}:{RESTRICTED_HEADER}={secret}",
            f"--grpc-restricted-protocol={','.join(GRPC_RESTRICTED)}:"
            f"{RESTRICTED_HEADER}={secret}"]
    if tls is not None:
        args.extend(tls.triton_args())
    return tuple(args)
