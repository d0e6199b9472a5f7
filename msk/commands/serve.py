"""`msk serve`: run the local tritonserver in the foreground until SIGTERM or Ctrl-C.

The server is supervised (`server.supervisor`): an unexpected exit is reported with its cause and
the server restarted with backoff (unless `--no-restart`), and tritonserver dies with `msk serve`
whatever signal ends it (`server/guard.py`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from msk.constants import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HOST,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    DEFAULT_SUPERVISOR_METRICS_PORT,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="run the local Triton server (CPU) in the foreground",
        description="Start the official tritonserver binary on 127.0.0.1 with a model repository, "
        "wait until every model is ready, and keep serving until SIGTERM or Ctrl-C (then shut "
        "down cleanly, leaving no process or /dev/shm region behind). Latency quantiles are "
        "enabled on the metrics port.",
    )
    p.add_argument("--repository", type=Path, default=Path("model_repository"),
                   help="model repository to serve (default: ./model_repository)")
    p.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT,
                   help=f"gRPC port (default {DEFAULT_GRPC_PORT}; 0 picks a free port)")
    p.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT,
                   help=f"HTTP port (default {DEFAULT_HTTP_PORT}; 0 picks a free port)")
    p.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT,
                   help=f"Prometheus metrics port (default {DEFAULT_METRICS_PORT}; 0 = free)")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to bind (default 127.0.0.1; widen only behind a firewall)")
    p.add_argument("--startup-timeout", type=float, default=600.0,
                   help="seconds to wait for every model to be ready (default 600)")
    p.add_argument("--no-restart", action="store_true",
                   help="exit (code 1) when tritonserver dies instead of restarting it with "
                   "backoff")
    p.add_argument("--supervisor-metrics-port", type=int,
                   default=DEFAULT_SUPERVISOR_METRICS_PORT,
                   help="Prometheus endpoint of msk serve itself: msk_serve_triton_restarts_total"
                   f", msk_serve_triton_up (default {DEFAULT_SUPERVISOR_METRICS_PORT}; 0 picks "
                   "a free port; -1 turns it off)")
    p.set_defaults(handler=run)


def _models_without_versions(repository: Path) -> list[str]:
    """Models whose config is present but which have no numbered version folder."""
    return sorted(
        cfg.parent.name for cfg in repository.glob("*/config.pbtxt")
        if not any(p.is_dir() and p.name.isdigit() for p in cfg.parent.iterdir())
    )


def run(args: argparse.Namespace) -> int:
    from export.consistency import repository_problems
    from server.launcher import ServerStartError, TritonServer, free_port
    from server.supervisor import Supervisor, SupervisorMetrics

    if not args.repository.is_dir():
        print(f"msk serve: repository folder {args.repository} does not exist; build one with "
              "`msk export` (or `make demo`)", file=sys.stderr)
        return 1
    missing = _models_without_versions(args.repository)
    if missing:
        print(f"msk serve: {args.repository} has configs but no model files for "
              f"{', '.join(missing)}; build them first with `msk export --repository "
              f"{args.repository}` (or `make demo`)", file=sys.stderr)
        return 1
    problems = repository_problems(args.repository, verify_hashes=False)
    if problems:
        print(f"msk serve: {args.repository} is inconsistent, not serving it:\n  - "
              + "\n  - ".join(problems) + "\n(`msk doctor` checks it in full)", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = TritonServer(args.repository, grpc_port=args.grpc_port, http_port=args.http_port,
                          metrics_port=args.metrics_port, host=args.host, foreground=True,
                          startup_timeout=args.startup_timeout)
    metrics = SupervisorMetrics()
    metrics_note = ""
    if args.supervisor_metrics_port >= 0:
        port = args.supervisor_metrics_port or free_port(args.host)
        try:
            metrics.serve(port, args.host)
        except OSError as exc:
            print(f"msk serve: cannot serve the supervisor metrics on {args.host}:{port} "
                  f"({exc.strerror}); pick another --supervisor-metrics-port, or -1",
                  file=sys.stderr)
            return 1
        metrics_note = f"  supervisor-metrics=http://{args.host}:{port}/metrics"

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def ready() -> None:
        say(f"msk serve: ready  grpc={server.grpc_url}  http={server.http_url}  "
            f"metrics={server.metrics_url}{metrics_note}")

    supervisor = Supervisor(server, restart=not args.no_restart, metrics=metrics, say=say)
    try:
        code = supervisor.run(stop, on_ready=ready)
    except ServerStartError as exc:
        say(f"msk serve: {exc}")
        return 1
    if code == 0:
        say("msk serve: stopped")
    return code
