"""`msk bench`, run the way a user runs it: `.venv/bin/msk bench --short ...` from a working
directory with relative paths, against the real tritonserver behind `msk serve`'s front door.

No assertion on time: the numbers are checked for what they must be whatever the host (present,
positive, consistent with each other and with the capacity model), and each recommendation for
agreeing with the numbers it cites. Bounded: two tiny repositories in short mode.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest

from export.configs import render_mura_configs, write_configs
from export.model_specs import OPENVINO_ARCHITECTURES, intra_op_threads
from msk import RESEARCH_USE_NOTICE
from msk.capacity import (
    DEFAULT_UTILISATION,
    busy_replicas,
    images_per_hour_per_core,
    p99_model,
)
from msk.constants import MURA_ARCHITECTURES, MURA_MEMBERS
from msk.flops import SHORT_PEAK_SIZE
from msk.host import isa
from tests.msk_process import run_msk

pytestmark = pytest.mark.timeout(300)

FLAGS = ("--repository", "--concurrency", "--requests", "--short", "--json",
         "--target-images-per-hour", "--utilisation")


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_repository: Path) -> Path:
    """A user's folder with the tiny repository as `model_repository` and a copy whose
    DenseNet-169 members run on OpenVINO with 2 threads per backbone (what `msk export
    --cpu-cores 8 --cpu-runtime openvino` renders)."""
    home = tmp_path_factory.mktemp("bench-user")
    shutil.copytree(tiny_repository, home / "model_repository")
    shutil.copytree(tiny_repository, home / "openvino")
    write_configs(home / "openvino", render_mura_configs("cpu", cpu_cores=8,
                                                         cpu_runtime="openvino"))
    return home


@pytest.fixture(scope="module")
def report(home: Path) -> tuple[dict, str, str]:
    done = run_msk("bench", "--short", "--repository", "model_repository",
                   "--repository", "openvino", "--concurrency", "4", "--requests", "8",
                   "--target-images-per-hour", "50000", "--utilisation", "0.7",
                   "--json", "out/bench.json", cwd=home, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((home / "out" / "bench.json").read_text()), done.stdout, done.stderr


def test_summary_names_the_host_the_peak_and_the_notice(report) -> None:
    data, stdout, stderr = report
    assert RESEARCH_USE_NOTICE in stdout
    assert f"ISA: {', '.join(isa()) or 'none listed'}" in stdout
    assert re.search(r"matrix-product peak \(numpy FP32, 1024\^3\): [\d.]+ GFLOP/s", stdout)
    assert "recommended --cpu-cores" in stdout and "recommended --cpu-runtime" in stdout
    assert "JSON report: out/bench.json" in stdout
    assert "100%" in stderr and "req" in stderr               # the progress bar, on stderr
    assert data["notice"] == RESEARCH_USE_NOTICE


def test_report_host_versions_and_peak(report) -> None:
    data, _, _ = report
    host = data["host"]
    assert host["cores"] == len(os.sched_getaffinity(0))
    assert host["isa"] == isa() and isinstance(host["native_bf16"], bool)
    assert data["versions"]["tritonserver"] and data["versions"]["msk_triton"]
    peak = data["matmul_peak"]
    assert peak["size"] == SHORT_PEAK_SIZE and peak["gflops_before"] > 0
    assert peak["gflops"] == max(peak["gflops_before"], peak["gflops_after"])
    settings = data["settings"]
    assert settings["short"] and settings["concurrency"] == 4
    assert settings["requests_at_concurrency"] == 8 and settings["utilisation"] == 0.7


def test_every_repository_has_consistent_numbers(report) -> None:
    data, _, _ = report
    cores = data["host"]["cores"]
    paths = [r["path"] for r in data["repositories"]]
    assert paths == ["model_repository", "openvino"]
    for repo in data["repositories"]:
        assert repo["precision"] == "fp32" and repo["weights"] == "tiny-stand-in"
        runs = repo["runs"]
        assert [r["concurrency"] for r in runs] == [1, 4]
        assert runs[1]["requests"] == 8
        for run in runs:
            assert 0 < run["p50_s"] <= run["p99_s"]
            assert run["images_per_s"] == pytest.approx(run["requests"] / run["elapsed_s"])
        assert repo["images_per_s"] == runs[1]["images_per_s"]
        assert repo["images_per_hour_per_core"] == pytest.approx(
            repo["images_per_s"] * 3600 / cores)
        share = repo["share_of_peak"]
        assert share["value"] is None and "stand-in" in share["note"]   # tiny: no fake share
        on_openvino = {b["member"]: b["runtime"] == "openvino" for b in repo["backbones"]}
        assert on_openvino == {m: repo["path"] == "openvino"
                               and MURA_ARCHITECTURES[m] in OPENVINO_ARCHITECTURES
                               for m in MURA_MEMBERS}
        assert repo["cpu_runtime"] == ("openvino" if repo["path"] == "openvino"
                                       else "onnxruntime")


def test_recommendations_follow_from_the_measurement(report) -> None:
    data, _, _ = report
    cores = data["host"]["cores"]
    by_path = {r["path"]: r for r in data["repositories"]}
    for repo in data["repositories"]:
        recs = repo["recommendations"]
        assert all(rec["reason"] for rec in recs.values())
        assert recs["cpu_cores"]["value"] == cores
        matches = all(b["threads"] == intra_op_threads(cores, len(MURA_MEMBERS))
                      for b in repo["backbones"])
        assert ("already give each backbone" in recs["cpu_cores"]["reason"]) == matches
        if not matches:
            assert f"msk export --cpu-cores {cores}" in recs["cpu_cores"]["reason"]
        runtime = recs["cpu_runtime"]
        other = by_path["openvino" if repo["path"] == "model_repository" else
                        "model_repository"]
        assert runtime["measured"] is True                     # the same graphs, other runtime
        switch = other["images_per_s"] > 1.05 * repo["images_per_s"]
        assert runtime["value"] == (other["cpu_runtime"] if switch else repo["cpu_runtime"])
        replicas = recs["replicas"]
        mu, rho = repo["images_per_s"], 0.7
        busy = busy_replicas(50000 / 3600, mu, rho)
        assert replicas["busy"] == busy and replicas["value"] == busy + replicas["spare"]
        assert replicas["value"] >= 2
        assert replicas["service_s"] == repo["runs"][0]["p50_s"]
        assert replicas["p99_model_s"] == pytest.approx(p99_model(replicas["service_s"], rho))


def test_precision_rows_say_what_was_measured_and_why_not(report) -> None:
    data, _, _ = report
    rows = data["precisions"]
    best = max(data["repositories"], key=lambda r: r["images_per_s"])
    assert rows["fp32"]["available"] and rows["fp32"]["repository"] == best["path"]
    assert rows["fp32"]["full_size"] is False                 # tiny stand-ins, and it says so
    assert rows["fp32"]["images_per_hour_per_core"] == pytest.approx(
        best["images_per_hour_per_core"])
    assert not rows["int8"]["available"] and "--precision int8" in rows["int8"]["reason"]
    assert not rows["bf16"]["available"] and "native BF16" in rows["bf16"]["reason"]


def test_help_lists_every_flag(home: Path) -> None:
    done = run_msk("bench", "--help", cwd=home)
    assert done.returncode == 0
    for flag in FLAGS:
        assert flag in done.stdout, flag


def test_unusable_repositories_are_refused_before_measuring(home: Path,
                                                            tiny_repository: Path) -> None:
    (home / "empty").mkdir()
    done = run_msk("bench", "--short", "--repository", "empty", "--json", "refused.json",
                   cwd=home)
    assert done.returncode == 2
    assert "empty holds no complete MURA version" in done.stderr
    assert "matrix-product peak" not in done.stderr and not (home / "refused.json").exists()
    shutil.copytree(tiny_repository, home / "stray")
    (home / "stray" / MURA_MEMBERS[0] / "7").mkdir()        # a version the others lack
    done = run_msk("bench", "--short", "--repository", "model_repository", "--repository",
                   "stray", cwd=home)
    assert done.returncode == 2
    assert "stray is inconsistent" in done.stderr and "matrix-product peak" not in done.stderr
    bad = run_msk("bench", "--utilisation", "1.5", cwd=home)
    assert bad.returncode == 2 and "--utilisation" in bad.stderr


def test_capacity_model_arithmetic() -> None:
    """docs/scale-out.md's formulas: N = ceil(lambda / (rho mu)), p99 = 4.6 S / (1 - rho)."""
    assert busy_replicas(1.2, 1.0, 0.6) == 2                   # 1.2 / 0.6 = 2 exactly
    assert busy_replicas(1.21, 1.0, 0.6) == 3
    assert busy_replicas(0.0, 5.0) == 1                       # never fewer than one
    assert p99_model(0.6, 0.6) == pytest.approx(6.9)
    assert images_per_hour_per_core(2.0, 4) == 1800
    assert DEFAULT_UTILISATION == 0.6
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError):
            busy_replicas(1.0, 1.0, bad)
    assert math.isfinite(p99_model(1.0, 0.99))


def test_precision_rows_prefer_the_study_networks_over_stand_ins() -> None:
    """A fast tiny stand-in never becomes the FP32 figure when a study-size export was measured
    in the same run (pure function over measured numbers; nothing served)."""
    from types import SimpleNamespace

    from clients.load import ClosedLoop
    from msk.commands._bench_report import Measured, precision_rows

    def measured(path: str, full_size: bool, per_s: float) -> Measured:
        served = SimpleNamespace(path=Path(path), precision="fp32", full_size=full_size,
                                 cpu_runtime="onnxruntime")
        return Measured(served, "2.51.0", (ClosedLoop(8, 8, 8 / per_s, (0.1,) * 8),))

    rows = precision_rows([measured("tiny", False, 40.0), measured("demo", True, 1.5)], 2,
                          False)
    assert rows["fp32"]["repository"] == "demo" and rows["fp32"]["full_size"] is True
    assert rows["fp32"]["images_per_hour_per_core"] == pytest.approx(1.5 * 3600 / 2)
    assert precision_rows([measured("tiny", False, 40.0)], 2, False)["fp32"]["full_size"] is False
