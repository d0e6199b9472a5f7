"""Idle sockets cannot lock the PACS out of the gateway ("close the side doors", item 4).

The real SCP in-process, real peers over loopback: raw TCP sockets that never speak, sockets
that send half a PDU header, pynetdicom associations that are requested and never used, all
from 127.0.0.1 (or many 127.0.0.x addresses), while the allowed sender (pinned to 127.0.0.2,
which Linux routes on lo) stores with pynetdicom. Bounded in count and in time; every socket is
closed by the test. Timing is asserted only as the stated bounds (store within 5 s, idle
sockets dropped well within ARTIM + 10 s).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from clients.gateway.config import GatewayConfig
from clients.gateway.queue import StudyQueue
from clients.gateway.scp import StoreSCP
from clients.gateway.tls import client_context
from server.launcher import free_port
from tests.plugins.pacs import GATEWAY_AET, MODALITY_AET, SyntheticPatient, make_study

pytestmark = pytest.mark.timeout(180)

PACS_ADDRESS = "127.0.0.2"
"""The allowed sender's address (`MODALITY_AET@127.0.0.2` in the allow-list)."""
STRANGER = "127.0.0.1"
ARTIM_S = 2.0
STORE_BOUND_S = 5.0
HALF_RQ_HEADER = b"\x01\x00\x00\x00\x01\x00"
"""An A-ASSOCIATE-RQ PDU header announcing 256 bytes that never come."""


def _start(tmp_path: Path, **settings) -> tuple[GatewayConfig, StudyQueue, StoreSCP]:
    config = GatewayConfig("127.0.0.1:1", "PACS@127.0.0.1:104", ae_title=GATEWAY_AET,
                           host="127.0.0.1", port=free_port(),
                           allowed_calling_aes=[f"{MODALITY_AET}@{PACS_ADDRESS}"],
                           data_dir=tmp_path / "q", **{"artim_timeout_s": ARTIM_S, **settings})
    queue = StudyQueue(config.data_dir)
    scp = StoreSCP(config, queue)
    scp.start()
    return config, queue, scp


@pytest.fixture()
def gateway(tmp_path: Path) -> Iterator[Callable[..., tuple[GatewayConfig, StudyQueue, StoreSCP]]]:
    started: list[tuple[StudyQueue, StoreSCP]] = []

    def start(**settings):
        config, queue, scp = _start(tmp_path, **settings)
        started.append((queue, scp))
        return config, queue, scp

    yield start
    for queue, scp in started:
        scp.stop()
        queue.close()


# ---------------------------------------------------------------------------------------------
# Peers
# ---------------------------------------------------------------------------------------------
def _idle_socket(stack: ExitStack, port: int, source: str, first_bytes: bytes = b""
                 ) -> socket.socket:
    """A TCP connection from `source` that says nothing (or only `first_bytes`)."""
    sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5,
                                                        source_address=(source, 0)))
    if first_bytes:
        sock.sendall(first_bytes)
    return sock


def _requestor(calling_aet: str = MODALITY_AET) -> AE:
    ae = AE(calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 5
    return ae


def _idle_association(stack: ExitStack, port: int, source: str) -> Association:
    """An association requested with an allowed title (from the wrong address: accepted, the
    title is checked at association, the address at C-STORE) and then never used."""
    ae = _requestor()
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=GATEWAY_AET, bind_address=(source, 0))
    stack.callback(lambda: assoc.release() if assoc.is_established else assoc.abort())
    return assoc


def _store(files: list[Path], port: int, source: str = PACS_ADDRESS,
           tls: ssl.SSLContext | None = None) -> list[int]:
    """C-STORE `files` from `source` with pynetdicom; the statuses (0 = stored)."""
    datasets = [dcmread(f) for f in files]
    ae = _requestor()
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=GATEWAY_AET, bind_address=(source, 0),
                         tls_args=(tls, "127.0.0.1") if tls else None)
    assert assoc.is_established, f"association from {source} not established"
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    """Did the gateway close `sock` (EOF or reset) within `within` seconds?"""
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except (ConnectionResetError, ssl.SSLError):
        return True
    except TimeoutError:
        return False
    return True


