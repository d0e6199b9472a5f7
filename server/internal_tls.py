"""Mutual TLS between the front door and tritonserver: the internal gRPC port answers nobody else.

Why: tritonserver listens on a loopback port, and every local user can read that port from
`ss` or `/proc/<pid>/cmdline`. Triton 2.51's only per-caller control is its restricted-API
header, whose secret it takes on the command line, where every local user can read it too
(issue "close the side doors", item 1). So `msk serve` gives Triton no secret in argv at all:
its gRPC endpoint requires a client certificate (`--grpc-use-ssl-mutual`) signed by a private
CA made for this one server, and only the front door (the gRPC guard, the HTTP guard, the
supervisor's checks) holds the client key. The key files live in a fresh 0700 folder, each
mode 0600 and owned by the service user: the command line names the files, which another user
cannot open. Triton's HTTP endpoint is off (`--allow-http=false`): the HTTP guard answers HTTP
clients over this gRPC channel (server/http_gateway.py).

The certificates are EC P-256 and made again at every `msk serve` start (a few milliseconds);
the folder is removed when the server stops.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

LOOPBACK_NAMES = ("localhost",)
VALIDITY = datetime.timedelta(days=3650)
"""The CA lives as long as the server process and its key never leaves the 0700 folder; a long
validity only avoids a server that stops answering after an arbitrary date."""


@dataclass(frozen=True)
class InternalTls:
    """The files of one server's internal mutual TLS (see module docstring)."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.folder / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.folder / "client.key"

    @classmethod
    def create(cls, parent: Path | None = None) -> InternalTls:
        """A new CA, server and client certificate in a new private folder under `parent`."""
        folder = Path(tempfile.mkdtemp(prefix="msk-internal-tls-", dir=parent))   # mode 0700
        try:
            _write_material(folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return cls(folder)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def triton_args(self) -> tuple[str, ...]:
        """tritonserver flags: gRPC only with a client certificate this CA signed."""
        return ("--grpc-use-ssl-mutual=true", f"--grpc-server-cert={self.server_cert}",
                f"--grpc-server-key={self.server_key}", f"--grpc-root-cert={self.ca}")

    def channel_credentials(self):
        """grpc channel credentials of the front door (the client side of the mutual TLS)."""
        import grpc

        return grpc.ssl_channel_credentials(self.ca.read_bytes(), self.client_key.read_bytes(),
                                            self.client_cert.read_bytes())

    def client_kwargs(self) -> dict:
        """Keyword arguments of tritonclient.grpc.InferenceServerClient for the same channel."""
        return {"ssl": True, "root_certificates": str(self.ca),
                "private_key": str(self.client_key), "certificate_chain": str(self.client_cert)}


def _write_material(folder: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def build(subject: str, key, issuer: x509.Name, signer, *, ca: bool,
              usage=None, san=None) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + VALIDITY)
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if usage is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if san is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(signer, hashes.SHA256())

    import ipaddress

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("msk-serve internal CA")
    ca_cert = build("msk-serve internal CA", ca_key, ca_name, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = build("127.0.0.1", server_key, ca_name, ca_key, ca=False,
                        usage=ExtendedKeyUsageOID.SERVER_AUTH,
                        san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                             *(x509.DNSName(n) for n in LOOPBACK_NAMES)])
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = build("msk-serve front door", client_key, ca_name, ca_key, ca=False,
                        usage=ExtendedKeyUsageOID.CLIENT_AUTH)

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    files = {"ca.pem": ca_cert.public_bytes(serialization.Encoding.PEM),
             "server.pem": server_cert.public_bytes(serialization.Encoding.PEM),
             "server.key": pem_key(server_key),
             "client.pem": client_cert.public_bytes(serialization.Encoding.PEM),
             "client.key": pem_key(client_key)}
    for filename, data in files.items():
        descriptor = os.open(folder / filename, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
