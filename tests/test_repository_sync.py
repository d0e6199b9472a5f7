"""Every committed config.pbtxt is exactly what the one renderer writes from the one description.

Committed: model_repository/<model>/config.pbtxt (cpu MURA, served from the checkout after `msk
export`) and export/generated/<target>/<model>/config.pbtxt (both families, both targets). The
wrist configs cannot sit in model_repository/ itself: Triton refuses to start when a model folder
has no version, and the checkout's repository has wrist versions only after a wrist export.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from export.configs import (
    committed_configs,
    queue_policy,
    render_mura_configs,
    render_wrist_configs,
)
from export.gpu_repository import assemble_gpu_repository
from export.model_specs import BATCHED, all_specs
from msk.constants import MURA_MEMBERS, WRIST_POSTPROCESS_MODEL

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = committed_configs()
REGENERATE = "regenerate with `python -m export.configs`, never hand-edit"


@pytest.mark.parametrize("rel", sorted(COMMITTED, key=str), ids=str)
def test_committed_config_is_generated(rel: Path) -> None:
    committed = ROOT / rel
    assert committed.is_file(), f"{committed} missing: {REGENERATE}, and commit it"
    assert committed.read_text() == COMMITTED[rel], f"{committed} differs: {REGENERATE}"


def test_the_generator_writes_exactly_the_committed_tree(tmp_path: Path) -> None:
    """`python -m export.configs` into a temp dir gives the committed files, and nothing more
    is committed under export/generated (a model that left the description leaves no config)."""
    res = subprocess.run([sys.executable, "-m", "export.configs", "--root", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("config.pbtxt")}
    assert written == set(COMMITTED)
    for rel in written:
        assert (tmp_path / rel).read_text() == (ROOT / rel).read_text(), rel
    generated = {p.relative_to(ROOT) for p in (ROOT / "export" / "generated").rglob("*")
                 if p.is_file()}
    assert generated <= written, f"stale files under export/generated: {generated - written}"


def test_side_by_side_models_share_the_hosts_cores_as_ort_threads() -> None:
    """The thread rule of export.model_specs: the four backbones and the two detectors split
    the serving host's cores (at least one thread each); other models and the gpu target keep
    the runtime's default."""
    from export.model_specs import intra_op_threads

    assert [intra_op_threads(cores, 4) for cores in (1, 2, 3, 4, 8, 16, 30)] == \
        [1, 1, 1, 1, 2, 4, 7]
    with pytest.raises(ValueError):
        intra_op_threads(0, 4)
    param = 'key: "intra_op_thread_count" value: { string_value: "%s" }'
    for cores, backbone, detector in ((2, "1", "1"), (8, "2", "4"), (16, "4", "8")):
        mura = render_mura_configs("cpu", cpu_cores=cores)
        wrist = render_wrist_configs("cpu", 1408, 768, cpu_cores=cores)
        for member in MURA_MEMBERS:
            assert param % backbone in mura[member]
        for detector_model in ("wrist_joints", "wrist_bones"):
            assert param % detector in wrist[detector_model]
        assert "intra_op_thread_count" not in mura["mura_preprocess"] + mura["mura_mean"]
    gpu = render_mura_configs("gpu", cpu_cores=16) | render_wrist_configs("gpu", 1408, 768)
    assert not any("intra_op_thread_count" in text for text in gpu.values())


def test_built_repositories_use_the_committed_configs(demo_repository, tiny_repository) -> None:
    for repo in (demo_repository, tiny_repository):
        for name, text in render_mura_configs("cpu").items():
            assert (repo / name / "config.pbtxt").read_text() == text
            assert text == (ROOT / "export" / "generated" / "cpu" / name / "config.pbtxt"
                            ).read_text()


