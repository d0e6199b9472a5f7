"""FP16 throughput of the four MURA backbones on a GPU, at batch 1/8/32/64: the prepared GPU check.

    python bench/bench_gpu_fp16.py                      # on a GPU host (CUDA PyTorch)
    python bench/bench_gpu_fp16.py --device cpu --dtype float32 --batches 1 2 --iterations 1

Why this and not Triton with TensorRT: the GPU machine this project is sometimes lent has CUDA
PyTorch but neither TensorRT nor onnxruntime-gpu, so the `--target gpu` repository (TensorRT
plans) cannot be served there. The nearest its software allows is the same backbones, in the
same precision the engines run (FP16), channels-last, timed with CUDA events after a warm-up -
an upper bound of what the engines' compute costs, not a measurement of Triton. It prints the
device, then images/s per member and batch, and the ensemble (all four in turn) per batch; every
number is from this run. bench/README.md records it with the device. Research use only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _time(model, batch: int, size: int, device, dtype, iterations: int) -> float:
    """Images per second of `model` on random input (seconds from CUDA events on a GPU)."""
    import torch

    x = torch.rand(batch, 3, size, size, device=device, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iterations):
                model(x)
            end.record()
            torch.cuda.synchronize()
            seconds = start.elapsed_time(end) / 1000
        else:
            began = time.perf_counter()
            for _ in range(iterations):
                model(x)
            seconds = time.perf_counter() - began
    return batch * iterations / seconds


def main() -> int:
    import torch

    from msk.constants import MURA_ARCHITECTURES, MURA_IMAGE_SIZE, MURA_MEMBERS
    from training.mura_models import build_backbone

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=MURA_IMAGE_SIZE)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu_fp16: no CUDA device here; run it on a GPU host (or --device cpu "
              "--dtype float32 to check the script)", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# {name}; torch {torch.__version__}; {args.dtype}; {args.image_size} px; "
          f"{args.iterations} iterations per row", flush=True)
    models = {m: build_backbone(MURA_ARCHITECTURES[m], seed=i).eval().to(device, dtype)
              .to(memory_format=torch.channels_last) for i, m in enumerate(MURA_MEMBERS)}
    rows: dict[str, dict[int, float]] = {}
    for member, model in models.items():
        rows[member] = {b: _time(model, b, args.image_size, device, dtype, args.iterations)
                        for b in args.batches}
        print(f"{member}: " + ", ".join(f"b{b} {r:.1f}" for b, r in rows[member].items())
              + " images/s", flush=True)
    ensemble = {b: 1 / sum(1 / rows[m][b] for m in models) for b in args.batches}
    print("\n| member | " + " | ".join(f"batch {b}" for b in args.batches) + " |")
    print("|---|" + "---:|" * len(args.batches))
    for label, rates in [*rows.items(), ("ensemble (four in turn)", ensemble)]:
        print(f"| {label} | " + " | ".join(f"{rates[b]:.1f}" for b in args.batches) + " |")
    print(json.dumps({"device": name, "dtype": args.dtype,
                      "ensemble_images_per_s": {str(b): round(r, 2) for b, r in ensemble.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