def _wait_for(check: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _timed_store(files: list[Path], port: int, **kwargs) -> tuple[list[int], float]:
    started = time.monotonic()
    statuses = _store(files, port, **kwargs)
    return statuses, time.monotonic() - started


# ---------------------------------------------------------------------------------------------
# The lockout, and what stays open
# ---------------------------------------------------------------------------------------------
def test_idle_sockets_and_associations_from_one_address_do_not_lock_out_the_pacs(
        gateway, tmp_path: Path) -> None:
    config, queue, scp = gateway()
    files = make_study(tmp_path / "s", SyntheticPatient("Idle^Sockets", "IDLE-0001"), ["WRIST"])
    with ExitStack() as stack:
        associations = [_idle_association(stack, config.port, STRANGER) for _ in range(30)]
        for index in range(30):
            _idle_socket(stack, config.port, STRANGER, HALF_RQ_HEADER if index % 3 else b"")
        established = sum(a.is_established for a in associations)
        assert 1 <= established <= config.max_associations_per_peer
        assert scp.admission.open_count(STRANGER) <= config.max_associations_per_peer

        statuses, elapsed = _timed_store(files, config.port)
        assert statuses == [0x0000] and elapsed < STORE_BOUND_S
    assert len(list(queue.dir("incoming").glob("*/*.dcm"))) == 1
    assert _wait_for(lambda: scp.admission.open_count() == 0, 30)   # every slot given back


def test_strangers_from_many_addresses_leave_the_reserve_to_the_pacs(gateway,
                                                                      tmp_path: Path) -> None:
    # ARTIM long enough that the strangers still hold their slots while the PACS stores
    config, queue, scp = gateway(artim_timeout_s=30.0)
    shared = config.max_associations - config.reserved_associations
    assert scp.admission.shared == shared
    files = make_study(tmp_path / "s", SyntheticPatient("Many^Strangers", "IDLE-0002"), ["HAND"])
    with ExitStack() as stack:
        for host in range(10, 30):                  # 20 addresses x 3 sockets > shared slots
            for _ in range(3):
                _idle_socket(stack, config.port, f"127.0.0.{host}")
        assert _wait_for(lambda: scp.admission.open_count() == shared, 10)
        late = _idle_socket(stack, config.port, "127.0.0.99")
        assert _closed_by_peer(late, 5)              # refused at accept, not held until ARTIM
        assert scp.admission.open_count() == shared

        statuses, elapsed = _timed_store(files, config.port)
        assert statuses == [0x0000] and elapsed < STORE_BOUND_S
    assert len(list(queue.dir("incoming").glob("*/*.dcm"))) == 1


def test_idle_sockets_are_dropped_after_artim_and_give_their_slots_back(gateway) -> None:
    config, _, scp = gateway()
    with ExitStack() as stack:
        silent = [_idle_socket(stack, config.port, STRANGER) for _ in range(3)]
        half = [_idle_socket(stack, config.port, STRANGER, HALF_RQ_HEADER) for _ in range(3)]
        assert _wait_for(lambda: scp.admission.open_count(STRANGER) == 6, 5)
        for sock in [*silent, *half]:
            assert _closed_by_peer(sock, ARTIM_S + 10)
        assert _wait_for(lambda: scp.admission.open_count() == 0, 10)
        # the address is welcome again once its idle sockets are gone
        ae = _requestor()
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", config.port, ae_title=GATEWAY_AET,
                             bind_address=(STRANGER, 0))
        assert assoc.is_established
        assert int(assoc.send_c_echo().Status) == 0x0000
        assoc.release()


