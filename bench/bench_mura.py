"""Benchmark: MURA ensemble throughput, Triton over gRPC vs in-process baselines.

Measured in one run on the same images:
  peak) the machine's FP32 peak as achieved by a matrix product (numpy's BLAS, every core),
        against which every row's GFLOP/s is read (the ensemble's GFLOP per image is counted
        from the exported graphs: every Conv, Gemm and MatMul);
  a) the four backbones in PyTorch eager, one process, batches of 8 (the researcher's script,
     with flush-denormal on as a fair baseline: without it PyTorch is ~20 % slower here);
  b) the same exported ONNX graphs in-process with onnxruntime, batches of 8;
  c) the Triton ensemble over gRPC (uint8 image in, preprocessing on the server) at concurrency 1
     and 8, where the backbones' dynamic batcher forms the batches, with the configs
     `msk export` writes (`--cpu-cores` = this machine's cores);
  d) the same at concurrency 8 with the backbones quantized as `msk export --precision int8`
     quantizes them (static QDQ; speed only: the accuracy gate is exercised by tests and
     docs/int8.md, not here);
  e) d) with the configs of `msk export --cpu-runtime openvino` (DenseNet-169 on OpenVINO);
  f) d) with the configs of `msk export --precision int8 --cpu-runtime auto`: each INT8 backbone
     timed through tritonserver on every available runtime (`export.runtime_choice`), the fastest
     per backbone served;
  g) c) at concurrency 8 with the configs of `msk export --cpu-runtime auto` at FP32 (a copy).
Prints images/s, GFLOP/s and share of the peak for each, the ratios c8/b and c8/a, and images per
hour per CPU core at FP32 (c8) and INT8 (d8): the README's capacity table. Usage:
    .venv/bin/python bench/bench_mura.py [--images 24] [--repository DIR] [--no-int8]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    from msk.samples import radiograph

    rng = np.random.default_rng(seed)
    return [(radiograph(int(rng.integers(400, 900)), int(rng.integers(300, 700)), seed + i)
             * 255).astype(np.uint8) for i in range(n)]


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_torch(images, repository: Path) -> float:
    import torch

    torch.set_flush_denormal(True)

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


def int8_copy(repository: Path, out: Path) -> Path:
    """A copy of the repository whose newest backbones are quantized as `msk export --precision
    int8` quantizes them (calibrated on 16 synthetic radiographs through the server's graph)."""
    from export.mura_quantize import quantize_backbone
    from export.repository import latest_version
    from msk.constants import MURA_ARCHITECTURES, MURA_IMAGE_SIZE, MURA_MEMBERS
    from training.mura_preprocess import preprocess_mura

    shutil.copytree(repository, out)
    version = latest_version(out)
    calibration = np.stack([preprocess_mura(im, MURA_IMAGE_SIZE) for im in _images(16, seed=100)])
    for member in MURA_MEMBERS:
        path = out / member / str(version) / "model.onnx"
        quantize_backbone(path, path.with_name("int8.onnx"), MURA_ARCHITECTURES[member],
                          calibration)
        path.with_name("int8.onnx").replace(path)
    return out


def bench_runtime_auto(images, repository: Path, cores: int,
                       precision: str) -> tuple[float, dict[str, str]]:
    """Rewrite the repository's backbone configs as `--cpu-runtime auto` would (each backbone
    timed on each runtime through tritonserver at `precision`) and time the result at
    concurrency 8."""
    from functools import partial

    from export.repository import latest_version
    from export.runtime_choice import choose_runtimes, write_choice
    from msk.constants import MURA_IMAGE_SIZE, MURA_MEMBERS
    from server.launcher import TritonServer
    from server.serve import front_door

    version = latest_version(repository)
    graphs = {m: repository / m / str(version) / "model.onnx" for m in MURA_MEMBERS}
    choice = choose_runtimes(partial(TritonServer, startup_timeout=300), graphs,
                             precision=precision, cpu_cores=cores, cores_source="given",
                             image_size=MURA_IMAGE_SIZE)
    write_choice(repository, choice, MURA_IMAGE_SIZE)
    with front_door(repository) as server:
        return bench_triton(images, server.grpc_url, 8), dict(choice.runtimes)


def _row(label: str, ips: float, gflop: float, peak: float) -> None:
    print(f"{label:46s} {ips:6.2f} images/s  {ips * gflop:6.1f} GFLOP/s  "
          f"{ips * gflop / peak:6.1%} of peak")


def main() -> None:
    from msk.flops import graph_gflop, matmul_peak_gflops
    from msk.host import describe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="number of images (default 24)")
    parser.add_argument("--repository", type=Path, default=None,
                        help="existing demo repository (default: build one in a temp dir)")
    parser.add_argument("--no-int8", action="store_true", help="skip the INT8 row (d)")
    args = parser.parse_args()

    from export.configs import render_mura_configs, write_configs
    from export.repository import build_repository, latest_version
    from msk.constants import MURA_MEMBERS
    from server.serve import front_door

    cores = len(os.sched_getaffinity(0))
    peak = matmul_peak_gflops()         # first: before torch or ORT leave threads spinning
    work = Path(tempfile.mkdtemp(prefix="bench-mura-"))
    repository = args.repository or work / "fp32"
    build_repository(repository, cpu_cores=cores)
    images = _images(args.images)
    version = latest_version(repository)
    gflop = sum(graph_gflop(repository / m / str(version) / "model.onnx") for m in MURA_MEMBERS)
    print(f"machine: {platform.machine()} ({describe()}), {cores} cores, "
          f"Python {platform.python_version()}; "
          f"{len(images)} images of sizes 400-900 x 300-700; load average {os.getloadavg()}")
    print(f"peak) matrix product 2048^3 FP32: {peak:.1f} GFLOP/s; the ensemble costs "
          f"{gflop:.1f} GFLOP per image, so FP32 can reach at most {peak / gflop:.2f} images/s")
    b = bench_onnxruntime(images, repository)
    a = bench_torch(images, repository)
    _row("a) PyTorch eager, in-process, batch 8", a, gflop, peak)
    _row("b) onnxruntime, in-process, batch 8", b, gflop, peak)
    with front_door(repository) as server:
        c1 = bench_triton(images, server.grpc_url, 1)
        _row("c) Triton ensemble over gRPC, concurrency 1", c1, gflop, peak)
        c8 = bench_triton(images, server.grpc_url, 8)
        _row("c) Triton ensemble over gRPC, concurrency 8", c8, gflop, peak)
    print(f"ratios: c8/b = {c8 / b:.2f}   c8/a = {c8 / a:.2f}   c1/b = {c1 / b:.2f}   "
          f"(FP32 ceiling / a = {peak / gflop / a:.2f})")
    print(f"capacity: FP32 {c8 * 3600 / cores:,.0f} images/hour per CPU core")
    g8, chosen = bench_runtime_auto(images, shutil.copytree(repository, work / "fp32-auto"),
                                    cores, "fp32")
    _row("g) c) with --cpu-runtime auto, concurrency 8", g8, gflop, peak)
    print(f"chosen: {chosen}")
    print(f"ratios: g8/c8 = {g8 / c8:.2f}   g8/c1 = {g8 / c1:.2f}")
    if not args.no_int8:
        with front_door(int8_copy(repository, work / "int8")) as server:
            d8 = bench_triton(images, server.grpc_url, 8)
        _row("d) Triton ensemble, INT8 backbones, concurrency 8", d8, gflop, peak)
        print(f"ratios: d8/c8 = {d8 / c8:.2f}   d8/b = {d8 / b:.2f}   d8/a = {d8 / a:.2f}   "
              "(GFLOP/s counted as FP32 work)")
        print(f"capacity: INT8 {d8 * 3600 / cores:,.0f} images/hour per CPU core")
        write_configs(work / "int8", render_mura_configs("cpu", cpu_cores=cores,
                                                         cpu_runtime="openvino"))
        with front_door(work / "int8") as server:
            e8 = bench_triton(images, server.grpc_url, 8)
        _row("e) d) with --cpu-runtime openvino, concurrency 8", e8, gflop, peak)
        print(f"ratios: e8/d8 = {e8 / d8:.2f}   e8/c8 = {e8 / c8:.2f}   e8/a = {e8 / a:.2f}")
        print(f"capacity: INT8 + OpenVINO {e8 * 3600 / cores:,.0f} images/hour per CPU core")
        f8, chosen = bench_runtime_auto(images, work / "int8", cores, "int8")
        _row("f) d) with --cpu-runtime auto, concurrency 8", f8, gflop, peak)
        print(f"chosen: {chosen}")
        print(f"ratios: f8/c8 = {f8 / c8:.2f}   f8/d8 = {f8 / d8:.2f}   f8/e8 = {f8 / e8:.2f}")
        print(f"capacity: INT8 + runtime auto {f8 * 3600 / cores:,.0f} images/hour per CPU core")


if __name__ == "__main__":
    main()
