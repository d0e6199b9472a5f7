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
from server.launcher import TritonServer  # noqa: E402


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


def sequential(url: str, paths: list[Path]) -> float:
    with MuraClient(url) as client:
        client.score_one(str(paths[0]), heatmap=False)            # contract discovery, warm-up
        started = time.perf_counter()
        for path in paths:
            result = client.score_one(str(path), heatmap=False)
            if result.error:
                raise RuntimeError(result.error)
        return time.perf_counter() - started


def batch(url: str, paths: list[Path], concurrency: int, shared: bool) -> float:
    items = expand_inputs([str(p) for p in paths])
    scorer = BatchScorer(url, concurrency=concurrency, shared_memory=shared)

    async def go() -> float:
        await scorer.wait_ready(60)
        await scorer.run(items[:concurrency], None)               # warm-up (shm regions too)
        started = time.perf_counter()
        summary = await scorer.run(items, None)
        if summary.errors:
            raise RuntimeError(f"{summary.errors} errors: {dict(summary.errors_by_reason)}")
        return time.perf_counter() - started

    return asyncio.run(go())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=None,
                        help="model repository (default: tiny stand-in built under .cache/)")
    parser.add_argument("--images", type=int, default=48, help="images per setting (default 48)")
    parser.add_argument("--size", default="2048x2560", help="HxW of the images (default 2048x2560)")
    parser.add_argument("--concurrency", default="1,4,8,16", help="levels (default 1,4,8,16)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs per setting; the best is kept (default 2)")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.lower().split("x"))
    levels = [int(c) for c in args.concurrency.split(",")]
    repository = args.repository or tiny_repository()

    with tempfile.TemporaryDirectory() as tmp, TritonServer(repository) as server:
        paths = make_images(Path(tmp), args.images, height, width)
        url = server.grpc_url
        base = min(sequential(url, paths) for _ in range(args.repeats))
        rows = [{"setting": "sequential (MuraClient.score_one loop)", "concurrency": 1,
                 "shared_memory": False, "seconds": base, "images_per_s": len(paths) / base,
                 "ratio": 1.0}]
        for shared in (False, True):
            for level in levels:
                seconds = min(batch(url, paths, level, shared) for _ in range(args.repeats))
                rows.append({"setting": f"batch c={level}" + (" shm" if shared else ""),
                             "concurrency": level, "shared_memory": shared, "seconds": seconds,
                             "images_per_s": len(paths) / seconds, "ratio": base / seconds})
    no_shm = {r["concurrency"]: r["seconds"] for r in rows[1:] if not r["shared_memory"]}
    print(f"{len(paths)} images of {height}x{width} uint8 ({height * width / 2**20:.1f} MiB each), "
          f"repository {repository.name}, {os.cpu_count()} CPUs")
    print(f"{'setting':42s} {'images/s':>9s} {'vs sequential':>14s} {'shm vs no shm':>14s}")
    for r in rows:
        shm_ratio = (f"{no_shm[r['concurrency']] / r['seconds']:.2f}x"
                     if r["shared_memory"] else "")
        print(f"{r['setting']:42s} {r['images_per_s']:9.2f} {r['ratio']:13.2f}x {shm_ratio:>14s}")
    print(json.dumps({"images": len(paths), "size": [height, width], "results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
