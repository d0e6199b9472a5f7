"""The bench scripts this project's numbers come from run end to end (short modes; no timing is
asserted): the front door's cost against a bare tritonserver, and the prepared GPU check in its
CPU mode (the GPU machine is lent only sometimes; the script must be ready when it is)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


def test_bench_front_door_prints_the_ratios_of_one_run(tiny_repository: Path) -> None:
    done = _run("bench_front_door.py", "--repository", str(tiny_repository), "--requests", "4",
                "--rounds", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ISA:" in done.stdout.splitlines()[0]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(summary["door_over_bare"]) == {"c1", "c8"}
    assert all(ratio > 0 for ratio in summary["door_over_bare"].values())
    assert set(summary["first_over_p50"]) == {"bare", "msk serve"}


def test_bench_gpu_fp16_is_ready_and_refuses_clearly_without_a_gpu() -> None:
    done = _run("bench_gpu_fp16.py", "--device", "cpu", "--dtype", "float32", "--batches", "1",
                "2", "--iterations", "1", "--image-size", "64")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(summary["ensemble_images_per_s"]) == {"1", "2"}
    import torch

    if not torch.cuda.is_available():
        refused = _run("bench_gpu_fp16.py")
        assert refused.returncode == 2 and "no CUDA device here" in refused.stderr


def test_bench_ood_separates_clearly_foreign_images() -> None:
    """Issue 21, item 4: members trained on the synthetic radiographs (tiny stand-ins, the
    script's default), exported with the OOD statistics of their training images; held-out
    synthetic radiographs against photographs, rendered text and flat/noise images."""
    done = _run("bench_ood.py", "--out", str(ROOT / ".cache" / "bench-ood-ci"))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert "ISA:" in lines[0]
    rows = {r["kind"]: r for r in map(json.loads, (x for x in lines if x.startswith('{"kind"')))}
    assert {"photographs", "text", "flat_noise", "chest_like", "ct_like", "inverted"} <= set(rows)
    for kind in ("photographs", "text", "flat_noise"):
        assert rows[kind]["auroc_ood_score"] >= 0.95, rows[kind]
    setup = json.loads(lines[1])
    assert setup["flagged_in_distribution"] <= 0.1, setup      # 1 % stated; 57 images
    assert lines[-1].startswith("bench-ood: min_foreign_auroc=")
