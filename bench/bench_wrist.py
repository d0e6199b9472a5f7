"""Benchmark: `wrist_detect` over gRPC vs the Ultralytics predictor in-process, same images.

Both sides run the whole pipeline on raw radiographs: study preprocessing (OpenCV in-process, the
ONNX graph on the server), both detectors, NMS, boxes back to original pixels. By default the
detectors are untrained yolo11n at the serving size (1408 x 768), which costs exactly what trained
ones cost; `--joints/--bones` benchmark trained `.pt` files instead. Prints images/s for both and
the ratio (server / in-process), measured in the same run; the in-process predictor gets the same
thread budget as the server's ORT sessions (every core), and the server's configs are rendered
for this machine's cores as `msk export --cpu-cores` would. The boxes of both sides are compared
on every timed image (same classes, largest coordinate difference in pixels): a faster server
that answered differently would not count.
"""

from __future__ import annotations

import argparse
import json
import os
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
    from msk.constants import WRIST_BONE_CLASSES, WRIST_CONF_THRESHOLD, WRIST_JOINT_CLASSES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="timed images per side")
    parser.add_argument("--joints", type=Path, help="trained joints detector (.pt)")
    parser.add_argument("--bones", type=Path, help="trained bones detector (.pt)")
    parser.add_argument("--concurrency", type=int, default=2,
                        help="parallel gRPC requests in the second server run")
    parser.add_argument("--conf", type=float, default=WRIST_CONF_THRESHOLD,
                        help="score threshold of both sides (default: the served one); briefly "
                        "trained detectors need a lower one to give boxes to compare")
    args = parser.parse_args(argv)

    import torch

    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    from clients.wrist import WristClient
    from export.wrist_repository import write_wrist_models
    from server.serve import front_door
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
        write_wrist_models(repo, weights, version=1, cpu_cores=cores, conf=args.conf)
        images = [make_wrist(500 + i, 0).image for i in range(args.images)]
        local = InProcessWristPipeline(weights, conf=args.conf)
        local.detect(images[0])                                   # warm-up
        start = time.perf_counter()
        expected = [local.detect(img) for img in images]
        local_ips = len(images) / (time.perf_counter() - start)

        with front_door(repo) as server, WristClient(server.grpc_url) as client:
            client.detect([images[0]])                            # warm-up
            start = time.perf_counter()
            results = client.detect(images)
            served_ips = len(images) / (time.perf_counter() - start)
            errors = [r.error for r in results if r.error]
            boxes, box_diff, mismatched = _compare(expected, results)
            start = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(lambda im: WristClient(server.grpc_url).detect([im]), images))
            concurrent_ips = len(images) / (time.perf_counter() - start)

    size = f"{images[0].shape[0]}x{images[0].shape[1]}"
    summary = {"images": len(images), "first_image": size, "inprocess_ips": local_ips,
               "triton_grpc_ips": served_ips, f"triton_grpc_c{args.concurrency}_ips":
               concurrent_ips, "ratio": served_ips / local_ips,
               "ratio_concurrent": concurrent_ips / local_ips, "errors": errors,
               "boxes": boxes, "max_box_diff_px": box_diff, "images_with_other_boxes": mismatched,
               "weights": "trained" if args.joints else "untrained yolo11n (timing only)"}
    print(json.dumps(summary))
    print(f"bench-wrist: in-process {local_ips:.2f} img/s, triton gRPC {served_ips:.2f} img/s "
          f"(c{args.concurrency}: {concurrent_ips:.2f}), ratio={served_ips / local_ips:.2f}; "
          f"{boxes} boxes, max difference {box_diff:.4f} px, {mismatched} images with other "
          "boxes")
    return 1 if errors or mismatched else 0


def _compare(expected: list[list[tuple]], results: list) -> tuple[int, float, int]:
    """(boxes compared, largest |coordinate difference| in px, images whose classes or box
    counts differ) between the in-process predictor and the served ensemble."""
    boxes, worst, mismatched = 0, 0.0, 0
    for local, served in zip(expected, results, strict=True):
        got = [(d.class_name, d.x1, d.y1, d.x2, d.y2) for d in served.detections]
        want = [(name, *xyxy) for name, _score, *xyxy in local]
        if sorted(g[0] for g in got) != sorted(w[0] for w in want):
            mismatched += 1
            continue
        for name in {w[0] for w in want}:
            a = sorted(w[1:] for w in want if w[0] == name)
            b = sorted(g[1:] for g in got if g[0] == name)
            worst = max([worst, *(abs(x - y) for p, q in zip(a, b, strict=True)
                                  for x, y in zip(p, q, strict=True))])
            boxes += len(a)
    return boxes, worst, mismatched


if __name__ == "__main__":
    sys.exit(main())
