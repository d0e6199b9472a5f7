"""Throughput through a real load balancer with 1, 2 and 3 local Triton replicas, in one run.

    .venv/bin/python bench/bench_scaleout.py                        # tiny stand-in repository
    .venv/bin/python bench/bench_scaleout.py --repository model_repository --images 48

For each replica count N the script starts N tritonserver processes on the repository, puts a
real HAProxy in front of them (`server.haproxy.Balancer`: gRPC per request, health-checked on
/v2/health/ready), and scores the same images with the `msk score` engine
(`clients.batch.BatchScorer`, concurrency 8) through the balancer after one warm-up pass. It
prints images/s per N and the scaling ratio against N = 1 measured in the same run, then one JSON
line. On one host the replicas share its cores: the ratio shows what the balancer costs and how
much a single replica leaves idle, not what N machines give (docs/scale-out.md).
Research use only - not a medical device.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clients.batch import BatchScorer  # noqa: E402
from clients.inputs import expand_inputs  # noqa: E402
from server.haproxy import Balancer  # noqa: E402
from server.serve import front_door  # noqa: E402


def tiny_repository() -> Path:
    from export.repository import build_repository

    out = ROOT / ".cache" / "bench-tiny-repository"
    if not (out / "manifest.json").exists():
        build_repository(out, tiny=True)
    return out


def make_images(folder: Path, count: int, height: int, width: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        y, x = np.mgrid[0:height, 0:width]
        base = 127 + 100 * np.sin((x + 37 * i) / 150.0) * np.cos(y / 210.0)
        pixels = np.clip(base + rng.integers(-20, 20, (height, width)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:04d}.png")


def measure(url: str, items, concurrency: int) -> float:
    async def run() -> float:
        scorer = BatchScorer(url, concurrency=concurrency)
        await scorer.wait_ready(120)
        await scorer.run(items[: max(8, len(items) // 4)], None)        # warm-up
        started = time.perf_counter()
        summary = await scorer.run(items, None)
        elapsed = time.perf_counter() - started
        if summary.errors:
            raise RuntimeError(f"{summary.errors} errors: {dict(summary.errors_by_reason)}")
        return len(items) / elapsed

    return asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=None,
                        help="model repository (default: the tiny stand-in, built once)")
    parser.add_argument("--images", type=int, default=200, help="images per measurement")
    parser.add_argument("--size", type=int, nargs=2, default=(768, 640), metavar=("H", "W"))
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    repository = args.repository or tiny_repository()
    results: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        make_images(folder, args.images, *args.size)
        items = expand_inputs([str(folder)])
        for count in args.replicas:
            with contextlib.ExitStack() as stack:
                replicas = [stack.enter_context(front_door(repository)) for _ in range(count)]
                balancer = stack.enter_context(Balancer(replicas, workdir=Path(tmp)))
                results[count] = measure(balancer.url, items, args.concurrency)
            print(f"{count} replica(s) behind HAProxy: {results[count]:.2f} images/s",
                  flush=True)
    base = results[args.replicas[0]]
    print("\n| replicas | images/s | ratio vs 1 |\n|---:|---:|---:|")
    for count, rate in results.items():
        print(f"| {count} | {rate:.2f} | {rate / base:.2f} |")
    print(json.dumps({"repository": str(repository), "images": args.images,
                      "size": list(args.size), "concurrency": args.concurrency,
                      "images_per_s": results,
                      "scaling_ratio": {n: round(r / base, 3) for n, r in results.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
