"""`msk demo`: build the demo repository, start the local Triton server, score sample images."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from msk import RESEARCH_USE_NOTICE


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="end-to-end demo: build models, start Triton, score sample images",
        description="Build the demo model repository (the four-member MURA ensemble with "
        "UNTRAINED, seeded weights: the scores are meaningless until trained checkpoints are "
        "exported), start tritonserver on free local ports, score the synthetic sample images over "
        "gRPC and print one JSON line per image. " + RESEARCH_USE_NOTICE,
    )
    p.add_argument("--repository", type=Path, default=Path("model_repository"),
                   help="repository to build/use (default: ./model_repository)")
    p.add_argument("--samples", type=Path, default=Path("samples"),
                   help="folder for the synthetic sample images (default: ./samples)")
    p.add_argument("images", nargs="*", type=Path,
                   help="your own images to score as well (PNG/JPEG, 8/16-bit, gray or RGB)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from clients.mura import MuraClient
    from export.repository import build_repository
    from msk.samples import write_samples
    from server.launcher import TritonServer

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    print(f"msk demo: {RESEARCH_USE_NOTICE}", file=sys.stderr)
    print("msk demo: building the demo repository (untrained weights: scores are NOT "
          "meaningful)...", file=sys.stderr, flush=True)
    build_repository(args.repository)
    images = write_samples(args.samples) + list(args.images)
    print("msk demo: starting tritonserver...", file=sys.stderr, flush=True)
    with TritonServer(args.repository) as server:
        print(f"msk demo: ready on grpc {server.grpc_url}; scoring {len(images)} images",
              file=sys.stderr, flush=True)
        with MuraClient(server.grpc_url) as client:
            results = client.score(images, heatmaps=False)
    for result in results:
        print(json.dumps(result.to_json()), flush=True)
    failed = sum(not r.ok for r in results)
    return 1 if failed == len(results) else 0
