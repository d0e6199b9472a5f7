"""`msk serve`: the guarded Triton server in the foreground until SIGTERM or Ctrl-C.

A thin argument parser over `server.serve` (the one composition of tritonserver's command line,
the front door, the supervisor and the release workarounds); the server image, compose and
Kubernetes run exactly this command.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from msk.constants import DEFAULT_GRPC_PORT, DEFAULT_HOST, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="run the guarded Triton server in the foreground",
        description="Start tritonserver with a model repository behind msk serve's front door, "
        "wait until every model is ready, and keep serving until SIGTERM or Ctrl-C (then shut "
        "down cleanly, leaving no process or /dev/shm region behind). gRPC goes through a guard "
        "that refuses oversized or overflowing tensor shapes; HTTP answers health and metadata "
        "only unless --http-inference; the metrics port serves Triton's metrics (with latency "
        "quantiles) and msk serve's own. A model whose process died, or a crashed server, is "
        "restarted (msk_serve_triton_restarts_total). Workarounds for bugs of the running "
        "Triton release are on only where that release needs them (server/workarounds.py).",
    )
    p.add_argument("--repository", type=_repository, default=Path("model_repository"),
                   help="model repository to serve: a folder, or s3://HOST:PORT/BUCKET/PATH "
                   "read by tritonserver itself (default: ./model_repository)")
    p.add_argument("--target", choices=("cpu", "gpu"), default="cpu",
                   help="cpu: the embedded default; gpu: NVIDIA's container on a GPU host with "
                   "the `msk export --target gpu` repository (default cpu)")
    p.add_argument("--runtime", choices=("auto", "wheel", "container"), default="auto",
                   help="which tritonserver: NVIDIA's container install (/opt/tritonserver) "
                   "where present, else the nvidia-pytriton wheel's (default auto)")
    p.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT,
                   help=f"gRPC port (default {DEFAULT_GRPC_PORT}; 0 picks a free port)")
    p.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT,
                   help=f"HTTP port (default {DEFAULT_HTTP_PORT}; 0 picks a free port)")
    p.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT,
                   help=f"Prometheus metrics port: Triton's and msk serve's own (default "
                   f"{DEFAULT_METRICS_PORT}; 0 picks a free port)")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to bind (default 127.0.0.1; widen only behind a firewall)")
    p.add_argument("--startup-timeout", type=float, default=600.0,
                   help="seconds to wait for every model to be ready (default 600)")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="on SIGTERM: readiness turns false and new requests are refused at "
                   "once; requests in flight get this many seconds to finish before "
                   "tritonserver stops (default 30)")
    p.add_argument("--no-restart", action="store_true",
                   help="exit (code 1) when tritonserver dies instead of restarting it with "
                   "backoff")
    p.add_argument("--http-inference", action="store_true",
                   help="also accept inference over HTTP (default: HTTP answers health and "
                   "metadata only; inference, model control and shared memory go over gRPC)")
    p.add_argument("--allow-client-shm", action="store_true",
                   help="let clients pass images through system shared memory (msk score "
                   "--shared-memory; same host only). Off by default, as in Triton 26.0x: a "
                   "client may then register only its own regions, never the server's")
    p.add_argument("--print-command", action="store_true",
                   help="print (JSON) the tritonserver command line and the front door this "
                   "invocation would run, and exit; starts nothing")
    tls = p.add_argument_group("gRPC TLS (terminated by msk serve's gRPC guard)")
    tls.add_argument("--tls-cert", type=Path, default=None, metavar="PEM",
                     help="serve gRPC over TLS with this server certificate (PEM); needs "
                     "--tls-key")
    tls.add_argument("--tls-key", type=Path, default=None, metavar="PEM",
                     help="private key (PEM) of --tls-cert")
    tls.add_argument("--tls-ca", type=Path, default=None, metavar="PEM",
                     help="mutual TLS: accept only clients whose certificate this CA signed")
    p.set_defaults(handler=run)


def config_from(args: argparse.Namespace):
    """The `server.serve.ServeConfig` of parsed arguments (raises ServeError/ValueError)."""
    from server.exposure import ServerTls
    from server.serve import ServeConfig

    tls = None
    if args.tls_cert or args.tls_key or args.tls_ca:
        if not (args.tls_cert and args.tls_key):
            raise ValueError("--tls-cert and --tls-key are both needed to serve gRPC over TLS")
        tls = ServerTls(cert=args.tls_cert, key=args.tls_key, ca=args.tls_ca)
    return ServeConfig(repository=args.repository, target=args.target, host=args.host,
                       grpc_port=args.grpc_port, http_port=args.http_port,
                       metrics_port=args.metrics_port, http_inference=args.http_inference,
                       allow_client_shm=args.allow_client_shm,
                       tls=tls, startup_timeout=args.startup_timeout,
                       drain_timeout=args.drain_timeout, restart=not args.no_restart,
                       runtime=args.runtime)


def _repository(text: str) -> Path | str:
    from server.launcher import is_remote

    return text if is_remote(text) else Path(text)


def _inconsistencies(repository: Path | str) -> list[str]:
    """The manifest-level check of a local repository (export's), before anything starts."""
    from export.consistency import repository_problems
    from server.launcher import is_remote

    if is_remote(repository) or not Path(repository).is_dir():
        return []                     # remote: Triton reads it; missing: serve() says so
    return repository_problems(repository, verify_hashes=False)


def run(args: argparse.Namespace) -> int:
    from server.serve import ServeError, print_command, serve

    try:
        config = config_from(args)
    except (ServeError, ValueError, FileNotFoundError) as exc:
        print(f"msk serve: {exc}", file=sys.stderr)
        return 2
    if args.print_command:
        print(json.dumps(print_command(config), indent=2))
        return 0
    problems = _inconsistencies(config.repository)
    if problems:
        print(f"msk serve: {config.repository} is inconsistent, not serving it:\n  - "
              + "\n  - ".join(problems) + "\n(`msk doctor` checks it in full)", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        code = serve(config, stop, say=say)
    except ServeError as exc:
        say(f"msk serve: {exc}")
        return 1
    if code == 0:
        say("msk serve: stopped")
    return code
