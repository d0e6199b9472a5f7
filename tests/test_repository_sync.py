"""The committed config.pbtxt files are exactly what export/configs.py generates (issue #2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.configs import render_mura_configs

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", sorted(render_mura_configs("cpu")))
def test_committed_config_is_generated(name):
    committed = ROOT / "model_repository" / name / "config.pbtxt"
    assert committed.is_file(), f"{committed} missing: run `msk export` and commit the config"
    assert committed.read_text() == render_mura_configs("cpu")[name], (
        f"{committed} differs from export/configs.py: regenerate it, never hand-edit it")


def test_built_repositories_use_the_committed_configs(demo_repository, tiny_repository):
    for repo in (demo_repository, tiny_repository):
        for name, text in render_mura_configs("cpu").items():
            assert (repo / name / "config.pbtxt").read_text() == text


def test_gpu_target_differs_only_where_it_must():
    cpu, gpu = render_mura_configs("cpu"), render_mura_configs("gpu")
    assert cpu.keys() == gpu.keys()
    assert 'platform: "tensorrt_plan"' in gpu["densenet169_a"]
    assert "KIND_GPU" in gpu["densenet169_a"] and "model_warmup" in gpu["densenet169_a"]
    assert "KIND_GPU" not in cpu["densenet169_a"]
    assert gpu["mura_ensemble"] == cpu["mura_ensemble"]
