"""Publish a complete local model repository to object storage (S3 or S3-compatible).

Why releases: object storage has no rename, so a version directory cannot *appear* at once; a
Triton pod that starts while files are being uploaded would load a half-written version. Instead
every publish writes an immutable release under `<prefix>/releases/<id>/` (id = hash of the
repository's content), verifies that every object arrived with its size, and only then writes
the two small objects that make it visible, each a single atomic PUT:

    <prefix>/releases/<id>.complete.json   what the release holds (paths, sizes, sha256)
    <prefix>/CURRENT                        {"release": id, "repository": <Triton URL>}

Triton is pointed at the release (`--model-repository=s3://HOST:PORT/BUCKET/<prefix>/releases/
<id>`, e.g. through the Kubernetes ConfigMap); a pod never sees a release that is not complete,
and rolling to a new one is a Deployment rollout. Publishing the same content again is a no-op.

URLs use Triton's own form: `s3://BUCKET/PREFIX` (AWS) or `s3://HOST:PORT/BUCKET/PREFIX` (any
S3-compatible endpoint, HTTP; `s3://https://HOST:PORT/...` for HTTPS). Credentials come from the
usual AWS_* variables, read by boto3 and by tritonserver alike.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EMPTY_DIR_MARKER = ".msk-keep"
"""Object storage has no empty folders; an ensemble's version folder gets this empty file."""
_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-]+:\d+$")


class ObjectStoreError(RuntimeError):
    """The URL, the credentials or the bucket is not usable; the message says which."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str
    endpoint: str | None = None
    """`http(s)://HOST:PORT` for an S3-compatible server, None for AWS."""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        if not url.startswith("s3://"):
            raise ObjectStoreError(f"{url}: not an s3:// URL")
        rest = url.removeprefix("s3://")
        scheme = "http"
        for candidate in ("https://", "http://"):
            if rest.startswith(candidate):
                scheme, rest = candidate.removesuffix("://"), rest.removeprefix(candidate)
        parts = [p for p in rest.split("/") if p]
        endpoint = None
        if parts and _HOST_PORT.match(parts[0]):
            endpoint = f"{scheme}://{parts.pop(0)}"
        if not parts:
            raise ObjectStoreError(f"{url}: no bucket (expected s3://[HOST:PORT/]BUCKET/PREFIX)")
        return cls(bucket=parts[0], prefix="/".join(parts[1:]), endpoint=endpoint)

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))

    def triton_url(self, *parts: str) -> str:
        """The `--model-repository` value for tritonserver."""
        host = ""
        if self.endpoint:
            scheme, _, address = self.endpoint.partition("://")
            host = f"{'https://' if scheme == 'https' else ''}{address}/"
        return f"s3://{host}{self.bucket}/{self.key(*parts)}".rstrip("/")


def client(location: S3Location) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=location.endpoint,
                        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                        config=Config(connect_timeout=10, read_timeout=60,
                                      retries={"max_attempts": 3, "mode": "standard"}))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def repository_files(repository: Path) -> list[dict[str, Any]]:
    """Every file of a repository (relative path, size, sha256), empty folders as markers.

    Hidden entries (build markers, staging folders of an interrupted export) are not part of
    a repository and are left out.
    """
    repository = Path(repository)
    if not repository.is_dir():
        raise ObjectStoreError(f"{repository}: not a model repository folder")
    entries: list[dict[str, Any]] = []
    for root, dirs, files in os.walk(repository):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_root = Path(root).relative_to(repository)
        visible = sorted(f for f in files if not f.startswith("."))
        for name in visible:
            path = Path(root) / name
            entries.append({"path": (rel_root / name).as_posix(), "bytes": path.stat().st_size,
                             "sha256": _sha256(path), "source": path})
        if not visible and not dirs and rel_root != Path("."):
            entries.append({"path": (rel_root / EMPTY_DIR_MARKER).as_posix(), "bytes": 0,
                            "sha256": hashlib.sha256(b"").hexdigest(), "source": None})
    if not any(e["path"].endswith("config.pbtxt") for e in entries):
        raise ObjectStoreError(f"{repository}: no config.pbtxt in it; not a model repository")
    return entries


def release_id(entries: list[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for e in entries:
        digest.update(f"{e['path']}\0{e['sha256']}\n".encode())
    return digest.hexdigest()[:16]


def _exists(s3: Any, bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def _listing(s3: Any, bucket: str, prefix: str) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            sizes[obj["Key"]] = obj["Size"]
    return sizes


def _check_bucket(s3: Any, location: S3Location, url: str) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        s3.head_bucket(Bucket=location.bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        reason = "NoSuchBucket: it does not exist" if code in ("404", "NoSuchBucket") else exc
        raise ObjectStoreError(f"{url}: bucket {location.bucket!r}: {reason}") from exc
    except BotoCoreError as exc:
        raise ObjectStoreError(f"{url}: {exc}") from exc


def publish(repository: Path, url: str, s3: Any | None = None) -> dict[str, Any]:
    """Upload `repository` as a release under `url`, verify it, then make it current."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    location = S3Location.parse(url)
    entries = repository_files(repository)
    rid = release_id(entries)
    base = location.key("releases", rid)
    marker = location.key("releases", f"{rid}.complete.json")
    s3 = s3 or client(location)
    _check_bucket(s3, location, url)
    result = {"release": rid, "repository": location.triton_url("releases", rid),
              "files": len(entries), "bytes": sum(e["bytes"] for e in entries)}
    try:
        if _exists(s3, location.bucket, marker):
            result["uploaded"] = False
        else:
            for e in entries:
                key = f"{base}/{e['path']}"
                if e["source"] is None:
                    s3.put_object(Bucket=location.bucket, Key=key, Body=b"")
                else:
                    s3.upload_file(str(e["source"]), location.bucket, key)
            listed = _listing(s3, location.bucket, base + "/")
            wrong = [e["path"] for e in entries if listed.get(f"{base}/{e['path']}") != e["bytes"]]
            if wrong:
                raise ObjectStoreError(f"{url}: release {rid} incomplete after upload "
                                       f"({len(wrong)} objects missing or short, e.g. {wrong[0]})"
                                       "; it was not made current")
            manifest = {"release": rid, "created": time.time(), "repository":
                        result["repository"], "files": [{k: e[k] for k in ("path", "bytes",
                                                                           "sha256")}
                                                        for e in entries]}
            s3.put_object(Bucket=location.bucket, Key=marker,
                          Body=json.dumps(manifest, indent=1).encode())
            result["uploaded"] = True
        s3.put_object(Bucket=location.bucket, Key=location.key("CURRENT"),
                      Body=json.dumps({"release": rid, "repository": result["repository"]})
                      .encode())
    except (ClientError, BotoCoreError, Boto3Error) as exc:
        raise ObjectStoreError(f"{url}: {exc}") from exc
    return result


