"""`msk bench`: measure this host against your model repository through `msk serve`'s front door.

Why a subcommand: capacity depends on the host (cores, ISA) and on the export (precision,
runtime, threads), and the README's figures come from one 2-core AVX2 machine. This runs what
production runs (`server.serve.front_door`: the guarded server, never a bare tritonserver) on
free loopback ports and reports, from one run: the matrix-product peak, per repository its
p50/p99 at concurrency 1 and at --concurrency, images/s and images per hour per core, the share
of the peak where that comparison is honest, and recommended `--cpu-cores`, `--cpu-runtime`
and replica count, each with its reason.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from msk.capacity import DEFAULT_UTILISATION
from msk.commands._args import fraction, positive_float, positive_int

DEFAULT_CONCURRENCY = 8
"""What bench/bench_mura.py and the README's capacity table measure at."""


@dataclass(frozen=True)
class Plan:
    """How much to measure: `--short` is for a first look and for tests, not for sizing."""

    peak_size: int
    peak_repeats: int
    images: int
    alone_requests: int
    busy_requests: int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="measure this host's capacity with your model repository",
        description="Start the guarded server (what `msk serve` runs) on free loopback ports "
        "for each --repository, send synthetic radiograph-sized images through its front door "
        "and report: this host (CPU, ISA, cores), numpy's FP32 matrix-product peak, each "
        "repository's precision and runtime per backbone, p50/p99 latency at concurrency 1 "
        "and at --concurrency, images/s and images per hour per core, and the recommended "
        "--cpu-cores, --cpu-runtime and replica count with their reasons. A progress bar goes "
        "to stderr, the summary to stdout. A repository serves the precision it was exported "
        "with: pass an FP32 and an INT8 export to compare them; BF16 needs a host with native "
        "BF16 (AMX-BF16, AVX-512 BF16) and an export at that precision. Research software, "
        "not a medical device.",
    )
    p.add_argument("--repository", type=Path, action="append", default=None, metavar="DIR",
                   help="model repository to measure (default: ./model_repository); repeat to "
                   "compare, e.g. an FP32 and an INT8 export, or one exported with "
                   "--cpu-runtime openvino")
    p.add_argument("--concurrency", type=positive_int, default=DEFAULT_CONCURRENCY,
                   metavar="N", help="requests in flight for the throughput and p50/p99 "
                   f"measurement (default {DEFAULT_CONCURRENCY}; concurrency 1 is always "
                   "measured too)")
    p.add_argument("--requests", type=positive_int, default=None, metavar="N",
                   help="requests per repository at --concurrency (default 8 x --concurrency, "
                   "2 x with --short); more requests make p99 steadier")
    p.add_argument("--short", action="store_true",
                   help="a quick run (a 1024^3 peak, fewer requests): a first look, not a "
                   "sizing measurement")
    p.add_argument("--json", type=Path, default=None, metavar="FILE",
                   help="also write every number, the host and the versions as JSON to FILE "
                   "(written atomically; its folder is created)")
    p.add_argument("--target-images-per-hour", type=positive_float, default=None,
                   metavar="N", help="peak-hour load to size for: the report then recommends a "
                   "replica count (replicas like this host, plus one spare)")
    p.add_argument("--utilisation", type=fraction, default=DEFAULT_UTILISATION,
                   metavar="RHO", help="target utilisation of each replica for the replica "
                   f"count (default {DEFAULT_UTILISATION}, docs/scale-out.md)")
    p.set_defaults(handler=run)


def plan_for(args: argparse.Namespace) -> Plan:
    from msk.flops import PEAK_SIZE, SHORT_PEAK_SIZE

    if args.short:
        return Plan(SHORT_PEAK_SIZE, 5, 8, 4, args.requests or 2 * args.concurrency)
    return Plan(PEAK_SIZE, 10, 16, 16, args.requests or 8 * args.concurrency)


