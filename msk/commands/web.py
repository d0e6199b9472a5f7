"""`msk web`: the browser interface (upload radiographs, see scores, heatmaps, wrist boxes).

The web process only talks to Triton over gRPC; start the server first (`msk serve`). It binds
127.0.0.1 by default: exposing it beyond this machine is a deliberate `--host` choice.
"""

from __future__ import annotations

import argparse
import logging
import sys

from clients.tls import TlsConfigError, add_tls_arguments, tls_from_args
from msk.commands._args import add_ood_argument
from msk.constants import DEFAULT_GRPC_URL, DEFAULT_HOST, DEFAULT_WEB_PORT

"""Default port of `msk web` (local to this command; the lead may move it to msk.constants)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "web", help="run the web interface (upload images, see scores and heatmaps)",
        description="Serve a web page where radiographs (PNG, JPEG, DICOM) are uploaded and scored "
        "by the MURA ensemble on a running Triton server, with class-activation heatmaps, each "
        "member's probability, a study view and, for wrists, the detected structures. "
        "Research use only.",
    )
    p.add_argument("--port", type=int, default=DEFAULT_WEB_PORT,
                   help=f"HTTP port of the web page (default {DEFAULT_WEB_PORT})")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to bind (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--triton-url", action="append", default=None, metavar="HOST:PORT",
                   help=f"Triton gRPC address (default {DEFAULT_GRPC_URL}); repeat it (or give "
                   "a comma-separated list) for several replicas: requests are spread "
                   "round-robin and fail over to the others when one is down")
    p.add_argument("--log-level", default="info",
                   choices=("critical", "error", "warning", "info", "debug"),
                   help="log level of the web server (logs go to stderr)")
    add_ood_argument(p, default="flag")
    add_tls_arguments(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from clients.failover import url_list
    from clients.web.app import create_app

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        tls = tls_from_args(args)
    except TlsConfigError as exc:
        print(f"msk web: {exc}", file=sys.stderr)
        return 2
    urls = url_list(args.triton_url or [DEFAULT_GRPC_URL])
    app = create_app(urls, tls=tls, ood_policy=args.ood)
    print(f"msk web: http://{args.host}:{args.port}/ (Triton gRPC {', '.join(urls)}; "
          f"out-of-distribution images: {args.ood})",
          file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                access_log=False)
    return 0
