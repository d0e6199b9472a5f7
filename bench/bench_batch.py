"""Batch scoring throughput over the real tritonserver: `clients.batch.BatchScorer` at several
concurrency levels, with and without Triton system shared memory, against sequential scoring
(one `MuraClient.score_one` after another) measured in the same run.

    .venv/bin/python bench/bench_batch.py                      # tiny stand-in repository
    .venv/bin/python bench/bench_batch.py --repository model_repository --images 32

Prints a table of images/s and the ratio of each setting to the sequential baseline, then one
JSON line with everything. Images are large (default 2048x2560, like a detector plate) and stored
as uncompressed TIFF so that decoding does not hide the transport cost shared memory removes.
Research use only - not a medical device.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
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
from clients.mura import MuraClient  # noqa: E402
from server.serve import front_door  # noqa: E402


def tiny_repository() -> Path:
    from export.repository import build_repository

    out = ROOT / ".cache" / "bench-tiny-repository"
    build_repository(out, tiny=True)
    return out


def make_images(folder: Path, count: int, height: int, width: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        # a smooth "radiograph" plus noise: realistic entropy, distinct per image
        y, x = np.mgrid[0:height, 0:width]
        base = (127 + 100 * np.sin((x + 37 * i) / 150.0) * np.cos(y / 210.0)).astype(np.int16)
        pixels = np.clip(base + rng.integers(-20, 20, (height, width)), 0, 255).astype(np.uint8)
        path = folder / f"img{i:04d}.tif"
        Image.fromarray(pixels).save(path)      # uncompressed
        paths.append(path)
    return paths


def sequential(url: str, paths: list[Path]) -> tuple[float, float]:
    """Seconds for one `MuraClient.score_one` after another, and the median request latency."""
    with MuraClient(url) as client:
        client.score_one(str(paths[0]), heatmap=False)            # contract discovery, warm-up
        latencies = []
        started = time.perf_counter()
        for path in paths:
            result = client.score_one(str(path), heatmap=False)
            if result.error:
                raise RuntimeError(result.error)
            latencies.append(result.latency_s or 0.0)
        return time.perf_counter() - started, statistics.median(latencies)


def batch(url: str, paths: list[Path], concurrency: int, shared: bool) -> tuple[float, float]:
    """Seconds for the whole batch with `BatchScorer`, and the median request latency."""
    items = expand_inputs([str(p) for p in paths])
    scorer = BatchScorer(url, concurrency=concurrency, shared_memory=shared)
    rows: list[dict] = []

    async def go() -> float:
        await scorer.wait_ready(60)
        await scorer.run(items[:concurrency], None)               # warm-up
        started = time.perf_counter()
        summary = await scorer.run(items, None, on_row=rows.append)
        if summary.errors:
            raise RuntimeError(f"{summary.errors} errors: {dict(summary.errors_by_reason)}")
        return time.perf_counter() - started

    seconds = asyncio.run(go())
    return seconds, statistics.median(r["latency_s"] for r in rows)


def _median_runs(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=None,
                        help="model repository (default: tiny stand-in built under .cache/)")
    parser.add_argument("--images", type=int, default=32, help="images per run (default 32)")
    parser.add_argument("--size", default="2048x2560", help="HxW of the images (default 2048x2560)")
    parser.add_argument("--concurrency", default="1,4,8,16", help="levels (default 1,4,8,16)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs per setting, with and without shared memory interleaved so "
                        "that load from other processes hits both alike; medians are reported "
                        "(default 3)")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.lower().split("x"))
    levels = [int(c) for c in args.concurrency.split(",")]
    repository = args.repository or tiny_repository()

    rows = []
    with tempfile.TemporaryDirectory() as tmp, front_door(repository) as server:
        paths = make_images(Path(tmp), args.images, height, width)
        url = server.grpc_url
        base, _ = _median_runs([sequential(url, paths) for _ in range(args.repeats)])
        # MuraClient's latency includes decoding the file, so it is not shown beside the
        # batch client's request latency
        rows.append({"setting": "sequential (MuraClient.score_one loop)", "concurrency": 1,
                     "shared_memory": False, "seconds": base, "median_latency_s": None,
                     "images_per_s": len(paths) / base, "ratio": 1.0})
        for level in levels:
            runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            for _ in range(args.repeats):
                for shared in (False, True):
                    runs[shared].append(batch(url, paths, level, shared))
            for shared in (False, True):
                seconds, latency = _median_runs(runs[shared])
                rows.append({"setting": f"batch c={level}" + (" shm" if shared else ""),
                             "concurrency": level, "shared_memory": shared, "seconds": seconds,
                             "median_latency_s": latency, "images_per_s": len(paths) / seconds,
                             "ratio": base / seconds})
    plain = {r["concurrency"]: r for r in rows[1:] if not r["shared_memory"]}
    print(f"{len(paths)} images of {height}x{width} uint8 ({height * width / 2**20:.1f} MiB each), "
          f"repository {repository.name}, {os.cpu_count()} CPUs, median of {args.repeats} runs")
    print(f"{'setting':40s} {'images/s':>9s} {'vs sequential':>14s} {'request ms':>11s} "
          f"{'shm: throughput':>16s} {'shm: latency':>13s}")
    for r in rows:
        shm_cols = ("", "")
        if r["shared_memory"]:
            p = plain[r["concurrency"]]
            shm_cols = (f"{p['seconds'] / r['seconds']:.2f}x",
                        f"{r['median_latency_s'] / p['median_latency_s']:.2f}x")
        latency = "" if r["median_latency_s"] is None else f"{1000 * r['median_latency_s']:.1f}"
        print(f"{r['setting']:40s} {r['images_per_s']:9.2f} {r['ratio']:13.2f}x "
              f"{latency:>11s} {shm_cols[0]:>16s} {shm_cols[1]:>13s}")
    print(json.dumps({"images": len(paths), "size": [height, width], "results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
