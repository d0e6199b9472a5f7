"""The capacity model of docs/scale-out.md, checked against a measurement on one replica.

    .venv/bin/python bench/bench_capacity.py                              # model_repository/
    .venv/bin/python bench/bench_capacity.py --repository DIR --arrivals 60

The model sizes a fleet from two numbers measured on one replica: its throughput mu (images/s,
closed loop at concurrency 8) and its single-image latency S (concurrency 1). At utilisation
rho = lambda / mu it predicts the p99 response time p99 ~= 4.6 * S / (1 - rho) (each replica
treated as an M/M/1 queue: pessimistic for a fixed-size network's nearly constant service time).
This script measures mu and S, then offers open-loop Poisson arrivals at rho = 0.5 and 0.8 (the
way a PACS sends studies: arrivals do not wait for answers) and prints, per rho, the measured
p50/p99 beside the model's p99 and their ratio (<= 1: the model is on the safe side). The
baseline (mu, S) is measured in the same run. Research use only - not a medical device.
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

from clients.mura import MuraClient  # noqa: E402
from server.serve import front_door  # noqa: E402

P99_FACTOR = 4.6          # -ln(0.01): the p99 of an exponential response time, in means


def make_images(count: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth synthetic radiograph-sized images (sizes vary like real ones)."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        height, width = int(rng.integers(400, 900)), int(rng.integers(300, 700))
        y, x = np.mgrid[0:height, 0:width]
        base = 127 + 100 * np.sin((x + 37 * i) / 150.0) * np.cos(y / 210.0)
        images.append(np.clip(base + rng.integers(-20, 20, (height, width)), 0, 255)
                      .astype(np.uint8))
    return images


def score_checked(client: MuraClient, image: np.ndarray) -> float:
    """Score one image; its latency in seconds. A failed request fails the measurement."""
    started = time.perf_counter()
    result = client.score_one(image, heatmap=False)
    if result.error:
        raise RuntimeError(f"request failed: {result.error}")
    return time.perf_counter() - started


def closed_loop(client: MuraClient, images: list[np.ndarray], concurrency: int) -> float:
    """Images/s with `concurrency` requests always in flight."""
    with ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        list(pool.map(lambda image: score_checked(client, image), images))
        return len(images) / (time.perf_counter() - started)


def open_loop(client: MuraClient, images: list[np.ndarray], rate: float,
              arrivals: int, seed: int) -> tuple[np.ndarray, int]:
    """Response times (s) of the answered Poisson arrivals at `rate`/s, measured from each
    arrival, and how many the server rejected (bounded queues: overload is refused, not queued
    without end)."""
    rng = np.random.default_rng(seed)
    offsets = np.cumsum(rng.exponential(1.0 / rate, arrivals))
    latencies = np.full(arrivals, np.nan)

    def one(index: int, due: float) -> None:
        result = client.score_one(images[index % len(images)], heatmap=False)
        if not result.error:
            latencies[index] = time.perf_counter() - due

    with ThreadPoolExecutor(max_workers=256) as pool:
        start = time.perf_counter()
        futures = []
        for index, offset in enumerate(offsets):
            due = start + offset
            time.sleep(max(0.0, due - time.perf_counter()))
            futures.append(pool.submit(one, index, due))
        for future in futures:
            future.result()
    answered = latencies[~np.isnan(latencies)]
    return answered, arrivals - len(answered)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository",
                        help="repository with an exported version (default: model_repository)")
    parser.add_argument("--images", type=int, default=16, help="distinct images (reused)")
    parser.add_argument("--arrivals", type=int, default=60, help="Poisson arrivals per rho")
    parser.add_argument("--rho", type=float, nargs="+", default=[0.5, 0.8])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    images = make_images(args.images, args.seed)
    rows = []
    with front_door(args.repository) as server, \
            MuraClient(server.grpc_url, concurrency=256) as client:
        for image in images[:4]:                                        # warm-up
            score_checked(client, image)
        service_s = float(np.median([score_checked(client, image) for image in images[:8]]))
        mu = closed_loop(client, images * 2, 8)
        print(f"baseline: S = {service_s:.3f} s alone, mu = {mu:.2f} images/s at concurrency 8",
              flush=True)
        for rho in args.rho:
            latencies, rejected = open_loop(client, images, rho * mu, args.arrivals,
                                            args.seed + 1)
            predicted = P99_FACTOR * service_s / (1.0 - rho)
            p50, p99 = (float(np.percentile(latencies, q)) if len(latencies) else float("nan")
                        for q in (50, 99))
            rows.append({"rho": rho, "rate": round(rho * mu, 3), "p50_s": round(p50, 3),
                         "p99_s": round(p99, 3), "model_p99_s": round(predicted, 3),
                         "measured_over_model": round(p99 / predicted, 3),
                         "rejected": rejected})
            print(f"rho {rho}: p50 {p50:.2f} s, p99 {p99:.2f} s, model p99 {predicted:.2f} s, "
                  f"{rejected} of {args.arrivals} rejected", flush=True)
    print("\n| rho | arrivals/s | p50 (s) | p99 (s) | model p99 (s) | measured / model "
          "| rejected |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['rho']} | {row['rate']:.2f} | {row['p50_s']:.2f} | {row['p99_s']:.2f} | "
              f"{row['model_p99_s']:.2f} | {row['measured_over_model']:.2f} | "
              f"{row['rejected']}/{args.arrivals} |")
    print(json.dumps({"repository": str(args.repository), "service_s": round(service_s, 3),
                      "mu_images_per_s": round(mu, 3), "arrivals": args.arrivals,
                      "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
