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
import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clients.tls import GrpcTls, TlsConfigError, add_tls_arguments, tls_from_args
from msk.commands._args import add_ood_argument
from msk.constants import (
    DEFAULT_GRPC_URL,
    MURA_ENSEMBLE_MODEL,
)

if TYPE_CHECKING:
    from clients.batch import Summary
    from clients.inputs import ScoreItem
    from clients.outputs import Sink
    from clients.shards import Shard


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


class UsageError(ValueError):
    """A flag or combination of flags that cannot work: exit 2 before anything starts."""


@dataclass(frozen=True)
class ScorePlan:
    """What a run will do, decided before any request: the images still to score, how many the
    output already holds (`--resume`), where rows go."""

    todo: list[ScoreItem]
    skipped: int
    output: _Output | None
    """The `--out` file (None: stdout only)."""


@dataclass(frozen=True)
class ScoreOutcome:
    """A run that went to the end: what the report and the studies file need."""

    summary: Summary
    default_threshold: float | None
    """The served model's default operating point (mixed body parts)."""
    collected: list[dict]
    """The rows with a study, when there is no `--out` to read them back from."""


def run(args: argparse.Namespace) -> int:
    """validate -> plan -> score -> report; everything opened on the way (metrics pusher,
    output file, progress bar) is closed in one place, the ExitStack, whatever the exit."""
    args.url = args.url or [DEFAULT_GRPC_URL]
    if args.merge:
        return _merge(args)
    try:
        shard, tls = _validate(args)
    except UsageError as exc:
        print(f"msk score: {exc}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as cleanup:
        _start_metrics(args, cleanup)
        try:
            plan = _plan(args, shard, cleanup)
        except UsageError as exc:
            print(f"msk score: {exc}", file=sys.stderr)
            return 2
        outcome = _score(args, plan, tls, cleanup)
    if isinstance(outcome, int):
        return outcome
    return _report(args, outcome)


def _validate(args: argparse.Namespace) -> tuple[Shard | None, GrpcTls | None]:
    """The flags, checked before anything starts; UsageError says what is wrong."""
    from clients.outputs import output_format
    from clients.shards import Shard

    def checked(parse: Callable[[Any], Any], value: object) -> Any:
        try:
            return parse(value)
        except (ValueError, TlsConfigError) as exc:
            raise UsageError(str(exc)) from exc

    shard = None if args.shard is None else checked(Shard.parse, args.shard)
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    if args.no_stdout and args.out is None:
        raise UsageError("--no-stdout needs --out")
    if args.resume and args.out is None:
        raise UsageError("--resume needs --out (the file it resumes)")
    for path in (args.out, args.studies):
        if path is not None:
            checked(output_format, path)
    return shard, checked(tls_from_args, args)


def _start_metrics(args: argparse.Namespace, cleanup: contextlib.ExitStack) -> None:
    """The metrics endpoint and the Pushgateway pusher (stopped by `cleanup`, so that a batch
    pod that fails fast still reports)."""
    if args.metrics_port is not None:
        from clients.telemetry import start_metrics_server

        start_metrics_server(args.metrics_port)
    if args.metrics_push is not None:
        from clients.metrics_push import MetricsPusher

        cleanup.callback(MetricsPusher(args.metrics_push).start().stop)


def _plan(args: argparse.Namespace, shard: Shard | None, cleanup: contextlib.ExitStack
          ) -> ScorePlan:
    """The inputs (this shard's), the output opened (closed by `cleanup`) and what it already
    holds; UsageError when the output cannot be used."""
    from clients.inputs import expand_inputs
    from clients.outputs import open_sink

    items = expand_inputs(args.inputs)
    if shard is not None:
        everything = len(items)
        items = shard.select(items)
        print(f"msk score: shard {shard.index}/{shard.count}: {len(items)} of {everything} "
              "images", file=sys.stderr)
    try:
        sink, kept = open_sink(args.out, resume=args.resume)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot use {args.out}: {exc}") from exc
    output = None if sink is None else _Output(sink)
    if output is not None:
        cleanup.callback(output.close)
    todo = [item for item in items if item.path not in kept]
    skipped = len(items) - len(todo)
    if skipped:
        print(f"msk score: resuming, {skipped} of {len(items)} images already in {args.out}",
              file=sys.stderr)
    return ScorePlan(todo, skipped, output)


class _Output:
    """The `--out` sink and whether writing it failed: then a second failure while closing it
    (the same full disk) is not raised over the first, already reported."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.write_failed = False

    def close(self) -> None:
        try:
            self.sink.close()
        except OSError:
            if not self.write_failed:
                raise


def _score(args: argparse.Namespace, plan: ScorePlan, tls: GrpcTls | None,
           cleanup: contextlib.ExitStack) -> int | ScoreOutcome:
    """Wait for the server, score `plan.todo` into the output; an exit code when the run ends
    early."""
    import asyncio
    import signal

    from tqdm import tqdm

    from clients.batch import BatchScorer, RetryPolicy
    from clients.outputs import stdout_sink

    scorer = BatchScorer(args.url, concurrency=args.concurrency, model=args.model,
                         shared_memory=args.shared_memory,
                         retry=RetryPolicy(give_up_after_s=args.retry_for),
                         request_timeout_s=args.timeout, tls=tls, ood_policy=args.ood)
    printer = None if args.no_stdout else stdout_sink()
    if plan.todo:
        try:
            asyncio.run(scorer.wait_ready(args.wait))
        except ConnectionError as exc:
            print(f"msk score: {exc}", file=sys.stderr)
            return 3
    bar = cleanup.enter_context(tqdm(total=len(plan.todo), unit="img", file=sys.stderr,
                                     dynamic_ncols=True, desc="scoring",
                                     disable=args.no_progress or not plan.todo))
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
    try:
        summary = asyncio.run(scorer.run(plan.todo, plan.output and plan.output.sink,
                                         on_row=on_row, skipped=plan.skipped))
    except KeyboardInterrupt:
        print("msk score: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    except OSError as exc:      # ENOSPC, EFBIG (ulimit -f), EIO: the output cannot grow
        print(f"msk score: cannot write {exc.filename or args.out or 'the output'}: "
              f"{exc.strerror or exc}; the rows written so far are kept - make room, then rerun "
              "with --resume", file=sys.stderr)
        if plan.output is not None:
            plan.output.write_failed = True
        return 4
    return ScoreOutcome(summary, scorer.default_threshold, collected)


def _report(args: argparse.Namespace, outcome: ScoreOutcome) -> int:
    """The studies file and the summary on stderr; exit 1 when any image failed."""
    import json

    from clients.outputs import read_rows

    summary = outcome.summary
    rows = read_rows(args.out) if args.out is not None else outcome.collected
    studies, studies_path = _write_studies(args, rows, outcome.default_threshold)
    summary.studies = len(studies)
    report = summary.to_json()
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
    note = summary.outage_note()
    if note:
        print(f"msk score: {note}", file=sys.stderr)
    print("msk score: summary " + json.dumps(report, sort_keys=True), file=sys.stderr)
    return 1 if report["errors"] else 0