def run(args: argparse.Namespace) -> int:
    from export.served import served_repository
    from msk.flops import matmul_peak_gflops
    from server.serve import ServeError

    repositories = args.repository or [Path("model_repository")]
    plan = plan_for(args)
    try:
        served = [served_repository(path) for path in repositories]
        if args.json is not None:            # fail before measuring, not after
            args.json.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(args.json.parent, os.W_OK):
                raise PermissionError(f"--json {args.json}: {args.json.parent} is not writable")
    except (OSError, ValueError) as exc:
        print(f"msk bench: error: {exc}", file=sys.stderr)
        return 2
    cores = len(os.sched_getaffinity(0))
    load_average = os.getloadavg()
    print(f"msk bench: measuring the matrix-product peak ({plan.peak_size}^3)...",
          file=sys.stderr, flush=True)
    peaks = [matmul_peak_gflops(plan.peak_size, plan.peak_repeats)]  # first: nothing spins yet
    try:
        measured = _measure(served, plan, args.concurrency)
    except RuntimeError as exc:          # a failed request or a server that would not start
        print(f"msk bench: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ServeError) else 1
    except KeyboardInterrupt:            # the servers were stopped on the way out
        print("msk bench: interrupted; nothing measured is reported", file=sys.stderr)
        return 130
    # Again once the servers are gone (this process never loads a runtime that leaves threads
    # spinning): a shared host's load changes during a run, and the higher of the two is the
    # ceiling the serving numbers are read against.
    peaks.append(matmul_peak_gflops(plan.peak_size, plan.peak_repeats))
    report = build_report(args, plan, cores, load_average, peaks, measured)
    print_summary(report)
    if args.json is not None:
        from export.manifest import write_json_atomic

        write_json_atomic(args.json, report)
        print(f"JSON report: {args.json}")
    return 0


def _measure(served: list, plan: Plan, concurrency: int) -> list:
    """Start the front door on each repository in turn and run the closed loops."""
    from tqdm import tqdm

    from clients.load import closed_loop, make_images
    from clients.mura import MuraClient
    from msk.commands._bench_report import Measured
    from server.serve import front_door

    images = make_images(plan.images)
    levels = sorted({1, concurrency})
    warm = concurrency      # one round at --concurrency: the backbones' first full batch is slow
    per_repository = warm + (plan.alone_requests if concurrency > 1 else 0) + plan.busy_requests
    out = []
    with tqdm(total=per_repository * len(served), unit="req", file=sys.stderr,
              dynamic_ncols=True) as bar:
        for index, repository in enumerate(served, 1):
            name = f"[{index}/{len(served)}] {repository.path.name}"
            bar.set_description(f"{name}: starting msk serve")
            with front_door(repository.path, restart=False) as server, \
                    MuraClient(server.grpc_url, concurrency=concurrency) as client:
                bar.set_description(f"{name}: warm-up")
                closed_loop(client, images, concurrency, warm, bar.update)
                runs = []
                for level in levels:
                    bar.set_description(f"{name}: concurrency {level}")
                    count = plan.busy_requests if level == concurrency else plan.alone_requests
                    runs.append(closed_loop(client, images, level, count, bar.update))
                version = server.endpoints.triton_version if server.endpoints else ""
            out.append(Measured(repository, version, tuple(runs)))
    return out


def _versions(triton: list[str]) -> dict:
    from msk import __version__

    found = {"msk_triton": __version__, "python": platform.python_version(),
             "tritonserver": sorted(set(triton))}
    for package in ("numpy", "onnxruntime", "openvino", "tritonclient"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def build_report(args: argparse.Namespace, plan: Plan, cores: int,
                 load_average: tuple[float, ...], peaks: list[float], measured: list) -> dict:
    from msk import RESEARCH_USE_NOTICE
    from msk.capacity import images_per_hour_per_core
    from msk.commands._bench_report import (
        precision_rows,
        recommend_cpu_cores,
        recommend_cpu_runtime,
        recommend_replicas,
        run_record,
        share_of_peak,
    )
    from msk.host import cpu_model, has_native_bf16, isa

    peak = max(peaks)
    repositories = []
    for m in measured:
        s = m.served
        repositories.append({
            "path": str(s.path), "version": s.version, "precision": s.precision,
            "weights": s.weights, "cpu_runtime": s.cpu_runtime, "full_size": s.full_size,
            "gflop_per_image": s.gflop_per_image, "tritonserver": m.triton_version,
            "backbones": [{"member": b.member, "architecture": b.architecture,
                           "runtime": b.runtime, "threads": b.threads,
                           "image_size": b.image_size, "gflop_per_image": b.gflop_per_image}
                          for b in s.backbones],
            "runs": [run_record(r) for r in m.runs],
            "concurrency": m.busy.concurrency,
            "images_per_s": m.busy.images_per_s,
            "images_per_hour_per_core": images_per_hour_per_core(m.busy.images_per_s, cores),
            "share_of_peak": share_of_peak(m, peak),
            "recommendations": {
                "cpu_cores": recommend_cpu_cores(m, cores),
                "cpu_runtime": recommend_cpu_runtime(m, measured),
                "replicas": recommend_replicas(m, args.target_images_per_hour,
                                               args.utilisation)},
        })
    return {
        "notice": RESEARCH_USE_NOTICE,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {"cpu_model": cpu_model(), "isa": isa(), "native_bf16": has_native_bf16(),
                 "machine": platform.machine(), "cores": cores,
                 "load_average_at_start": list(load_average)},
        "versions": _versions([m.triton_version for m in measured]),
        "settings": {"short": args.short, "concurrency": args.concurrency,
                     "requests_alone": plan.alone_requests,
                     "requests_at_concurrency": plan.busy_requests, "images": plan.images,
                     "images_kind": "synthetic radiograph-sized uint8, 400-900 x 300-700",
                     "target_images_per_hour": args.target_images_per_hour,
                     "utilisation": args.utilisation},
        "matmul_peak": {"size": plan.peak_size, "gflops": peak, "gflops_before": peaks[0],
                        "gflops_after": peaks[-1],
                        "what": "numpy FP32 square matrix product on every core, best of "
                        f"{plan.peak_repeats}, before and after serving; the higher"},
        "precisions": precision_rows(measured, cores, has_native_bf16()),
        "repositories": repositories,
    }


def print_summary(report: dict) -> None:
    host = report["host"]
    print(f"msk bench: {report['notice']}")
    print(f"host: {host['cpu_model']}; ISA: {', '.join(host['isa']) or 'none listed'}; "
          f"{host['cores']} core(s) for this process; native BF16: "
          f"{'yes' if host['native_bf16'] else 'no'}; load average at start "
          f"{', '.join(f'{x:.2f}' for x in host['load_average_at_start'])}")
    peak = report["matmul_peak"]
    print(f"matrix-product peak (numpy FP32, {peak['size']}^3): {peak['gflops']:.1f} GFLOP/s "
          f"(before serving {peak['gflops_before']:.1f}, after {peak['gflops_after']:.1f})")
    for r in report["repositories"]:
        print(f"\nrepository {r['path']}: version {r['version']}, {r['precision'].upper()}, "
              f"weights {r['weights']}, tritonserver {r['tritonserver']}")
        print(f"  {'backbone':15s} {'architecture':13s} {'runtime':12s} {'threads':>7s} "
              f"{'GFLOP/image':>11s}")
        for b in r["backbones"]:
            print(f"  {b['member']:15s} {b['architecture']:13s} {b['runtime']:12s} "
                  f"{b['threads'] if b['threads'] is not None else 'default':>7} "
                  f"{b['gflop_per_image']:11.3f}")
        for run in r["runs"]:
            print(f"  concurrency {run['concurrency']:>3}: p50 {run['p50_s']:.3f} s, p99 "
                  f"{run['p99_s']:.3f} s, {run['images_per_s']:.2f} images/s "
                  f"({run['requests']} requests"
                  + (", so p99 is about their maximum)" if run["requests"] < 100 else ")"))
        print(f"  images per hour per core: {r['images_per_hour_per_core']:,.0f} "
              f"(concurrency {r['concurrency']})")
        share = r["share_of_peak"]
        print("  share of the matrix-product peak: " + (
            f"{share['value']:.1%} ({share['note']})" if share["value"] is not None
            else f"not computed: {share['note']}"))
        for flag, rec in r["recommendations"].items():
            value = rec["value"] if rec["value"] is not None else "-"
            label = "replicas" if flag == "replicas" else f"--{flag.replace('_', '-')}"
            print(f"  recommended {label} {value}: {rec['reason']}")
    print("\nimages per hour per core by precision:")
    for precision, row in report["precisions"].items():
        if row["available"]:
            print(f"  {precision.upper()}: {row['images_per_hour_per_core']:,.0f} "
                  f"({row['repository']}, {row['cpu_runtime']}"
                  + (")" if row["full_size"] else "; stand-in backbones, not the study's)"))
        else:
            print(f"  {precision.upper()}: not measured: {row['reason']}")