# ---------------------------------------------------------------------------------------------
# DICOM TLS: the handshake must not happen in the accept loop
# ---------------------------------------------------------------------------------------------
def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "gateway.pem", directory / "gateway.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_silent_tls_clients_do_not_block_the_accept_loop(gateway, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    config, queue, _ = gateway(dicom_tls_cert=cert, dicom_tls_key=key)
    files = make_study(tmp_path / "s", SyntheticPatient("Tls^Silent", "IDLE-0003"), ["ELBOW"])
    with ExitStack() as stack:
        silent = [_idle_socket(stack, config.port, STRANGER) for _ in range(3)]
        time.sleep(0.2)                              # let the gateway accept them first
        statuses, elapsed = _timed_store(files, config.port, tls=client_context(cert))
        assert statuses == [0x0000] and elapsed < STORE_BOUND_S
        for sock in silent:                          # no handshake within ARTIM: closed
            assert _closed_by_peer(sock, ARTIM_S + 10)
    assert len(list(queue.dir("incoming").glob("*/*.dcm"))) == 1


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("settings, named", [
    ({"artim_timeout_s": 0}, "artim_timeout_s"),
    ({"artim_timeout_s": float("inf")}, "artim_timeout_s"),
    ({"max_associations": 0}, "max_associations"),
    ({"max_associations_per_peer": 40}, "max_associations_per_peer"),
    ({"max_associations_per_peer": "8"}, "max_associations_per_peer"),
    ({"reserved_associations": 32}, "reserved_associations"),
    ({"reserved_associations": -1}, "reserved_associations"),
])
def test_connection_limits_are_validated(settings: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        GatewayConfig("127.0.0.1:1", "PACS@127.0.0.1:104", **settings)


def test_connection_limits_have_defaults_and_print(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    defaults = GatewayConfig("127.0.0.1:1", "PACS@127.0.0.1:104").to_json()
    assert (defaults["artim_timeout_s"], defaults["max_associations"],
            defaults["max_associations_per_peer"], defaults["reserved_associations"]) == \
        (5.0, 32, 8, 16)
    file = tmp_path / "gateway.yaml"
    file.write_text("triton_url: 127.0.0.1:1\ndestination: P@127.0.0.1:104\n"
                    "allowed_calling_aes: [PACS@10.1.2.3]\nartim-timeout-s: 3\n"
                    "max_associations: 12\nmax_associations_per_peer: 2\n"
                    "reserved_associations: 4\n")
    proc = subprocess.run([sys.executable, "-m", "msk.cli", "gateway", "--config", str(file),
                           "--data-dir", str(tmp_path / "q"), "--print-config"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert (printed["artim_timeout_s"], printed["max_associations"],
            printed["max_associations_per_peer"], printed["reserved_associations"]) == \
        (3, 12, 2, 4)


def test_msk_gateway_process_keeps_the_door_open(tmp_path: Path) -> None:
    """The same lockout against `msk gateway` as a real process (settings from its config
    file; its allow-list names titles without addresses, so the per-address limit is what keeps
    the stranger's 60 sockets from filling the gateway)."""
    from tests.plugins.pacs import GatewayProcess

    settings = tmp_path / "gateway.yaml"
    settings.write_text(f"artim_timeout_s: {ARTIM_S}\nmax_associations_per_peer: 4\n")
    gw = GatewayProcess(tmp_path / "gw", "127.0.0.1:1", "PACS@127.0.0.1:104",
                        extra=["--config", str(settings)])
    files = make_study(tmp_path / "s", SyntheticPatient("Idle^Process", "IDLE-0004"), ["WRIST"])
    gw.start()
    try:
        with ExitStack() as stack:
            associations = [_idle_association(stack, gw.port, STRANGER) for _ in range(30)]
            sockets = [_idle_socket(stack, gw.port, STRANGER) for _ in range(30)]
            assert 1 <= sum(a.is_established for a in associations) <= 4
            statuses, elapsed = _timed_store(files, gw.port)
            assert statuses == [0x0000] and elapsed < STORE_BOUND_S, gw.logs()
            for sock in sockets:                      # refused at once or dropped by ARTIM
                assert _closed_by_peer(sock, ARTIM_S + 10)
        assert "connection limits: 32 in all, 4 per address, no address pinned" in gw.logs()
    finally:
        gw.stop()
