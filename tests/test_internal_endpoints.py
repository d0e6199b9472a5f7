"""Nothing reaches tritonserver but the front door, and no secret is readable (issue "close the
side doors", item 1), tried as a second, unprivileged local user against the real `msk serve`.

Before: the restricted-API key was in tritonserver's command line (`/proc/<pid>/cmdline` is
readable by everyone), which opened HTTP inference on Triton's own port, and Triton's internal
gRPC port took anyone's requests (a [2**62+4, 4] request there killed a stub). Now Triton has no
HTTP endpoint, its gRPC answers only a client certificate of a private CA made at start
(server/internal_tls.py) whose keys are 0600 in a 0700 folder, and no command line carries a
secret. The probe, run as `nobody`, reads both processes' command lines, tries their environments
and the key files, speaks HTTP/2 to the internal port in clear and over TLS without a
certificate, and asks the front door for HTTP inference with restricted-API headers.
"""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from msk.constants import MURA_ENSEMBLE_MODEL
from tests.second_user import run_as_nobody

PROBE = r'''
import json, os, socket, ssl, sys, urllib.error, urllib.request
triton, serve, port, http = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])

def opened(path):
    try:
        with open(path, "rb") as fh:
            fh.read(1)
        return "readable"
    except PermissionError:
        return "denied"

def http2(tls):
    """'answered' when the port speaks HTTP/2 back (a SETTINGS frame)."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            sock = ctx.wrap_socket(sock)
        sock.sendall(PREFACE)
        data = sock.recv(64)
        return "answered" if data[3:4] == b"\x04" else "closed"
    except (OSError, ssl.SSLError) as exc:
        return "refused: " + type(exc).__name__

cmdlines = {pid: open(f"/proc/{pid}/cmdline", "rb").read().decode().split("\0")
            for pid in (triton, serve)}
files = [a.split("=", 1)[1] for a in cmdlines[triton]
         if a.startswith(("--grpc-server-key=", "--grpc-root-cert=", "--grpc-server-cert="))]
files += [os.path.join(os.path.dirname(files[0]), "client.key")] if files else []
request = urllib.request.Request(
    f"{http}/v2/models/{sys.argv[5]}/infer",
    data=b'{"inputs":[{"name":"IMAGE","shape":[2,2],"datatype":"UINT8","data":[1,2,3,4]}]}',
    headers={"msk-restricted-key": "guess", "triton-grpc-protocol-msk-restricted-key": "guess",
             "Content-Type": "application/json"})
try:
    with urllib.request.urlopen(request, timeout=30) as reply:
        infer = reply.status
except urllib.error.HTTPError as exc:
    infer = exc.code
print(json.dumps({
    "cmdlines": cmdlines,
    "environ": {pid: opened(f"/proc/{pid}/environ") for pid in (triton, serve)},
    "files": {path: opened(path) for path in files},
    "plain": http2(False), "tls_without_certificate": http2(True), "http_inference": infer}))
'''


def _internal_port(argv: list[str]) -> int:
    return int(next(a for a in argv if a.startswith("--grpc-port=")).split("=", 1)[1])


def _http2_with_certificate(port: int, folder: Path) -> str:
    """The probe's check with the front door's own certificate: shows that it can tell."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(folder / "ca.pem")
    ctx.load_cert_chain(folder / "client.pem", folder / "client.key")
    ctx.set_alpn_protocols(["h2"])
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                         server_hostname="127.0.0.1") as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
        return "answered" if sock.recv(64)[3:4] == b"\x04" else "closed"


def test_a_second_local_user_reaches_nothing_behind_the_front_door(tiny_msk_serve) -> None:
    import psutil

    triton_argv = psutil.Process(tiny_msk_serve.triton_pid).cmdline()
    port = _internal_port(triton_argv)
    folder = Path(next(a for a in triton_argv if a.startswith("--grpc-root-cert="))
                  .split("=", 1)[1]).parent
    seen = run_as_nobody(PROBE, str(tiny_msk_serve.triton_pid), str(tiny_msk_serve.proc.pid),
                         str(port), tiny_msk_serve.http_url, MURA_ENSEMBLE_MODEL)

    # No secret on any command line: no restricted-API key, no key material.
    secrets = [line for name in ("client.key", "server.key")
               for line in (folder / name).read_text().splitlines() if "-----" not in line]
    for pid, argv in seen["cmdlines"].items():
        joined = " ".join(argv)
        assert "restricted" not in joined and "msk-restricted-key" not in joined, pid
        assert not any(line in joined for line in secrets), pid
    assert "--allow-http=false" in triton_argv and not any(
        a.startswith("--http-port") for a in triton_argv), "Triton has no HTTP endpoint"
    assert set(seen["environ"].values()) == {"denied"}, seen["environ"]
    # The key files are named on the command line but cannot be opened.
    assert len(seen["files"]) == 4 and set(seen["files"].values()) == {"denied"}, seen["files"]
    assert folder.stat().st_mode & 0o777 == 0o700
    assert {oct(p.stat().st_mode & 0o777) for p in folder.iterdir()} == {"0o600"}
    # The internal port refuses anyone without the front door's certificate...
    assert seen["plain"] != "answered" and seen["tls_without_certificate"] != "answered", seen
    assert _http2_with_certificate(port, folder) == "answered"     # ...and the probe can tell
    # HTTP inference is off whatever headers are sent (no --http-inference).
    assert seen["http_inference"] == 403
    assert tiny_msk_serve.triton_alive()


def test_http_is_answered_by_the_front_door_over_grpc(tiny_msk_serve) -> None:
    """Health, readiness and metadata keep working with Triton's HTTP off; the rest is 403,
    refused before the body is read."""
    http = tiny_msk_serve.http_url
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{MURA_ENSEMBLE_MODEL}/ready"):
        with urllib.request.urlopen(f"{http}{path}", timeout=10) as reply:
            assert reply.status == 200, path
    with urllib.request.urlopen(f"{http}/v2", timeout=10) as reply:
        assert json.load(reply)["version"].startswith("2.")
    with urllib.request.urlopen(f"{http}/v2/models/{MURA_ENSEMBLE_MODEL}", timeout=10) as reply:
        meta = json.load(reply)
    assert meta["name"] == MURA_ENSEMBLE_MODEL and meta["inputs"][0]["name"] == "IMAGE"
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{http}/v2/models/no_such_model", timeout=10)
    assert caught.value.code in (400, 404, 503) and "no_such_model" in caught.value.read().decode()
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{http}/v2/models/{MURA_ENSEMBLE_MODEL}/config", timeout=10)
    assert caught.value.code == 403
    # A refused request is answered from its headers: a declared 1 GB body is never read.
    host, port = http.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /v2/models/{MURA_ENSEMBLE_MODEL}/infer HTTP/1.1\r\nHost: x\r\n"
                     f"Content-Length: {1 << 30}\r\n\r\n".encode())
        head = sock.recv(4096).decode()
    assert head.startswith("HTTP/1.1 403") and "Connection: close" in head
    assert tiny_msk_serve.triton_alive()
