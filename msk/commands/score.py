"""`msk score`: score images, folders, globs, CSV manifests or a MURA tree against Triton.

Machine output: one JSON line per input on stdout (`error` set instead of a result where it
failed); with `--out` the same rows also go to a CSV or JSON-lines file, which `--resume` reads
back to skip what is already there. Progress bar and summary go to stderr.

Scale-out (docs/scale-out.md): several `--url`s are spread over and failed over between;
`--shard i/n` scores one shard of the inputs (a Kubernetes Indexed Job runs n of them) and
`--merge` joins the shard outputs; `--metrics-push` sends the client metrics to a Pushgateway.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clients.tls import TlsConfigError, add_tls_arguments, tls_from_args
from msk.commands._args import add_ood_argument
from msk.constants import (
    DEFAULT_GRPC_URL,
    MURA_ENSEMBLE_MODEL,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "score", help="score radiographs (files, folders, globs, CSV, MURA layout) on Triton",
        description="Score radiographs with the MURA ensemble served by Triton. Prints one JSON "
        "line per input on stdout (an `error` field instead of a result where it failed), a "
        "progress bar and a summary on stderr. Research use only - not a medical device.",
    )
    p.add_argument("inputs", nargs="+", metavar="PATH",
                   help="image files, folders (recursive), glob patterns (quote them), CSV "
                   "manifests (`path` column, optional study/body_part/label; or MURA's "
                   "*_image_paths.csv / *_labeled_studies.csv); with --merge: the shard output "
                   "files ({index} is replaced by 0..N-1 of --shards N)")
    p.add_argument("--url", action="append", default=None, metavar="HOST:PORT",
                   help=f"Triton gRPC address (default {DEFAULT_GRPC_URL}); repeat it (or give "
                   "a comma-separated list) for several replicas: requests are spread over "
                   "them and a failing one is skipped until it answers again")
    p.add_argument("--model", default=MURA_ENSEMBLE_MODEL,
                   help=f"model to call (default {MURA_ENSEMBLE_MODEL})")
    p.add_argument("--out", type=Path, default=None,
                   help="also write rows to FILE: .csv or .jsonl/.ndjson (by extension)")
    p.add_argument("--studies", type=Path, default=None,
                   help="study-level results file (default with --out: <out>.studies.<ext>; "
                   "written when inputs have studies, e.g. the MURA layout)")
    p.add_argument("--concurrency", type=int, default=4, metavar="N",
                   help="requests in flight at once (default 4)")
    p.add_argument("--resume", action="store_true",
                   help="skip images already in --out; rows that failed because the server "
                   "was unavailable are scored again (each image stays in the file once)")
    p.add_argument("--shared-memory", action="store_true",
                   help="pass pixels through Triton system shared memory (server on this host)")
    p.add_argument("--retry-for", type=float, default=300.0, metavar="SECONDS",
                   help="the run's outage budget: while no request succeeds, keep retrying for "
                   "this long, then mark every image left as server_unavailable at once "
                   "(rerun with --resume) (default 300)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="per-request timeout (default 120)")
    p.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                   help="wait this long for the server to be ready before starting (default 30)")
    p.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="expose this client's Prometheus metrics on 127.0.0.1:PORT/metrics")
    p.add_argument("--metrics-push", default=None, metavar="URL",
                   help="push this client's metrics to a Prometheus Pushgateway at URL (e.g. "
                   "http://pushgateway:9091) every 15 s and at the end: for batch jobs that "
                   "end before a scrape")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="score only shard I of N (0 <= I < N; a stable hash of each image's "
                   "path): N workers with I = 0..N-1 cover every image exactly once")
    p.add_argument("--merge", action="store_true",
                   help="merge shard outputs (the PATH arguments) into --out, each image once, "
                   "with its studies file; nothing is scored")
    p.add_argument("--shards", type=int, default=None, metavar="N",
                   help="with --merge: the number of shards, for PATHs containing {index}")
    p.add_argument("--no-stdout", action="store_true",
                   help="do not print rows on stdout (with --out)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_ood_argument(p, default="flag")
    add_tls_arguments(p)
    p.set_defaults(handler=run)


def _studies_path(args: argparse.Namespace) -> Path | None:
    if args.studies is not None:
        return args.studies
    if args.out is None:
        return None
    return args.out.with_name(f"{args.out.stem}.studies{args.out.suffix}")


def _write_studies(args: argparse.Namespace, rows: list[dict],
                   default_threshold: float | None = None) -> tuple[list[dict], Path | None]:
    """Study rows by the one study rule; `default_threshold` is the served model's default
    operating point (mixed body parts), when this run talked to the server."""
    from clients.batch import STUDY_COLUMNS, study_rows
    from clients.outputs import write_rows

    studies_path = _studies_path(args)
    studies = study_rows(rows, default_threshold) if rows else []
    if studies and studies_path is not None:
        write_rows(studies_path, studies, STUDY_COLUMNS)
    return studies, studies_path


def _merge(args: argparse.Namespace) -> int:
    """`--merge`: shard outputs -> one output (+ studies), each image exactly once."""
    import json

    from clients.shards import merge_shards, shard_files

    if args.out is None:
        print("msk score: --merge needs --out (the merged file)", file=sys.stderr)
        return 2
    try:
        files = shard_files(args.inputs, args.shards)
        rows, counts = merge_shards(files, args.out)
    except (OSError, ValueError) as exc:
        print(f"msk score: --merge: {exc}", file=sys.stderr)
        return 2
    studies, studies_path = _write_studies(args, rows)
    counts["studies"] = len(studies)
    print(f"msk score: merged {counts['shards']} shards into {args.out}: {counts['images']} "
          f"images ({counts['errors']} error rows), {counts['duplicates_dropped']} duplicates "
          "dropped" + (f"; {len(studies)} studies -> {studies_path}" if studies else ""),
          file=sys.stderr)
    print("msk score: summary " + json.dumps(counts, sort_keys=True), file=sys.stderr)
    return 1 if counts["errors"] else 0


def run(args: argparse.Namespace) -> int:
    import asyncio
    import json
    import signal

    from tqdm import tqdm

    from clients.batch import BatchScorer, RetryPolicy
    from clients.inputs import expand_inputs
    from clients.outputs import open_sink, output_format, read_rows, stdout_sink
    from clients.shards import Shard

    args.url = args.url or [DEFAULT_GRPC_URL]
    if args.merge:
        return _merge(args)
    shard = None
    if args.shard is not None:
        try:
            shard = Shard.parse(args.shard)
        except ValueError as exc:
            print(f"msk score: {exc}", file=sys.stderr)
            return 2
    if args.concurrency < 1:
        print("msk score: --concurrency must be at least 1", file=sys.stderr)
        return 2
    if args.no_stdout and args.out is None:
        print("msk score: --no-stdout needs --out", file=sys.stderr)
        return 2
    if args.resume and args.out is None:
        print("msk score: --resume needs --out (the file it resumes)", file=sys.stderr)
        return 2
    for path in (args.out, args.studies):
        if path is not None:
            try:
                output_format(path)
            except ValueError as exc:
                print(f"msk score: {exc}", file=sys.stderr)
                return 2
    try:
        tls = tls_from_args(args)
    except TlsConfigError as exc:
        print(f"msk score: {exc}", file=sys.stderr)
        return 2
    if args.metrics_port is not None:
        from clients.telemetry import start_metrics_server

        start_metrics_server(args.metrics_port)
    pusher = None
    if args.metrics_push is not None:
        from clients.metrics_push import MetricsPusher

        pusher = MetricsPusher(args.metrics_push).start()

    items = expand_inputs(args.inputs)
    if shard is not None:
        everything = len(items)
        items = shard.select(items)
        print(f"msk score: shard {shard.index}/{shard.count}: {len(items)} of {everything} "
              "images", file=sys.stderr)
    try:
        sink, kept = open_sink(args.out, resume=args.resume)
    except (OSError, ValueError) as exc:
        print(f"msk score: cannot use {args.out}: {exc}", file=sys.stderr)
        if pusher is not None:
            pusher.stop()               # a batch pod that fails fast still reports
        return 2
    todo = [item for item in items if item.path not in kept]
    skipped = len(items) - len(todo)
    if skipped:
        print(f"msk score: resuming, {skipped} of {len(items)} images already in {args.out}",
              file=sys.stderr)

    scorer = BatchScorer(args.url, concurrency=args.concurrency, model=args.model,
                         shared_memory=args.shared_memory,
                         retry=RetryPolicy(give_up_after_s=args.retry_for),
                         request_timeout_s=args.timeout, tls=tls, ood_policy=args.ood)
    printer = None if args.no_stdout else stdout_sink()
    if todo:
        try:
            asyncio.run(scorer.wait_ready(args.wait))
        except ConnectionError as exc:
            print(f"msk score: {exc}", file=sys.stderr)
            if sink is not None:
                sink.close()
            if pusher is not None:
                pusher.stop()
            return 3
    bar = tqdm(total=len(todo), unit="img", file=sys.stderr, dynamic_ncols=True,
               disable=args.no_progress or not todo, desc="scoring")
    errors = 0
    collected: list[dict] = []  # rows for study aggregation when there is no --out to re-read

    def on_row(row: dict) -> None:
        nonlocal errors
        if args.out is None and row.get("study"):
            collected.append(row)
        if printer is not None:
            printer.write(row)
        errors += bool(row["error"])
        bar.update(1)
        if errors:
            bar.set_postfix(errors=errors, refresh=False)

    # SIGTERM (docker stop, a scheduler's kill) ends the run like Ctrl-C: rows written so far are
    # kept and shared-memory regions are unregistered and removed. It is turned into SIGINT,
    # whose handler asyncio.run installs: that cancels the run's main task from the event loop.
    # Raising KeyboardInterrupt straight from a SIGTERM handler instead interrupted whatever
    # code ran (gRPC's own callbacks included) and once left a run hanging, pending forever.
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    write_failed = False
    try:
        summary = asyncio.run(scorer.run(todo, sink, on_row=on_row, skipped=skipped))
    except KeyboardInterrupt:
        print("msk score: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    except OSError as exc:      # ENOSPC, EFBIG (ulimit -f), EIO: the output cannot grow
        write_failed = True
        print(f"msk score: cannot write {exc.filename or args.out or 'the output'}: "
              f"{exc.strerror or exc}; the rows written so far are kept - make room, then rerun "
              "with --resume", file=sys.stderr)
        return 4
    finally:
        bar.close()
        if sink is not None:
            try:
                sink.close()
            except OSError:
                if not write_failed:
                    raise
        if pusher is not None:
            pusher.stop()

    rows = read_rows(args.out) if args.out is not None else collected
    studies, studies_path = _write_studies(args, rows, scorer.default_threshold)
    summary.studies = len(studies)  # type: ignore[attr-defined]
    report = summary.to_json()  # type: ignore[attr-defined]
    print(
        f"msk score: {report['scored']} scored, {report['errors']} errors, "
        f"{report['skipped_resume']} skipped (resume), {report['retries']} retries, "
        f"{report['images_per_s'] or 0:.2f} images/s over {report['elapsed_s']:.1f} s"
        + (f"; {len(studies)} studies -> {studies_path}" if studies and studies_path else ""),
        file=sys.stderr,
    )
    for reason, count in sorted(report["errors_by_reason"].items()):
        print(f"msk score:   {reason}: {count}", file=sys.stderr)
    if report["overload_rejections"]:
        print(f"msk score: the server rejected {report['overload_rejections']} requests as "
              "overloaded; they were backed off and retried", file=sys.stderr)
    if len(report["endpoints"]) > 1:
        spread = ", ".join(f"{u}: {e['ok']} ok, {e['failed_attempts']} failed attempts"
                           for u, e in report["endpoints"].items())
        print(f"msk score: endpoints: {spread}", file=sys.stderr)
    note = summary.outage_note()  # type: ignore[attr-defined]
    if note:
        print(f"msk score: {note}", file=sys.stderr)
    print("msk score: summary " + json.dumps(report, sort_keys=True), file=sys.stderr)
    return 1 if report["errors"] else 0
