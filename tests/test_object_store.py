"""Model repository in object storage, against a real S3-compatible server
(moto's standalone server on loopback) and the real tritonserver reading `s3://127.0.0.1:PORT/...`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clients.mura import MuraClient
from export.object_store import S3Location
from server.launcher import TritonServer
from tests.plugins.object_store import BUCKET

ROOT = Path(__file__).resolve().parent.parent


class S3TritonServer(TritonServer):
    """The real tritonserver with `--model-repository=s3://...` (AWS_* from the environment).

    Against a dead endpoint tritonserver retries forever instead of exiting, so the wait for
    readiness is bounded."""

    def __init__(self, url: str, placeholder: Path) -> None:
        super().__init__(placeholder, startup_timeout=120)
        self.url = url

    def command(self) -> list[str]:
        return [f"--model-repository={self.url}" if a.startswith("--model-repository=") else a
                for a in super().command()]


def _msk(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "msk.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)


def _image() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 255, (96, 120), np.uint8)


def test_url_forms_match_tritons():
    aws = S3Location.parse("s3://bucket/a/b")
    assert (aws.endpoint, aws.bucket, aws.prefix) == (None, "bucket", "a/b")
    local = S3Location.parse("s3://127.0.0.1:9000/bucket/a")
    assert local.endpoint == "http://127.0.0.1:9000"
    assert local.triton_url("releases", "x") == "s3://127.0.0.1:9000/bucket/a/releases/x"
    secure = S3Location.parse("s3://https://s3.example.org:443/b/p")
    assert secure.endpoint == "https://s3.example.org:443"
    assert secure.triton_url() == "s3://https://s3.example.org:443/b/p"


def test_publish_then_real_triton_serves_from_s3(s3, tiny_repository, tiny_triton, tmp_path):
    endpoint, client = s3
    url = f"s3://{endpoint}/{BUCKET}/msk/cpu"
    result = _msk("publish", str(tiny_repository), url)
    assert result.returncode == 0, result.stderr
    release = json.loads(result.stdout)
    assert release["repository"] == f"{url}/releases/{release['release']}"
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert f"msk/cpu/releases/{release['release']}.complete.json" in keys
    assert "msk/cpu/releases/{}/mura_ensemble/config.pbtxt".format(release["release"]) in keys
    current = json.loads(client.get_object(Bucket=BUCKET, Key="msk/cpu/CURRENT")["Body"].read())
    assert current["release"] == release["release"]

    # Publishing the same content again uploads nothing.
    again = json.loads(_msk("publish", str(tiny_repository), url).stdout)
    assert again["release"] == release["release"] and again["uploaded"] is False

    with S3TritonServer(release["repository"], tmp_path) as server:
        from_s3 = MuraClient(server.grpc_url).score([_image()])[0]
    local = MuraClient(tiny_triton.grpc_url).score([_image()])[0]
    assert from_s3.error is None, from_s3.error
    assert from_s3.probability == pytest.approx(local.probability, abs=1e-6)


def test_killed_publish_leaves_the_current_release_in_place(s3, repository_copy, tmp_path):
    endpoint, client = s3
    url = f"s3://{endpoint}/{BUCKET}/msk/cpu"
    first = json.loads(_msk("publish", str(repository_copy), url).stdout)
    # A larger second release, killed while its objects are being uploaded.
    (repository_copy / "densenet169_a" / "1" / "weights.bin").write_bytes(
        np.random.default_rng(0).bytes(256 * 1024 * 1024))
    proc = subprocess.Popen([sys.executable, "-m", "msk.cli", "publish", str(repository_copy),
                             url], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    first_keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET)["Contents"]}
    while True:
        keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET)["Contents"]}
        if keys - first_keys:
            break
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET)["Contents"]}
    markers = {k for k in keys if k.endswith(".complete.json")}
    assert markers == {f"msk/cpu/releases/{first['release']}.complete.json"}
    current = json.loads(client.get_object(Bucket=BUCKET, Key="msk/cpu/CURRENT")["Body"].read())
    assert current["release"] == first["release"]


def test_export_to_s3_adds_a_version_on_top_of_the_current_release(s3):
    endpoint, client = s3
    url = f"s3://{endpoint}/{BUCKET}/exported"
    first = _msk("export", "--tiny", "--repository", url)
    assert first.returncode == 0, first.stderr
    one = json.loads(first.stdout.strip().splitlines()[-1])
    assert one["based_on"] is None
    second = _msk("export", "--tiny", "--force", "--repository", url)
    assert second.returncode == 0, second.stderr
    two = json.loads(second.stdout.strip().splitlines()[-1])
    assert two["based_on"] == one["release"] and two["release"] != one["release"]
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET)["Contents"]}
    versions = {k.split("/")[4] for k in keys
                if k.startswith(f"exported/releases/{two['release']}/densenet169_a/")
                and k.count("/") == 5}
    assert versions == {"1", "2"}


@pytest.mark.parametrize("url, message", [
    ("s3://", "no bucket"),
    ("http://x/y", "not an s3:// URL"),
    ("s3://{endpoint}/no-such-bucket/p", "NoSuchBucket"),
])
def test_bad_destination_is_refused_with_reason(s3, tiny_repository, url, message):
    endpoint, _ = s3
    result = _msk("publish", str(tiny_repository), url.format(endpoint=endpoint))
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_not_a_repository_is_refused(s3, tmp_path):
    endpoint, _ = s3
    (tmp_path / "empty").mkdir()
    result = _msk("publish", str(tmp_path / "empty"), f"s3://{endpoint}/{BUCKET}/x")
    assert result.returncode == 2 and "not a model repository" in result.stderr
