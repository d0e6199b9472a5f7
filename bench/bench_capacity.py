"""The capacity model of docs/scale-out.md, checked against a measurement on one replica.

    .venv/bin/python bench/bench_capacity.py                              # model_repository/
    .venv/bin/python bench/bench_capacity.py --repository DIR --arrivals 60

The model sizes a fleet from two numbers measured on one replica: its throughput mu (images/s,
closed loop at concurrency 8) and its single-image latency S (concurrency 1). At utilisation
rho = lambda / mu it predicts the p99 response time p99 ~= 4.6 * S / (1 - rho) (each replica
treated as an M/M/1 queue: pessimistic for a fixed-size network's nearly constant service time;
the model is msk/capacity.py, the load clients/load.py, both shared with `msk bench`).
This script measures mu and S, then offers open-loop Poisson arrivals at rho = 0.5 and 0.8 (the
way a PACS sends studies: arrivals do not wait for answers) and prints, per rho, the measured
p50/p99 beside the model's p99 and their ratio (<= 1: the model is on the safe side). The
baseline (mu, S) is measured in the same run. Research use only - not a medical device.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clients.load import closed_loop, make_images, open_loop, score_checked  # noqa: E402
from clients.mura import MuraClient  # noqa: E402
from msk.capacity import p99_model  # noqa: E402
from server.serve import front_door  # noqa: E402


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
        mu = closed_loop(client, images * 2, 8).images_per_s
        print(f"baseline: S = {service_s:.3f} s alone, mu = {mu:.2f} images/s at concurrency 8",
              flush=True)
        for rho in args.rho:
            latencies, rejected = open_loop(client, images, rho * mu, args.arrivals,
                                            args.seed + 1)
            predicted = p99_model(service_s, rho)
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
