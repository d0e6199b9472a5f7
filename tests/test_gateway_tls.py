"""The gateway is closed by default: loopback unless told otherwise, stores only from listed
senders (EVIL_AE is turned away), and DICOM TLS on a real association over loopback with
certificates made here (a CA, the gateway's and a modality's, by `cryptography`)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from clients.gateway.config import Destination, GatewayConfig
from clients.gateway.queue import StudyQueue, study_key
from clients.gateway.scp import StoreSCP
from clients.gateway.scu import DeliveryError, send
from clients.gateway.tls import client_context
from server.launcher import free_port
from tests.plugins.pacs import (
    GATEWAY_AET,
    MODALITY_AET,
    SyntheticPatient,
    echoscu,
    make_study,
    storescu,
)

MSK = [sys.executable, "-m", "msk.cli", "gateway"]


# ---------------------------------------------------------------------------------------------
# Certificates made in the test
# ---------------------------------------------------------------------------------------------
def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, cert, key=None) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))


def _cert(name: str, key, issuer_name, issuer_key, ca: bool = False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer_name or subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False).add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), subject


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """ca.pem; gateway.pem/.key and modality.pem/.key signed by it; rogue.pem/.key signed by
    another CA."""
    root = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca_cert, ca_name = _cert("msk test CA", ca_key, None, ca_key, ca=True)
    _write(root / "ca.pem", ca_cert)
    for name in ("gateway", "modality"):
        key = _key()
        cert, _ = _cert(name, key, ca_name, ca_key)
        _write(root / f"{name}.pem", cert, key)
    other_key = _key()
    _, other_name = _cert("another CA", other_key, None, other_key, ca=True)
    rogue_key = _key()
    rogue, _ = _cert("rogue", rogue_key, other_name, other_key)
    _write(root / "rogue.pem", rogue, rogue_key)
    return {p.name: p for p in root.iterdir()}


def _scp(tmp_path: Path, **settings):
    config = GatewayConfig("127.0.0.1:1", "PACS@127.0.0.1:104", ae_title=GATEWAY_AET,
                           port=free_port(), data_dir=tmp_path / "q", **settings)
    queue = StudyQueue(config.data_dir)
    scp = StoreSCP(config, queue)
    scp.start()
    return config, queue, scp


# ---------------------------------------------------------------------------------------------
# DICOM TLS
# ---------------------------------------------------------------------------------------------
def test_tls_association_stores_and_plain_or_unsigned_peers_are_refused(pki, tmp_path) -> None:
    config, queue, scp = _scp(tmp_path, allowed_calling_aes=[MODALITY_AET],
                              dicom_tls_cert=pki["gateway.pem"], dicom_tls_key=pki["gateway.key"],
                              dicom_tls_ca=pki["ca.pem"])
    try:
        files = make_study(tmp_path / "s", SyntheticPatient("Tls^Tester", "TLS-0001"),
                           ["WRIST"])
        study_uid = str(dcmread(files[0]).StudyInstanceUID)
        destination = Destination(GATEWAY_AET, "127.0.0.1", config.port)
        # the gateway's own SCU (as it delivers with --destination-tls) against its TLS SCP:
        # server verified against the CA and its address, client certificate presented
        tls = client_context(pki["ca.pem"], pki["modality.pem"], pki["modality.key"])
        sent = send(files, destination, MODALITY_AET, 30.0, tls)
        assert sent == [str(dcmread(files[0]).SOPInstanceUID)]
        stored = list((queue.dir("incoming") / study_key(study_uid)).glob("*.dcm"))
        assert len(stored) == 1 and dcmread(stored[0]).SOPInstanceUID == sent[0]

        # plain DICOM to the TLS port: no association, nothing stored
        plain = storescu(files, config.port, GATEWAY_AET, check=False)
        assert plain.returncode != 0
        # TLS with a certificate from another CA: refused during the handshake
        rogue = client_context(pki["ca.pem"], pki["rogue.pem"], pki["rogue.key"])
        with pytest.raises((DeliveryError, ssl.SSLError, OSError)):
            send(files, destination, MODALITY_AET, 10.0, rogue)
        # a client that does not trust the gateway's CA refuses to talk to it
        with pytest.raises((DeliveryError, ssl.SSLError, OSError)):
            send(files, destination, MODALITY_AET, 10.0,
                 client_context(pki["rogue.pem"], pki["modality.pem"], pki["modality.key"]))
        assert len(list(queue.dir("incoming").glob("*/*.dcm"))) == 1
    finally:
        scp.stop()
        queue.close()


# ---------------------------------------------------------------------------------------------
# Who may store
# ---------------------------------------------------------------------------------------------
def test_unlisted_calling_ae_is_rejected(tmp_path: Path) -> None:
    config, queue, scp = _scp(tmp_path, allowed_calling_aes=[MODALITY_AET])
    try:
        files = make_study(tmp_path / "s", SyntheticPatient("Evil^Sender", "EVIL-0001"),
                           ["WRIST"])
        echo = echoscu(config.port, GATEWAY_AET, calling_aet="EVIL_AE")
        assert echo.returncode != 0 and "Rejected" in echo.stdout + echo.stderr
        store = storescu(files, config.port, GATEWAY_AET, calling_aet="EVIL_AE", check=False)
        assert store.returncode != 0 and "Rejected" in store.stdout + store.stderr
        assert list(queue.dir("incoming").glob("*/*.dcm")) == []
        storescu(files, config.port, GATEWAY_AET)                 # the listed one gets in
        assert len(list(queue.dir("incoming").glob("*/*.dcm"))) == 1
    finally:
        scp.stop()
        queue.close()


def test_allowed_ae_bound_to_another_address_cannot_store(tmp_path: Path) -> None:
    config, queue, scp = _scp(tmp_path, allowed_calling_aes=[f"{MODALITY_AET}@10.11.12.13",
                                                             "OTHER@127.0.0.1"])
    try:
        files = make_study(tmp_path / "s", SyntheticPatient("Addr^Bound", "ADDR-0001"),
                           ["HAND"])
        storescu(files, config.port, GATEWAY_AET, check=False)   # right title, wrong address
        assert list(queue.dir("incoming").glob("*/*.dcm")) == []
        storescu(files, config.port, GATEWAY_AET, calling_aet="OTHER")
        assert len(list(queue.dir("incoming").glob("*/*.dcm"))) == 1
    finally:
        scp.stop()
        queue.close()


def test_scp_refuses_to_start_open(tmp_path: Path) -> None:
    config = GatewayConfig("127.0.0.1:1", "PACS@127.0.0.1:104", port=free_port(),
                           data_dir=tmp_path / "q")
    queue = StudyQueue(config.data_dir)
    try:
        with pytest.raises(ValueError, match="accept-any-calling-ae"):
            StoreSCP(config, queue)
    finally:
        queue.close()


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*MSK, *args], capture_output=True, text=True, timeout=120, env=env)


def test_cli_defaults_to_loopback_and_requires_senders(tmp_path: Path) -> None:
    base = ("--triton-url", "127.0.0.1:1", "--destination", "P@127.0.0.1:104",
            "--data-dir", str(tmp_path / "q"))
    open_ = _run(*base, "--print-config")
    assert open_.returncode == 2 and "--allowed-calling-ae" in open_.stderr
    assert "--accept-any-calling-ae" in open_.stderr
    listed = _run(*base, "--allowed-calling-ae", "PACS@10.1.2.3", "--print-config")
    assert listed.returncode == 0, listed.stderr
    settings = json.loads(listed.stdout)
    assert settings["host"] == "127.0.0.1"
    assert settings["allowed_calling_aes"] == ["PACS@10.1.2.3"]
    anyone = _run(*base, "--accept-any-calling-ae", "--print-config")
    assert anyone.returncode == 0 and json.loads(anyone.stdout)["accept_any_calling_ae"]
    half_tls = _run(*base, "--accept-any-calling-ae", "--dicom-tls-cert", "c.pem", "--print-config")
    assert half_tls.returncode == 2 and "dicom_tls_key" in half_tls.stderr


def test_tls_all_the_way_modality_gateway_orthanc(pki, tiny_triton, start_gateway,
                                                  tmp_path: Path) -> None:
    """modality --DICOM TLS--> `msk gateway` --DICOM TLS--> Orthanc (DCMTK's TLS), each side
    checking the other's certificate against the test CA; the SR arrives."""
    from tests.plugins.pacs import Orthanc, assert_no_phi

    orthanc = Orthanc(tmp_path / "orthanc-tls", extra={
        "DicomTlsEnabled": True, "DicomTlsCertificate": str(pki["modality.pem"]),
        "DicomTlsPrivateKey": str(pki["modality.key"]),
        "DicomTlsTrustedCertificates": str(pki["ca.pem"]),
        "DicomTlsRemoteCertificateRequired": True}).start()
    try:
        gateway = start_gateway(tiny_triton.grpc_url, orthanc.destination, "--destination-tls",
                                "--dicom-tls-cert", str(pki["gateway.pem"]), "--dicom-tls-key",
                                str(pki["gateway.key"]), "--dicom-tls-ca", str(pki["ca.pem"]))
        patient = SyntheticPatient("Tls^Throughout", "PHI-7731-0301")
        files = make_study(tmp_path / "study", patient, ["FINGER"])
        tls = client_context(pki["ca.pem"], pki["modality.pem"], pki["modality.key"])
        send(files, Destination(GATEWAY_AET, "127.0.0.1", gateway.port), MODALITY_AET, 30.0,
             tls)
        (sr,) = orthanc.wait_for_sr(str(dcmread(files[0]).StudyInstanceUID),
                                    diagnostics=gateway.logs)
        assert sr.VerificationFlag == "UNVERIFIED"
        assert "with DICOM TLS" in gateway.logs()
        assert_no_phi(gateway.log_paths(), [patient])
    finally:
        orthanc.stop()