def test_the_wrist_export_writes_the_rendered_configs(wrist_repository: Path) -> None:
    """The CI detectors are exported at their training size: the renderer at that size."""
    params = json.loads(next((wrist_repository / WRIST_POSTPROCESS_MODEL).glob(
        "[0-9]*/params.json")).read_text())
    expected = render_wrist_configs("cpu", params["in_h"], params["in_w"])
    for name, text in expected.items():
        assert (wrist_repository / name / "config.pbtxt").read_text() == text, name
    model_py = next((wrist_repository / WRIST_POSTPROCESS_MODEL).glob("[0-9]*/model.py"))
    assert model_py.read_text() == (
        ROOT / "export" / "python_models" / "wrist_postprocess.py").read_text()


def test_gpu_repository_from_both_families(tiny_repository: Path, wrist_repository: Path,
                                           tmp_path: Path) -> None:
    """The container-side GPU assembler renders the same gpu configs as `msk export --target
    gpu` for every pipeline the source holds (wrist at its detectors' size)."""
    source = tmp_path / "cpu"
    for repo in (tiny_repository, wrist_repository):
        shutil.copytree(repo, source, dirs_exist_ok=True)
    configs = assemble_gpu_repository(source, tmp_path / "gpu")
    params = json.loads(next((source / WRIST_POSTPROCESS_MODEL).glob(
        "[0-9]*/params.json")).read_text())
    expected = render_mura_configs("gpu") | render_wrist_configs("gpu", params["in_h"],
                                                                 params["in_w"])
    assert configs == expected
    # The compose `engines` command, run without numpy (the TensorRT container need not have it).
    no_numpy = ("import sys; sys.modules['numpy'] = None; from export.gpu_repository import main; "
                "sys.exit(main(sys.argv[1:]))")
    res = subprocess.run([sys.executable, "-c", no_numpy, "--source", str(source),
                          "--out", str(tmp_path / "gpu2")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"{len(expected)} models" in res.stderr
    for name, text in expected.items():
        assert (tmp_path / "gpu2" / name / "config.pbtxt").read_text() == text
    assert (tmp_path / "gpu2" / "wrist_joints" / "1" / "model.onnx").is_file()


def test_one_policy_for_both_families() -> None:
    """Where the two families used to disagree, one rule now holds for every model."""
    specs = all_specs()
    batched = [s for s in specs if s.max_batch_size]
    assert {s.name for s in batched} >= {"densenet169_a", "wrist_joints", "wrist_bones"}
    assert all(s.batching == BATCHED for s in batched)
    committed = committed_configs()
    for target in ("cpu", "gpu"):
        for spec in specs:
            text = committed[Path("export/generated") / target / spec.name / "config.pbtxt"]
            if spec.is_ensemble:
                assert "instance_group" not in text and "version_policy" not in text
                assert text.count("model_version: -1") == len(spec.steps)
                continue
            assert queue_policy() in text, spec.name
            assert "version_policy: { latest: { num_versions: 2 } }" in text, spec.name
            kind = "KIND_GPU" if target == "gpu" and not spec.cpu_only else "KIND_CPU"
            assert f"instance_group [ {{ count: 1 kind: {kind} }} ]" in text, spec.name
            assert ("model_warmup" in text) == (target == "gpu" and spec.max_batch_size > 0)


def test_gpu_target_differs_only_where_it_must() -> None:
    cpu, gpu = render_mura_configs("cpu"), render_mura_configs("gpu")
    assert cpu.keys() == gpu.keys()
    assert 'platform: "tensorrt_plan"' in gpu["densenet169_a"]
    assert "KIND_GPU" in gpu["densenet169_a"] and "model_warmup" in gpu["densenet169_a"]
    assert "KIND_GPU" not in cpu["densenet169_a"]
    assert gpu["mura_ensemble"] == cpu["mura_ensemble"]
    wrist_cpu, wrist_gpu = (render_wrist_configs(t, 1408, 768) for t in ("cpu", "gpu"))
    assert 'backend: "onnxruntime"' in wrist_gpu["wrist_joints"]   # no engine for detectors
    assert "KIND_CPU" in wrist_gpu[WRIST_POSTPROCESS_MODEL]        # numpy: CPU everywhere
    assert wrist_gpu["wrist_detect"] == wrist_cpu["wrist_detect"]
