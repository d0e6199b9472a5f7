"""Benchmark: `wrist_detect` over gRPC vs the Ultralytics predictor in-process, same images.

Both sides run the whole pipeline on raw radiographs: study preprocessing (OpenCV in-process, the
ONNX graph on the server), both detectors, NMS, boxes back to original pixels. By default the
detectors are untrained yolo11n at the serving size (1408 x 768), which costs exactly what trained
ones cost; `--joints/--bones` benchmark trained `.pt` files instead. Prints images/s for both and
the ratio (server / in-process), measured in the same run; the in-process predictor gets the same
thread budget as the server's ORT sessions.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def untrained_checkpoint(path: Path, names: tuple[str, ...], imgsz: int = 1400) -> Path:
    """A yolo11n checkpoint with random weights, the given classes and training size."""
    from training.wrist_train import ultralytics_offline

    ultralytics_offline()
    import torch
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolo11n.yaml", nc=len(names), verbose=False)
    model.names = dict(enumerate(names))
    torch.save({"model": model, "train_args": {"imgsz": imgsz}, "epoch": -1}, path)
    return path


def main(argv: list[str] | None = None) -> int:
    from msk.constants import WRIST_BONE_CLASSES, WRIST_JOINT_CLASSES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="timed images per side")
    parser.add_argument("--joints", type=Path, help="trained joints detector (.pt)")
    parser.add_argument("--bones", type=Path, help="trained bones detector (.pt)")
    parser.add_argument("--concurrency", type=int, default=2,
                        help="parallel gRPC requests in the second server run")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(2)
    from clients.wrist import WristClient
    from export.wrist_repository import write_wrist_models
    from server.launcher import TritonServer
    from training.wrist_evaluate import InProcessWristPipeline
    from training.wrist_synthetic import make_wrist

    with tempfile.TemporaryDirectory(prefix="bench-wrist-") as tmp:
        work = Path(tmp)
        weights = {
            "joints": args.joints or untrained_checkpoint(work / "joints.pt", WRIST_JOINT_CLASSES),
            "bones": args.bones or untrained_checkpoint(work / "bones.pt", WRIST_BONE_CLASSES),
        }
        repo = work / "repository"
        repo.mkdir()
        write_wrist_models(repo, weights, version=1)
        images = [make_wrist(500 + i, 0).image for i in range(args.images)]
        local = InProcessWristPipeline(weights)
        local.detect(images[0])                                   # warm-up
        start = time.perf_counter()
        for img in images:
            local.detect(img)
        local_ips = len(images) / (time.perf_counter() - start)

        with TritonServer(repo) as server, WristClient(server.grpc_url) as client:
            client.detect([images[0]])                            # warm-up
            start = time.perf_counter()
            results = client.detect(images)
            served_ips = len(images) / (time.perf_counter() - start)
            errors = [r.error for r in results if r.error]
            start = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(lambda im: WristClient(server.grpc_url).detect([im]), images))
            concurrent_ips = len(images) / (time.perf_counter() - start)

    size = f"{images[0].shape[0]}x{images[0].shape[1]}"
    summary = {"images": len(images), "first_image": size, "inprocess_ips": local_ips,
               "triton_grpc_ips": served_ips, f"triton_grpc_c{args.concurrency}_ips":
               concurrent_ips, "ratio": served_ips / local_ips,
               "ratio_concurrent": concurrent_ips / local_ips, "errors": errors,
               "weights": "trained" if args.joints else "untrained yolo11n (timing only)"}
    print(json.dumps(summary))
    print(f"bench-wrist: in-process {local_ips:.2f} img/s, triton gRPC {served_ips:.2f} img/s "
          f"(c{args.concurrency}: {concurrent_ips:.2f}), ratio={served_ips / local_ips:.2f}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
