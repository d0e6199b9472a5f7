"""Benchmark: OpenVINO vs ONNX Runtime on the MURA backbones, FP32 and INT8, in one run.

NVIDIA's CPU containers also ship Triton's OpenVINO backend, and PyPI has `openvino`: is it the
faster CPU runtime for these graphs? Each of the four demo backbones is exported as `msk export`
does (FP32) and quantized as `msk export --precision int8` does (INT8 QDQ), and the very same
ONNX files are timed on both runtimes with the same threads, batch and images (OpenVINO reads the
ONNX directly; its CPU plugin runs the QDQ graph in INT8). Prints images/s per runtime, the
OpenVINO/ORT ratio per row, and the largest probability difference between the runtimes (the
same graph must give the same answer). The ensemble rows run the four members in turn on each
runtime, and as `msk export --cpu-runtime openvino` serves them (the architectures in
`export.model_specs.OPENVINO_ARCHITECTURES` on OpenVINO, the rest on ORT). The decision is
recorded in bench/README.md.

    .venv/bin/python bench/bench_openvino.py [--images 16] [--batch 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_int8 import _images_per_s, _pixels, _session, export_pair  # noqa: E402


class OpenVinoBackbone:
    """One backbone opened as the `openvino` backend opens it (its OpenVinoSession: the same
    properties, the explicit precision read back) and compiled at a fixed batch, callable like
    an ORT session's `run` (what `_images_per_s` times)."""

    def __init__(self, path: Path, batch: int, image_size: int, threads: int) -> None:
        from msk.constants import OPENVINO_INFERENCE_PRECISION, PIXELS_TENSOR
        from server.backends.openvino.session import PRECISION_PARAMETER, OpenVinoSession

        self.session = OpenVinoSession(str(path), {
            "INFERENCE_NUM_THREADS": str(threads), "PERFORMANCE_HINT": "LATENCY",
            PRECISION_PARAMETER: OPENVINO_INFERENCE_PRECISION})
        self.session.warm([{"name": PIXELS_TENSOR, "dims": [3, image_size, image_size]}], [batch])

    def run(self, _names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        from msk.constants import PROBABILITY_TENSOR

        return self.session.run([PROBABILITY_TENSOR], feeds)


def _probabilities(runner, pixels: np.ndarray, batch: int) -> np.ndarray:
    from msk.constants import PIXELS_TENSOR, PROBABILITY_TENSOR

    return np.concatenate([runner.run([PROBABILITY_TENSOR], {PIXELS_TENSOR: pixels[i:i + batch]})[0]
                           for i in range(0, len(pixels), batch)])


def main() -> None:
    from msk.host import describe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="timed images (default 16)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--calibration-images", type=int, default=16,
                        help="synthetic calibration images for INT8 (default 16)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for both runtimes (default: all cores)")
    parser.add_argument("--image-size", type=int, default=320, help="input size (default 320)")
    args = parser.parse_args()
    if args.images % args.batch:
        parser.error("--images must be a multiple of --batch (OpenVINO runs a fixed batch)")
    import onnxruntime
    import openvino
    import torch

    from export.model_specs import OPENVINO_ARCHITECTURES
    from msk.constants import MURA_ARCHITECTURES, MURA_MEMBERS

    torch.set_flush_denormal(True)
    calibration = _pixels(args.calibration_images, args.image_size, seed=100)
    timed = _pixels(args.images, args.image_size, seed=0)
    print(f"# {describe()}, {os.cpu_count()} cores, "
          f"{args.threads} threads, batch {args.batch}, {args.images} images, "
          f"{args.image_size} px; onnxruntime {onnxruntime.__version__}, openvino "
          f"{openvino.__version__}; load average before: {os.getloadavg()}")
    runners: dict[tuple[str, str], list] = {}
    with tempfile.TemporaryDirectory(prefix="bench-openvino-") as tmp:
        for member in MURA_MEMBERS:
            fp32, int8, _ = export_pair(member, Path(tmp), args.image_size, calibration)
            for precision, path in (("FP32", fp32), ("INT8", int8)):
                ort_run = _session(path, args.threads)
                ov_run = OpenVinoBackbone(path, args.batch, args.image_size, args.threads)
                runners.setdefault(("ORT", precision), []).append(ort_run)
                runners.setdefault(("OpenVINO", precision), []).append(ov_run)
                chosen = MURA_ARCHITECTURES[member] in OPENVINO_ARCHITECTURES
                runners.setdefault(("chosen", precision), []).append(
                    ov_run if chosen else ort_run)
                r_ort = _images_per_s([ort_run], timed, args.batch)
                r_ov = _images_per_s([ov_run], timed, args.batch)
                diff = np.abs(_probabilities(ort_run, timed, args.batch)
                              - _probabilities(ov_run, timed, args.batch)).max()
                print(f"{member:14s} {precision}  ORT {r_ort:6.2f} img/s  OpenVINO {r_ov:6.2f} "
                      f"img/s  OpenVINO/ORT x{r_ov / r_ort:.2f}  max|dp| {diff:.4f}", flush=True)
        for precision in ("FP32", "INT8"):
            r_ort = _images_per_s(runners["ORT", precision], timed, args.batch)
            r_ov = _images_per_s(runners["OpenVINO", precision], timed, args.batch)
            r_mix = _images_per_s(runners["chosen", precision], timed, args.batch)
            print(f"{'ensemble':14s} {precision}  ORT {r_ort:6.2f} img/s  OpenVINO {r_ov:6.2f} "
                  f"img/s  OpenVINO/ORT x{r_ov / r_ort:.2f}  (four members in turn)", flush=True)
            print(f"{'ensemble':14s} {precision}  ORT {r_ort:6.2f} img/s  --cpu-runtime openvino "
                  f"{r_mix:6.2f} img/s  x{r_mix / r_ort:.2f}  ({', '.join(OPENVINO_ARCHITECTURES)}"
                  " on OpenVINO)", flush=True)
    print(f"# load average after: {os.getloadavg()} (other processes share these cores)")


if __name__ == "__main__":
    main()
