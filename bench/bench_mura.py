"""Benchmark: MURA ensemble throughput, Triton over gRPC vs in-process baselines.

Measured in one run on the same images:
  a) the four backbones in PyTorch eager, one process, batches of 8 (the researcher's script);
  b) the same exported ONNX graphs in-process with onnxruntime, batches of 8;
  c) the Triton ensemble over gRPC (uint8 image in, preprocessing on the server) at concurrency 1
     and 8, where the backbones' dynamic batcher forms the batches.
Prints images/s for each and the ratios c/b and c/a. Usage:
    .venv/bin/python bench/bench_mura.py [--images 24] [--repository DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def _images(n: int) -> list[np.ndarray]:
    from msk.samples import radiograph

    rng = np.random.default_rng(0)
    return [(radiograph(int(rng.integers(400, 900)), int(rng.integers(300, 700)), i) * 255
             ).astype(np.uint8) for i in range(n)]


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_torch(images, repository: Path) -> float:
    import torch

    from msk.constants import MURA_ARCHITECTURES, MURA_DEMO_SEED
    from training.mura_models import build_backbone
    from training.mura_preprocess import preprocess_mura

    models = [build_backbone(arch, seed=MURA_DEMO_SEED + i).eval()
              for i, arch in enumerate(MURA_ARCHITECTURES.values())]

    def run() -> None:
        with torch.inference_mode():
            for start in range(0, len(images), 8):
                batch = torch.from_numpy(np.stack([preprocess_mura(im)
                                                   for im in images[start:start + 8]]))
                probs = [torch.sigmoid(m(batch)) for m in models]
                torch.stack(probs).mean(0)
    run_time = _timed(run)
    return len(images) / run_time


def bench_onnxruntime(images, repository: Path) -> float:
    import onnxruntime as ort

    from export.repository import latest_version
    from msk.constants import MURA_MEMBERS
    from training.mura_preprocess import preprocess_mura

    version = latest_version(repository)
    sessions = [ort.InferenceSession(str(repository / m / str(version) / "model.onnx"),
                                     providers=["CPUExecutionProvider"]) for m in MURA_MEMBERS]

    def run() -> None:
        for start in range(0, len(images), 8):
            batch = np.stack([preprocess_mura(im) for im in images[start:start + 8]])
            probs = [s.run(["PROBABILITY"], {"PIXELS": batch})[0] for s in sessions]
            np.mean(probs, axis=0)
    return len(images) / _timed(run)


def bench_triton(images, url: str, concurrency: int) -> float:
    from clients.mura import MuraClient

    with MuraClient(url, concurrency=concurrency) as client:
        client.score(images[:2], heatmaps=False)          # warm-up (contract discovery)
        elapsed = _timed(lambda: client.score(images, heatmaps=False))
    return len(images) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="number of images (default 24)")
    parser.add_argument("--repository", type=Path, default=None,
                        help="existing demo repository (default: build one in a temp dir)")
    args = parser.parse_args()

    from export.repository import build_repository
    from server.launcher import TritonServer

    repository = args.repository or Path(tempfile.mkdtemp(prefix="bench-mura-"))
    build_repository(repository)
    images = _images(args.images)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}; "
          f"{len(images)} images of sizes 400-900 x 300-700")
    a = bench_torch(images, repository)
    print(f"a) PyTorch eager, in-process, batch 8:      {a:6.2f} images/s")
    b = bench_onnxruntime(images, repository)
    print(f"b) onnxruntime, in-process, batch 8:        {b:6.2f} images/s")
    with TritonServer(repository) as server:
        c1 = bench_triton(images, server.grpc_url, 1)
        print(f"c) Triton ensemble over gRPC, concurrency 1: {c1:6.2f} images/s")
        c8 = bench_triton(images, server.grpc_url, 8)
        print(f"c) Triton ensemble over gRPC, concurrency 8: {c8:6.2f} images/s")
    print(f"ratios: c8/b = {c8 / b:.2f}   c8/a = {c8 / a:.2f}   c1/b = {c1 / b:.2f}")


if __name__ == "__main__":
    main()
