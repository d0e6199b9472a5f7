"""Latency under load: p50/p99, throughput and the rejection rate at 1, 8, 32 and 128 in flight.

    .venv/bin/python bench/bench_latency.py                        # model_repository/
    .venv/bin/python bench/bench_latency.py --repository DIR --requests 64

Closed loop: C clients each send the next image as soon as the last one is answered, against one
tritonserver with the bounded queues `msk export` generates (every composing model rejects what
it cannot start within its queue timeout instead of queueing without end). Per concurrency it
prints throughput (answered images/s), p50 and p99 of the answered requests and the share
rejected; the ratio column is throughput against concurrency 1, measured in the same run.
Research use only - not a medical device.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clients.load import make_images  # noqa: E402
from clients.mura import MuraClient  # noqa: E402
from server.serve import front_door  # noqa: E402


def at_concurrency(client: MuraClient, images: list[np.ndarray], concurrency: int,
                   requests: int) -> dict[str, float]:
    """Send `requests` images with `concurrency` in flight; latency percentiles and rejections."""
    latencies: list[float] = []
    errors: list[str] = []                  # list.append is atomic: no lock between threads

    def one(index: int) -> None:
        started = time.perf_counter()
        result = client.score_one(images[index % len(images)], heatmap=False)
        if result.error:
            errors.append(result.error)
        else:
            latencies.append(time.perf_counter() - started)

    with ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        list(pool.map(one, range(requests)))
        elapsed = time.perf_counter() - started
    answered = np.array(latencies) if latencies else np.array([np.nan])
    return {"concurrency": concurrency, "images_per_s": round(len(latencies) / elapsed, 3),
            "p50_s": round(float(np.percentile(answered, 50)), 3),
            "p99_s": round(float(np.percentile(answered, 99)), 3),
            "rejected": round(len(errors) / requests, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository",
                        help="repository with an exported version (default: model_repository)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--requests", type=int, default=0,
                        help="requests per concurrency (default: max(24, 2 x concurrency))")
    args = parser.parse_args()
    images = make_images(16)
    rows = []
    with front_door(args.repository) as server, \
            MuraClient(server.grpc_url, concurrency=max(args.concurrency) * 2) as client:
        for image in images[:4]:                                        # warm-up
            client.score_one(image, heatmap=False)
        for concurrency in args.concurrency:
            count = args.requests or max(24, 2 * concurrency)
            rows.append(at_concurrency(client, images, concurrency, count))
            print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["images_per_s"] or float("nan")
    print("\n| in flight | images/s | ratio vs first | p50 (s) | p99 (s) | rejected |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['concurrency']} | {row['images_per_s']:.2f} | "
              f"{row['images_per_s'] / base:.2f} | {row['p50_s']:.2f} | {row['p99_s']:.2f} | "
              f"{row['rejected']:.0%} |")
    print(json.dumps({"repository": str(args.repository), "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
