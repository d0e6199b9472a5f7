"""Load on a MURA server: synthetic radiographs, closed-loop and open-loop request streams.

Why one module: `bench/bench_capacity.py` (the capacity model checked against arrivals) and
`msk bench` (a user's own host) measure a replica the same way, so their numbers mean the same
thing. Requests ask for what `msk score` asks for (no heatmap). A failed request fails a
closed-loop measurement: a throughput that counts errors as answers would flatter the server.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from clients.mura import MuraClient


def make_images(count: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth synthetic radiograph-sized uint8 images (sizes vary like real ones: 400-900 x
    300-700), so preprocessing cost is realistic without shipping patient data."""
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
    """Score one image; its latency in seconds. A failed request raises RuntimeError."""
    started = time.perf_counter()
    result = client.score_one(image, heatmap=False)
    if result.error:
        raise RuntimeError(f"request failed: {result.error}")
    return time.perf_counter() - started


@dataclass(frozen=True)
class ClosedLoop:
    """One closed-loop run: `concurrency` requests always in flight until `requests` answered."""

    concurrency: int
    requests: int
    elapsed_s: float
    latencies_s: tuple[float, ...]

    @property
    def images_per_s(self) -> float:
        return self.requests / self.elapsed_s

    def percentile_s(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q))


def closed_loop(client: MuraClient, images: list[np.ndarray], concurrency: int,
                requests: int | None = None,
                on_answer: Callable[[], None] = lambda: None) -> ClosedLoop:
    """Send `requests` (default: one per image; images are reused in turn) with `concurrency`
    in flight; `on_answer` is called after each answer (a progress bar)."""
    count = len(images) if requests is None else requests

    def one(index: int) -> float:
        latency = score_checked(client, images[index % len(images)])
        on_answer()
        return latency

    pool = ThreadPoolExecutor(concurrency)
    try:
        started = time.perf_counter()
        latencies = tuple(pool.map(one, range(count)))
        elapsed = time.perf_counter() - started
    finally:            # a failure or Ctrl-C: drop the requests not yet sent, not wait for them
        pool.shutdown(wait=True, cancel_futures=True)
    return ClosedLoop(concurrency, count, elapsed, latencies)


def open_loop(client: MuraClient, images: list[np.ndarray], rate: float,
              arrivals: int, seed: int) -> tuple[np.ndarray, int]:
    """Response times (s) of the answered Poisson arrivals at `rate`/s, measured from each
    arrival, and how many the server rejected (bounded queues: overload is refused, not queued
    without end). Arrivals do not wait for answers, the way a PACS sends studies."""
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
