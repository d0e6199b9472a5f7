"""A real S3-compatible object store (moto's server) on a free loopback port, for `msk publish`
and for tritonserver reading `s3://` repositories."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest

from msk.process import stop_process
from server.launcher import free_port

BUCKET = "models"


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """A moto S3 server on a free loopback port; yields (endpoint host:port, boto3 client)."""
    pytest.importorskip("moto")
    import boto3

    for name, value in (("AWS_ACCESS_KEY_ID", "msk-test"), ("AWS_SECRET_ACCESS_KEY", "msk-test"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    port = free_port()
    log = tmp_path / "moto.log"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
        client.create_bucket(Bucket=BUCKET)
        yield f"127.0.0.1:{port}", client
    finally:
        stop_process(proc)
