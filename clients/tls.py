"""TLS for every gRPC client of Triton (`msk score`, `msk detect`, the web app, the gateway).

One place turns the three command-line flags `--tls-ca`, `--tls-cert`, `--tls-key` into the keyword
arguments tritonclient's gRPC clients (sync and asyncio) take, so every entry point spells and
checks them the same way: a missing file is named before any connection is tried, and a client
certificate without its key (or the other way round) is refused instead of silently ignored.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path


class TlsConfigError(ValueError):
    """A TLS flag names a file that is not there, or a certificate comes without its key."""


@dataclass(frozen=True)
class GrpcTls:
    """Files for a TLS gRPC channel; `ca` verifies the server, `cert`+`key` are for mutual TLS."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise TlsConfigError("--tls-cert and --tls-key go together (mutual TLS needs both)")
        for flag, path in (("--tls-ca", self.ca), ("--tls-cert", self.cert),
                           ("--tls-key", self.key)):
            if path is not None and not Path(path).is_file():
                raise TlsConfigError(f"{flag} {path}: no such file")

    def client_kwargs(self) -> dict:
        """Keyword arguments for tritonclient.grpc[.aio].InferenceServerClient."""
        return {
            "ssl": True,
            "root_certificates": str(self.ca) if self.ca else None,
            "private_key": str(self.key) if self.key else None,
            "certificate_chain": str(self.cert) if self.cert else None,
        }


def client_kwargs(tls: GrpcTls | None) -> dict:
    """`{}` for a plain channel, the TLS arguments otherwise."""
    return tls.client_kwargs() if tls is not None else {}


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """The three client flags, with the same help everywhere."""
    group = parser.add_argument_group("TLS to Triton's gRPC endpoint")
    group.add_argument("--tls-ca", type=Path, default=None, metavar="PEM",
                       help="connect with TLS and verify the server against this CA "
                       "certificate (PEM); without it the system's CAs are used when "
                       "--tls-cert is given")
    group.add_argument("--tls-cert", type=Path, default=None, metavar="PEM",
                       help="client certificate (PEM) for mutual TLS; needs --tls-key")
    group.add_argument("--tls-key", type=Path, default=None, metavar="PEM",
                       help="client private key (PEM) for mutual TLS; needs --tls-cert")


def tls_from_args(args: argparse.Namespace) -> GrpcTls | None:
    """None when no TLS flag was given (plain gRPC on loopback, the default)."""
    ca, cert, key = (getattr(args, n, None) for n in ("tls_ca", "tls_cert", "tls_key"))
    if ca is None and cert is None and key is None:
        return None
    return GrpcTls(ca=ca, cert=cert, key=key)
