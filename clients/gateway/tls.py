"""TLS contexts for DICOM TLS (PS3.15 B.1/B.9: TLS 1.2+) on the SCP, the SCU and STOW-RS.

One place builds them so every door of the gateway has the same rules: TLS 1.2 or newer, the
gateway's certificate and key from PEM files, and - when a CA bundle is given - peers must
present a certificate that CA signed (mutual TLS, how hospital DICOM TLS is usually run).
"""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(cert: Path, key: Path, ca: Path | None) -> ssl.SSLContext:
    """For the listening side; `ca` set = clients must present a certificate signed by it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    if ca is not None:
        context.load_verify_locations(cafile=str(ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None
                   ) -> ssl.SSLContext:
    """For deliveries: verify the destination against `ca` (and its host name); present our
    certificate when we have one."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    return context
