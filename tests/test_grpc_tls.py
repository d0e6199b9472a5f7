"""gRPC TLS: tritonserver with its own --grpc-use-ssl* flags
(server/exposure.py), `msk serve --tls-*` (TLS at its gRPC guard), and every gRPC client
(`msk score`, `msk detect`, the web app, the gateway's Triton client) over a real TLS channel on
loopback, with a CA, a server and a client certificate made in the test by openssl."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from clients.mura import MuraClient
from clients.tls import GrpcTls, TlsConfigError
from server.exposure import ServerTls
from server.serve import ServeConfig, Server
from tests.plugins.web import synthetic_radiograph

ROOT = Path(__file__).resolve().parent.parent
MSK = [sys.executable, "-m", "msk.cli"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, signed by it."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=msk-test-ca", "-keyout", "ca.key", "-out", "ca.pem", cwd=folder)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                 "extendedKeyUsage=serverAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")):
        (folder / f"{name}.ext").write_text(ext)
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=msk-test-{name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                 "-out", f"{name}.pem", cwd=folder)
    return {n: folder / n for n in ("ca.pem", "server.pem", "server.key", "client.pem",
                                     "client.key")}


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_triton(tiny_repository, pki):
    """The guarded server with mutual TLS on gRPC (clients must present a certificate the CA
    signed), started through the Python API (server.serve.Server)."""
    tls = ServerTls(cert=pki["server.pem"], key=pki["server.key"], ca=pki["ca.pem"])
    config = ServeConfig(tiny_repository, grpc_port=0, http_port=0, metrics_port=0, tls=tls,
                         restart=False)       # a crash ends the server: the test fails
    server = Server(config).start()           # the documented Python API: the front door
    yield server
    assert server.stop() == 0, "tritonserver died during the TLS tests"


def client_tls(pki) -> GrpcTls:
    return GrpcTls(ca=pki["ca.pem"], cert=pki["client.pem"], key=pki["client.key"])


def test_mutual_tls_call_scores_and_plain_or_anonymous_calls_fail(tls_triton, pki):
    image = synthetic_radiograph(3, 400, 300)
    with MuraClient(tls_triton.grpc_url, tls=client_tls(pki), timeout_s=60) as client:
        (result,) = client.score([image])
    assert result.error is None and 0.0 <= result.probability <= 1.0
    for kwargs in ({}, {"tls": GrpcTls(ca=pki["ca.pem"])}):    # no TLS; TLS without client cert
        with (MuraClient(tls_triton.grpc_url, timeout_s=10, **kwargs) as client,
              pytest.raises(InferenceServerException)):
            client.client.is_server_ready(client_timeout=10)


def test_tls_flags_are_checked_before_connecting(pki, tmp_path):
    with pytest.raises(TlsConfigError, match="go together"):
        GrpcTls(ca=pki["ca.pem"], cert=pki["client.pem"])
    with pytest.raises(TlsConfigError, match="no such file"):
        GrpcTls(ca=tmp_path / "missing.pem")


def test_msk_score_and_detect_over_tls(tls_triton, pki, tmp_path):
    from PIL import Image

    path = tmp_path / "elbow.png"
    Image.fromarray(synthetic_radiograph(5, 360, 280)).save(path)
    flags = ["--tls-ca", str(pki["ca.pem"]), "--tls-cert", str(pki["client.pem"]),
             "--tls-key", str(pki["client.key"])]
    score = subprocess.run([*MSK, "score", str(path), "--url", tls_triton.grpc_url,
                            "--no-progress", "--wait", "30", *flags],
                           capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert score.returncode == 0, score.stderr
    row = json.loads(score.stdout.splitlines()[0])
    assert row["error"] in (None, "") and 0.0 <= float(row["probability"]) <= 1.0
    # The tiny repository has no wrist_detect: over TLS the server itself answers that.
    detect = subprocess.run([*MSK, "detect", str(path), "--url", tls_triton.grpc_url, *flags],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    row = json.loads(detect.stdout.splitlines()[0])
    assert "wrist_detect" in row["error"] and "ssl" not in row["error"].lower(), row
    # Without the flags the same call cannot get through.
    plain = subprocess.run([*MSK, "score", str(path), "--url", tls_triton.grpc_url,
                            "--no-progress", "--wait", "3"],
                           capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert plain.returncode != 0


def test_web_and_gateway_clients_over_tls(tls_triton, pki):
    from clients.gateway.scoring import StudyScorer
    from clients.routing import Router
    from clients.web.service import WebService

    status = WebService(tls_triton.grpc_url, tls=client_tls(pki)).status()
    assert status.reachable and "mura_ensemble" in status.models
    assert not WebService(tls_triton.grpc_url).status().reachable
    scorer = StudyScorer(tls_triton.grpc_url, Router.from_file(None), wrist="off",
                         tls=client_tls(pki))
    try:
        scorer.check_ready()      # raises TransientError unless Triton answered over TLS
    finally:
        scorer.close()


def test_msk_serve_serves_grpc_over_tls(tiny_repository, pki):
    proc = subprocess.Popen(
        [*MSK, "serve", "--repository", str(tiny_repository), "--grpc-port", "0",
         "--http-port", "0", "--metrics-port", "0", "--tls-cert", str(pki["server.pem"]),
         "--tls-key", str(pki["server.key"]), "--tls-ca", str(pki["ca.pem"])],
        cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        grpc_url = None
        for line in proc.stderr:
            match = re.search(r"ready\s+grpc=(\S+)", line)
            if match:
                grpc_url = match.group(1)
                break
        assert grpc_url, "msk serve did not report ready"
        with MuraClient(grpc_url, tls=client_tls(pki), timeout_s=60) as client:
            (result,) = client.score([np.full((64, 64), 90, np.uint8)])
        assert result.error is None
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def test_web_and_gateway_commands_take_the_tls_flags(pki, tmp_path):
    missing = tmp_path / "missing.pem"
    web = subprocess.run([*MSK, "web", "--port", "0", "--tls-ca", str(missing)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert web.returncode == 2 and f"--tls-ca {missing}: no such file" in web.stderr
    gateway = subprocess.run(
        [*MSK, "gateway", "--triton-url", "127.0.0.1:1", "--destination", "PACS@127.0.0.1:104",
         "--data-dir", str(tmp_path / "gw"), "--tls-ca", str(pki["ca.pem"]),
         "--tls-cert", str(pki["client.pem"]), "--tls-key", str(pki["client.key"]),
         "--accept-any-calling-ae", "--print-config"], capture_output=True, text=True,
        timeout=120, cwd=ROOT)
    assert gateway.returncode == 0, gateway.stderr
    settings = json.loads(gateway.stdout)
    assert settings["triton_tls_ca"] == str(pki["ca.pem"])
    assert settings["triton_tls_key"] == str(pki["client.key"])
