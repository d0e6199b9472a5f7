"""`msk detect`: wrist structure boxes for radiographs, via the `wrist_detect` Triton ensemble.

One JSON line per input on stdout: the shared row fields (`input`, `error`, `error_reason`,
`versions`, `latency_s`, `notice`; see `clients.rows`), then `boxes` [class, score, x1, y1, x2,
y2 in original pixels]; logs go to stderr. A bad input (including a folder or pattern that
holds no images) gets a row with an `error` and the rest go on; the exit status is 1 when any
input failed. Images are read by the one radiograph reader (`msk.imaging`), with its limits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clients.tls import TlsConfigError, add_tls_arguments, tls_from_args
from msk.constants import DEFAULT_GRPC_URL, WRIST_DETECT_MODEL


def _run(args: argparse.Namespace) -> int:
    from clients.errors import Reason
    from clients.inputs import expand_inputs
    from clients.overlay import overlay_png
    from clients.wrist import WristClient, WristResult
    from msk.imaging import load_grayscale

    # The one input expansion of every client (files, folders, globs, CSV manifests; repeats
    # dropped), the same as `msk score`.
    inputs = [(item.path, item.error) for item in expand_inputs(args.inputs)]
    if not inputs:
        print("msk detect: no inputs", file=sys.stderr)
        return 2
    try:
        tls = tls_from_args(args)
    except TlsConfigError as exc:
        print(f"msk detect: {exc}", file=sys.stderr)
        return 2
    failed = 0
    with WristClient(args.url or [DEFAULT_GRPC_URL], model=args.model, timeout_s=args.timeout,
                     tls=tls) as client:
        for n, (source, error) in enumerate(inputs):
            result = (WristResult(source=source, error=error,
                                  error_reason=Reason.INPUT_NOT_FOUND) if error else
                      client.detect([source])[0])
            if result.error is None and args.overlay_dir:
                out = Path(args.overlay_dir) / f"{n:04d}_{Path(source).stem}.png"
                overlay_png(load_grayscale(source), result.detections, out)
                result_json = {**result.to_json(), "overlay": str(out)}
            else:
                result_json = result.to_json()
            failed += result.error is not None
            print(json.dumps(result_json), flush=True)
    if failed:
        print(f"msk detect: {failed} of {len(inputs)} inputs failed", file=sys.stderr)
    return 1 if failed else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "detect", help="detect wrist structures (joints and carpal bones) in radiographs",
        description="Send radiographs to the wrist_detect Triton ensemble and print one JSON line "
        "per input with boxes in original pixels. Research use only.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files (PNG/JPEG/TIFF 8 or 16 bit, DICOM), folders or glob patterns")
    p.add_argument("--url", action="append", default=None, metavar="HOST:PORT",
                   help=f"Triton gRPC address (default {DEFAULT_GRPC_URL}); repeat it (or give "
                   "a comma-separated list) for several replicas: requests are spread "
                   "round-robin and fail over to the others when one is down")
    p.add_argument("--model", default=WRIST_DETECT_MODEL,
                   help=f"ensemble name (default {WRIST_DETECT_MODEL})")
    p.add_argument("--overlay-dir", default=None,
                   help="write a PNG with labelled boxes per image into this folder")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait for each inference (default 120)")
    add_tls_arguments(p)
    p.set_defaults(handler=_run)
