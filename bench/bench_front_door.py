"""What the front door costs, and what warming before ready saves: `msk serve` vs bare tritonserver.

    .venv/bin/python bench/bench_front_door.py                          # the tiny repository
    .venv/bin/python bench/bench_front_door.py --repository model_repository --requests 24

In one run, on the same repository and images: a bare tritonserver (`server.launcher`) and the
guarded server users get (`msk serve` in its own process: the gRPC guard in front, the supervisor,
warm-up), at 1 and 8 in flight, in alternating order (bare, door, bare, door) so that drift of the
machine hits both. It prints images/s for each and the ratio door/bare per concurrency (target >=
0.97), then the first request's latency against the steady-state p50 on each server: Triton cannot
warm an ensemble (server#6326), so a bare server pays lazy initialisation on its first request,
while `msk serve` pays it before it reports ready. The host's CPU and ISA are in the first line.
Research use only - not a medical device.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_latency import at_concurrency  # noqa: E402
from bench.bench_scaleout import tiny_repository  # noqa: E402
from clients.mura import MuraClient  # noqa: E402
from msk.host import describe  # noqa: E402
from msk.samples import radiograph  # noqa: E402
from server.launcher import TritonServer  # noqa: E402


@dataclass
class ServeProcess:
    grpc_url: str


@contextlib.contextmanager
def msk_serve(repository: Path):
    """`msk serve` as users run it: its own process (its guard has its own interpreter, not
    the benchmark's), on free ports; stopped with SIGTERM."""
    msk = Path(sys.executable).parent / "msk"
    proc = subprocess.Popen([str(msk), "serve", "--repository", str(repository), "--grpc-port",
                             "0", "--http-port", "0", "--metrics-port", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            match = re.search(r"msk serve: ready  grpc=(\S+)", line)
            if match:
                break
        else:
            raise RuntimeError(f"msk serve exited with {proc.wait()} before it was ready")
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
        yield ServeProcess(match.group(1))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)


def _images(count: int) -> list[np.ndarray]:
    return [(radiograph(380 + 11 * i, 300 + 7 * i, i) * 255).astype(np.uint8)
            for i in range(count)]


def first_and_steady(server, image: np.ndarray, steady: int) -> tuple[float, float]:
    """(latency of the very first request, p50 of the next `steady`), one in flight."""
    with MuraClient(server.grpc_url) as client:
        assert client.contract.members      # connection + metadata first: not the model's cost
        times = []
        for _ in range(steady + 1):
            started = time.perf_counter()
            result = client.score_one(image, heatmap=False)
            assert result.error is None, result.error
            times.append(time.perf_counter() - started)
    return times[0], float(np.median(times[1:]))


def throughput(server, images: list[np.ndarray], concurrency: int, requests: int) -> float:
    with MuraClient(server.grpc_url, concurrency=concurrency) as client:
        client.score_one(images[0], heatmap=False)            # connection set up, not timed
        return at_concurrency(client, images, concurrency, requests)["images_per_s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=None,
                        help="model repository (default: the tiny one, built once)")
    parser.add_argument("--requests", type=int, default=64, help="requests per row")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per row")
    args = parser.parse_args()
    repository = args.repository or tiny_repository()
    images = _images(8)
    print(f"# {describe()}; repository {repository}; {args.requests} requests per row, "
          f"{args.rounds} rounds", flush=True)

    first: dict[str, tuple[float, float]] = {}
    with TritonServer(repository) as bare:
        first["bare"] = first_and_steady(bare, images[0], 10)
    with msk_serve(repository) as door:
        first["msk serve"] = first_and_steady(door, images[0], 10)

    rates: dict[tuple[str, int], list[float]] = {}
    with TritonServer(repository) as bare, msk_serve(repository) as door:
        for _ in range(args.rounds):
            for concurrency in (1, 8):
                for name, server in (("bare", bare), ("msk serve", door)):
                    rate = throughput(server, images, concurrency, args.requests)
                    rates.setdefault((name, concurrency), []).append(rate)
                    print(f"{name:9s} c{concurrency}: {rate:.2f} images/s", flush=True)

    print("\n| in flight | bare tritonserver images/s | msk serve images/s | door / bare |")
    print("|---:|---:|---:|---:|")
    summary = {}
    for concurrency in (1, 8):
        bare_rate = float(np.mean(rates[("bare", concurrency)]))
        door_rate = float(np.mean(rates[("msk serve", concurrency)]))
        summary[f"c{concurrency}"] = round(door_rate / bare_rate, 3)
        print(f"| {concurrency} | {bare_rate:.2f} | {door_rate:.2f} | "
              f"{door_rate / bare_rate:.3f} |")
    print("\n| server | first request | steady p50 | first / p50 |\n|---|---:|---:|---:|")
    for name, (one, p50) in first.items():
        print(f"| {name} | {one * 1000:.0f} ms | {p50 * 1000:.0f} ms | {one / p50:.2f} |")
    print(json.dumps({"door_over_bare": summary,
                      "first_over_p50": {k: round(a / b, 2) for k, (a, b) in first.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
