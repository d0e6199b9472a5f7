"""`msk publish`: upload a complete local model repository to object storage as a release.

A release becomes visible (and current) only after every object is uploaded and verified, so a
Triton replica never loads half a version; see `export.object_store` and docs/scale-out.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "publish", help="publish a local model repository to S3-compatible object storage",
        description="Upload a complete model repository (built by `msk export`) to "
        "s3://[HOST:PORT/]BUCKET/PREFIX as an immutable release, verify it, then point "
        "PREFIX/CURRENT at it. Prints the release's Triton --model-repository URL as JSON. "
        "Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION.",
    )
    p.add_argument("repository", type=Path, help="local model repository folder")
    p.add_argument("url", help="s3://BUCKET/PREFIX (AWS) or s3://HOST:PORT/BUCKET/PREFIX "
                   "(S3-compatible endpoint over HTTP; s3://https://HOST:PORT/... for HTTPS)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from export.object_store import ObjectStoreError, publish

    try:
        result = publish(args.repository, args.url)
    except ObjectStoreError as exc:
        print(f"msk publish: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0
