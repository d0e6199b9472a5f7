"""Benchmark: INT8 (ONNX Runtime QDQ) vs FP32 images/s, in-process, in one run.

For each of the four MURA backbones (demo weights, real DenseNet-169 / ResNet-101 at 320 px) the
FP32 graph is exported exactly as `msk export` does, quantized exactly as
`msk export --precision int8` does (`export.mura_quantize.quantize_backbone`, calibrated on
synthetic radiographs preprocessed by the server's graph), and both are timed with onnxruntime
on the same batches.
Then the whole ensemble (the four backbones in turn on each batch) FP32 vs INT8. Prints images/s
and the INT8/FP32 ratio per row, plus the load average (other processes skew the numbers).

Usage:
    .venv/bin/python bench/bench_int8.py [--images 16] [--batch 8] [--calibration-images 16]
        [--threads 2] [--architecture densenet169|resnet101 ...] [--image-size 320]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _pixels(n: int, image_size: int, seed: int) -> np.ndarray:
    """Synthetic radiographs of varied sizes, preprocessed by the server's own graph."""
    from msk.samples import radiograph
    from training.mura_preprocess import preprocess_mura

    rng = np.random.default_rng(seed)
    images = [(radiograph(int(rng.integers(400, 900)), int(rng.integers(300, 700)), seed + i)
               * 255).astype(np.uint8) for i in range(n)]
    return np.stack([preprocess_mura(im, image_size) for im in images]).astype(np.float32)


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options,
                                providers=["CPUExecutionProvider"])


def _images_per_s(sessions: list, pixels: np.ndarray, batch: int) -> float:
    """All `sessions` in turn on every batch (one warm-up batch first, not timed)."""
    from msk.constants import PIXELS_TENSOR

    for s in sessions:
        s.run(None, {PIXELS_TENSOR: pixels[:batch]})
    start = time.perf_counter()
    for i in range(0, len(pixels), batch):
        for s in sessions:
            s.run(None, {PIXELS_TENSOR: pixels[i:i + batch]})
    return len(pixels) / (time.perf_counter() - start)


def export_pair(member: str, folder: Path, image_size: int,
                calibration: np.ndarray) -> tuple[Path, Path, dict]:
    """One demo backbone as `msk export` writes it (FP32) and as `msk export --precision int8`
    writes it (INT8 QDQ): the two graphs every precision/runtime benchmark compares."""
    import torch

    from export.mura_backbone_export import export_backbone
    from export.mura_quantize import quantize_backbone
    from msk.constants import MURA_ARCHITECTURES, MURA_DEMO_SEED, MURA_MEMBERS
    from training.mura_models import build_backbone

    arch = MURA_ARCHITECTURES[member]
    model = build_backbone(arch, seed=MURA_DEMO_SEED + list(MURA_MEMBERS).index(member)).eval()
    fp32, int8 = folder / f"{member}.fp32.onnx", folder / f"{member}.int8.onnx"
    with torch.no_grad():
        export_backbone(model, fp32, image_size)
    return fp32, int8, quantize_backbone(fp32, int8, arch, calibration)


def main() -> None:
    from msk.host import describe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="timed images (default 16)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--calibration-images", type=int, default=16,
                        help="synthetic calibration images (default 16)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="ORT intra-op threads (default: all cores)")
    parser.add_argument("--image-size", type=int, default=320, help="input size (default 320)")
    parser.add_argument("--members", nargs="*", default=None,
                        help="members to measure (default: all four)")
    parser.add_argument("--compare-op-types", action="store_true",
                        help="also time the other operator choice (all ops vs Conv/Gemm/MatMul) "
                        "for the first member of each architecture")
    args = parser.parse_args()

    import torch

    from export.mura_quantize import ALL_OPS, CONV_OPS, quantize_backbone
    from msk.constants import MURA_ARCHITECTURES, MURA_MEMBERS

    torch.set_flush_denormal(True)
    members = args.members or list(MURA_MEMBERS)
    calibration = _pixels(args.calibration_images, args.image_size, seed=100)
    timed = _pixels(args.images, args.image_size, seed=0)
    print(f"# {describe()}, {os.cpu_count()} cores, "
          f"{args.threads} ORT threads, batch {args.batch}, {args.images} images, "
          f"{args.image_size} px; load average before: {os.getloadavg()}")
    compared: set[str] = set()
    fp32_sessions, int8_sessions = [], []
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        for member in members:
            arch = MURA_ARCHITECTURES[member]
            fp32, int8, info = export_pair(member, Path(tmp), args.image_size, calibration)
            s32, s8 = _session(fp32, args.threads), _session(int8, args.threads)
            fp32_sessions.append(s32)
            int8_sessions.append(s8)
            r32 = _images_per_s([s32], timed, args.batch)
            r8 = _images_per_s([s8], timed, args.batch)
            print(f"{member:14s} {arch:12s} ops={str(info['op_types']):28s} FP32 {r32:6.2f} "
                  f"img/s  INT8 {r8:6.2f} img/s  x{r8 / r32:.2f}", flush=True)
            if args.compare_op_types and arch not in compared:
                compared.add(arch)
                other = CONV_OPS if info["op_types"] == ALL_OPS else ALL_OPS
                alt = Path(tmp) / f"{member}.alt.onnx"
                quantize_backbone(fp32, alt, arch, calibration, op_types=other)
                ra = _images_per_s([_session(alt, args.threads)], timed, args.batch)
                print(f"{'  (other)':14s} {arch:12s} ops={str(other):28s} FP32 {r32:6.2f} "
                      f"img/s  INT8 {ra:6.2f} img/s  x{ra / r32:.2f}", flush=True)
        e32 = _images_per_s(fp32_sessions, timed, args.batch)
        e8 = _images_per_s(int8_sessions, timed, args.batch)
    print(f"{'ensemble':14s} {len(members)} members in turn{'':27s} FP32 {e32:6.2f} img/s  "
          f"INT8 {e8:6.2f} img/s  x{e8 / e32:.2f}")
    print(f"# load average after: {os.getloadavg()} (other processes share these cores)")


if __name__ == "__main__":
    main()