def current_release(url: str, s3: Any | None = None) -> dict[str, Any] | None:
    """The release `<prefix>/CURRENT` points at, or None when nothing was published yet."""
    from botocore.exceptions import BotoCoreError, ClientError

    location = S3Location.parse(url)
    s3 = s3 or client(location)
    _check_bucket(s3, location, url)
    try:
        if not _exists(s3, location.bucket, location.key("CURRENT")):
            return None
        body = s3.get_object(Bucket=location.bucket, Key=location.key("CURRENT"))["Body"].read()
    except (ClientError, BotoCoreError) as exc:
        raise ObjectStoreError(f"{url}: {exc}") from exc
    return json.loads(body)


def download_current(url: str, destination: Path, s3: Any | None = None) -> str | None:
    """Copy the current release into `destination` (to add a version to it); its id or None."""
    from botocore.exceptions import BotoCoreError, ClientError

    location = S3Location.parse(url)
    s3 = s3 or client(location)
    current = current_release(url, s3)
    if current is None:
        return None
    base = location.key("releases", current["release"]) + "/"
    try:
        for key in _listing(s3, location.bucket, base):
            target = destination / key.removeprefix(base)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.name == EMPTY_DIR_MARKER:
                continue
            s3.download_file(location.bucket, key, str(target))
    except (ClientError, BotoCoreError) as exc:
        raise ObjectStoreError(f"{url}: {exc}") from exc
    return current["release"]
