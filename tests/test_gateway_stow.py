"""The STOW-RS receiver on its own (real HTTP(S) on loopback, dicomweb-client and requests as
senders): what it stores, what it refuses and how it answers (PS3.18 10.5)."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.uid import generate_uid

from clients.gateway.config import GatewayConfig
from clients.gateway.queue import StudyQueue
from clients.gateway.stow_in import PATH_PREFIX, StowServer
from server.launcher import free_port
from tests.plugins.pacs import SyntheticPatient, make_study
from tests.test_gateway_tls import pki  # noqa: F401 - the certificates fixture

TOKEN = "t-" + "5" * 30


@pytest.fixture()
def stow(tmp_path: Path, monkeypatch, request):
    monkeypatch.setenv("MSK_GATEWAY_STOW_TOKENS", TOKEN)
    settings = getattr(request, "param", {})
    config = GatewayConfig("127.0.0.1:1", "PACS@127.0.0.1:104", data_dir=tmp_path / "q",
                           allowed_calling_aes=["PACS"], dicomweb_port=free_port(),
                           **settings)
    queue = StudyQueue(config.data_dir)
    server = StowServer(config, queue)
    server.start()
    yield config, queue, server
    server.stop()
    queue.close()


def _client(port: int, token: str | None = TOKEN, scheme: str = "http", **session_args):
    session = requests.Session()
    session.trust_env = False          # REQUESTS_CA_BUNDLE would override `verify`
    for key, value in session_args.items():
        setattr(session, key, value)
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return DICOMwebClient(f"{scheme}://127.0.0.1:{port}/dicomweb", session=session)


def test_stores_a_study_and_lists_every_instance(stow, tmp_path: Path) -> None:
    config, queue, _ = stow
    files = make_study(tmp_path / "s", SyntheticPatient("Stow^Unit", "STOW-0001"),
                       ["WRIST", "HAND"])
    datasets = [dcmread(f) for f in files]
    answer = _client(config.dicomweb_port).store_instances(datasets)
    assert len(answer.ReferencedSOPSequence) == 2
    stored = sorted(queue.dir("incoming").glob("*/*.dcm"))
    assert sorted(str(dcmread(p).SOPInstanceUID) for p in stored) == sorted(
        str(d.SOPInstanceUID) for d in datasets)
    assert [dcmread(p).PixelData for p in stored[:1]]           # pixels kept, not just headers


def test_refusals(stow, tmp_path: Path) -> None:
    config, queue, _ = stow
    url = f"http://127.0.0.1:{config.dicomweb_port}/dicomweb/studies"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    (file,) = make_study(tmp_path / "s", SyntheticPatient("Stow^Refused", "STOW-0002"),
                         ["ELBOW"])
    assert requests.post(url, data=b"x", timeout=30).status_code == 401
    wrong_type = requests.post(url, data=b"x", headers={**auth, "Content-Type": "image/png"},
                               timeout=30)
    assert wrong_type.status_code == 415 and "image/png" in wrong_type.text
    # a part that is not DICOM next to one that is: 202, the bad one in FailedSOPSequence
    client = _client(config.dicomweb_port)
    boundary = "b0undary"
    body = b"".join([
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), b"not dicom",
        f"\r\n--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
        Path(file).read_bytes(), f"\r\n--{boundary}--\r\n".encode()])
    mixed = requests.post(url, data=body, timeout=30, headers={
        **auth, "Content-Type": f'multipart/related; type="application/dicom"; '
                                f'boundary={boundary}'})
    assert mixed.status_code == 202
    answer = mixed.json()
    assert len(answer["00081198"]["Value"]) == 1 and len(answer["00081199"]["Value"]) == 1
    # an instance of another study than the URL names: refused (409), nothing stored for it
    with pytest.raises(requests.HTTPError) as other:
        client.store_instances([dcmread(file)], study_instance_uid=generate_uid())
    assert other.value.response.status_code == 409
    assert len(list(queue.dir("incoming").glob("*/*.dcm"))) == 1


def test_no_allowed_sender_no_endpoint(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MSK_GATEWAY_STOW_TOKENS", raising=False)
    config = GatewayConfig("127.0.0.1:1", "PACS@127.0.0.1:104", data_dir=tmp_path / "q",
                           allowed_calling_aes=["PACS"], dicomweb_port=free_port())
    queue = StudyQueue(config.data_dir)
    try:
        with pytest.raises(ValueError, match="MSK_GATEWAY_STOW_TOKENS"):
            StowServer(config, queue)
    finally:
        queue.close()


def test_https_with_client_certificates(pki, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    monkeypatch.setenv("MSK_GATEWAY_STOW_TOKENS", TOKEN)
    config = GatewayConfig("127.0.0.1:1", "PACS@127.0.0.1:104", data_dir=tmp_path / "q",
                           allowed_calling_aes=["PACS"], dicomweb_port=free_port(),
                           dicom_tls_cert=pki["gateway.pem"], dicom_tls_key=pki["gateway.key"],
                           dicom_tls_ca=pki["ca.pem"])
    queue = StudyQueue(config.data_dir)
    server = StowServer(config, queue)
    server.start()
    try:
        files = make_study(tmp_path / "s", SyntheticPatient("Stow^Tls", "STOW-0003"), ["HAND"])
        client = _client(config.dicomweb_port, scheme="https", verify=str(pki["ca.pem"]),
                         cert=(str(pki["modality.pem"]), str(pki["modality.key"])))
        assert len(client.store_instances([dcmread(files[0])]).ReferencedSOPSequence) == 1
        # Without a client certificate, and in plain HTTP, the handshake fails: one attempt
        # each (dicomweb-client would retry for half a minute).
        with pytest.raises(requests.exceptions.SSLError):
            requests.post(f"https://127.0.0.1:{config.dicomweb_port}{PATH_PREFIX}",
                          data=files[0].read_bytes(), timeout=10, verify=str(pki["ca.pem"]),
                          headers={"Authorization": f"Bearer {TOKEN}"})
        with pytest.raises(requests.exceptions.RequestException):   # plain HTTP: no answer
            requests.post(f"http://127.0.0.1:{config.dicomweb_port}{PATH_PREFIX}",
                          data=files[0].read_bytes(), timeout=10,
                          headers={"Authorization": f"Bearer {TOKEN}"})
        assert len(list(queue.dir("incoming").glob("*/*.dcm"))) == 1
    finally:
        server.stop()
        queue.close()


def test_destination_credentials_come_from_the_environment(tmp_path: Path) -> None:
    from clients.gateway.stow_out import session_from_env

    bearer = session_from_env({"MSK_DICOMWEB_TOKEN": "abc", "MSK_DICOMWEB_USER": "u"})
    assert bearer.headers["Authorization"] == "Bearer abc" and bearer.auth is None
    basic = session_from_env({"MSK_DICOMWEB_USER": "u", "MSK_DICOMWEB_PASSWORD": "p"})
    assert basic.auth == ("u", "p") and "Authorization" not in basic.headers
    ca = tmp_path / "ca.pem"
    pinned = session_from_env({}, ca=ca)
    assert pinned.verify == str(ca) and pinned.trust_env is False


# -- bodies: streamed to disk, refused cleanly -----------------------------------------------
def _headers(boundary: str | None = "b0undary") -> dict[str, str]:
    ctype = 'multipart/related; type="application/dicom"'
    return {"Authorization": f"Bearer {TOKEN}",
            "Content-Type": ctype + (f"; boundary={boundary}" if boundary else "")}


def _no_traceback(capfd) -> None:
    err = capfd.readouterr().err
    for word in ("Traceback", "BrokenPipeError", "ConnectionResetError", "Exception occurred"):
        assert word not in err, err


def test_oversized_bodies_get_a_clean_413(stow, monkeypatch, capfd, caplog,
                                          tmp_path: Path) -> None:
    """Over the request limit by Content-Length (refused before reading) or as a chunked body
    arrives: the sender reads the 413 (not a reset), the log holds no traceback, and a sender
    that resets the connection mid-body is one line in the log."""
    import logging
    import socket
    import struct
    import time

    from clients.gateway import stow_in

    config, queue, _ = stow
    limit = stow_in.MAX_BODY_BYTES
    monkeypatch.setattr(stow_in, "MAX_BODY_BYTES", 1 << 20)
    url = f"http://127.0.0.1:{config.dicomweb_port}{PATH_PREFIX}"
    big = b"x" * (16 << 20)
    declared = requests.post(url, data=big, headers=_headers(), timeout=60)
    assert declared.status_code == 413 and "at most 1048576" in declared.text
    chunked = requests.post(url, data=iter([big[: 1 << 20]] * 16), headers=_headers(),
                            timeout=60)
    assert chunked.status_code == 413 and "more than 1048576" in chunked.text
    caplog.set_level(logging.INFO, logger="msk.gateway.stow")
    with socket.create_connection(("127.0.0.1", config.dicomweb_port), timeout=30) as sock:
        head = "".join(f"{k}: {v}\r\n" for k, v in _headers().items())
        sock.sendall(f"POST {PATH_PREFIX} HTTP/1.1\r\nHost: x\r\n{head}"
                     f"Content-Length: 1000\r\n\r\n".encode() + b"y" * 500)
        time.sleep(0.2)          # the receiver is waiting for the rest of the body
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    deadline = time.monotonic() + 30
    while "connection closed by the sender" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "connection closed by the sender" in caplog.text
    _no_traceback(capfd)
    monkeypatch.setattr(stow_in, "MAX_BODY_BYTES", limit)
    (file,) = make_study(tmp_path / "s", SyntheticPatient("Stow^After", "STOW-0004"), ["HAND"])
    assert len(_client(config.dicomweb_port).store_instances(
        [dcmread(file)]).ReferencedSOPSequence) == 1                 # still serving
    assert not list(queue.tmp.glob(".stow-*"))                      # no spool left behind


def test_a_body_without_boundary_is_a_clear_400(stow) -> None:
    config, _, _ = stow
    url = f"http://127.0.0.1:{config.dicomweb_port}{PATH_PREFIX}"
    answer = requests.post(url, data=b"--b0undary\r\n\r\nx\r\n--b0undary--\r\n", timeout=30,
                           headers=_headers(None))
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("no boundary in Content-Type")
    empty = requests.post(url, data=b"nothing here", headers=_headers(), timeout=30)
    assert empty.status_code == 400 and "no parts" in empty.json()["error"]


def test_a_truncated_body_stores_what_arrived_whole(stow, tmp_path: Path) -> None:
    """The part cut off before the closing boundary is refused (0xC000), not stored cut."""
    config, queue, _ = stow
    files = make_study(tmp_path / "s", SyntheticPatient("Stow^Cut", "STOW-0005"),
                       ["WRIST", "HAND"])
    first, second = (f.read_bytes() for f in files)
    body = (b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + first
            + b"\r\n--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + second[:-1000])
    answer = requests.post(f"http://127.0.0.1:{config.dicomweb_port}{PATH_PREFIX}", data=body,
                           headers=_headers(), timeout=30)
    assert answer.status_code == 202, answer.text
    assert [f["00081197"]["Value"] for f in answer.json()["00081198"]["Value"]] == [[0xC000]]
    (stored,) = queue.dir("incoming").glob("*/*.dcm")
    assert stored.read_bytes() == first
