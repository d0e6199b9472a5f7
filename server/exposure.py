"""What `msk serve` exposes, and where: the front door is the only way in.

Why: tritonserver 2.51 trusts what a request declares (a 90-byte HTTP/JSON body declaring
[100000, 100000] made it allocate ~10 GB; a gRPC shape of [2**62+4, 4] killed a stub), and its
APIs also carry model control, tracing and logging. So Triton itself has no endpoint anyone else
can use: no HTTP at all (`--allow-http=false`), and gRPC on loopback that answers only the holder
of the front door's client certificate (server/internal_tls.py; Triton's restricted-API header
is not used, because Triton takes its secret on the command line, readable by every local user).
What users reach is the front door:
  * gRPC (server/grpc_guard.py): health, metadata, config, statistics, the repository index and
    inference, each request checked; model loading, tracing and logging refused
    (`CLOSED_METHODS`); client shared memory only with `--allow-client-shm`.
  * HTTP (server/http_guard.py): health and metadata (KServe v2), inference only with
    `--http-inference`, all answered over the same checked gRPC path.
  * metrics (server/metrics_door.py): Triton's metrics and `msk serve`'s own.
TLS for clients (`ServerTls`) terminates at the gRPC guard.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
        """grpc server credentials for the same files (used by server/grpc_guard.py)."""
        import grpc

        root = Path(self.ca).read_bytes() if self.ca else None
        return grpc.ssl_server_credentials(
            [(Path(self.key).read_bytes(), Path(self.cert).read_bytes())],
            root_certificates=root, require_client_auth=root is not None)
