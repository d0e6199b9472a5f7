"""`msk export --cpu-runtime openvino`: DenseNet-169 backbones served by Triton's OpenVINO backend.

The real demo repository (DenseNet-169 and ResNet-101 at 320 px) gets OpenVINO configs for the
DenseNet members - the same model.onnx, no new version - and the real tritonserver serves them
through `server/backends/openvino` (the python-based stand-in for NVIDIA's native backend) with
the probabilities and heatmaps that ONNX Runtime gives in-process on the same graphs.

Precision is explicit and read back, so these tests hold on every ISA: OpenVINO's CPU plugin
defaults to bf16 on AMX hosts, and there the old tests failed (issue "Green on every host"). Every
OpenVINO config asks for f32, the backend reads the compiled model's precision back and logs it,
and refuses a precision the CPU would silently change. The 1e-4 tolerance on probabilities is
measured, not guessed: OpenVINO f32 vs ORT on the demo DenseNet-169 differs by 0.0 in the
probability and ~1e-6 in the CAM on both an AVX2 host and an AVX-512/VNNI/AMX host, while its
bf16 default on the AMX host differed by 3.1e-4 - so the tolerance passes f32 on either host with
100x headroom and still catches bf16.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from clients.mura import MuraClient
from export.model_specs import OPENVINO_ARCHITECTURES
from export.repository import build_repository
from msk.constants import MURA_ARCHITECTURES, MURA_MEMBERS, OPENVINO_INFERENCE_PRECISION
from msk.host import has_native_bf16
from msk.samples import radiograph
from server.launcher import TritonServer
from tests.reference import ReferencePipeline

OPENVINO_MEMBERS = [m for m in MURA_MEMBERS if MURA_ARCHITECTURES[m] in OPENVINO_ARCHITECTURES]


@pytest.fixture(scope="module")
def openvino_repository(demo_repository: Path, tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("openvino") / "repository"
    shutil.copytree(demo_repository, copy, ignore=shutil.ignore_patterns(".complete"),
                    copy_function=os.link)          # read-only graphs: links, not 400 MB
    before = {p: p.read_bytes() for p in copy.rglob("model.onnx")}
    assert build_repository(copy, cpu_runtime="openvino") == 1
    assert {p: p.read_bytes() for p in copy.rglob("model.onnx")} == before   # configs only
    return copy


def test_only_the_measured_faster_backbones_move_to_openvino(openvino_repository: Path) -> None:
    assert OPENVINO_MEMBERS, "no backbone is marked for OpenVINO"
    for member in MURA_MEMBERS:
        text = (openvino_repository / member / "config.pbtxt").read_text()
        if member in OPENVINO_MEMBERS:
            assert 'backend: "openvino"' in text and 'default_model_filename: "model.onnx"' in text
            assert 'runtime: "model.py"' in text        # ours, not the native one: see configs
            assert 'key: "INFERENCE_NUM_THREADS" value: { string_value: "1" }' in text
            assert ('key: "INFERENCE_PRECISION_HINT" value: { string_value: '
                    f'"{OPENVINO_INFERENCE_PRECISION}" }}') in text
        else:
            assert 'backend: "onnxruntime"' in text
            assert 'key: "intra_op_thread_count" value: { string_value: "1" }' in text


def test_openvino_serves_what_onnxruntime_computes(openvino_repository: Path,
                                                   demo_repository: Path) -> None:
    reference = ReferencePipeline(demo_repository)
    images = [(radiograph(h, w, seed) * 255).astype(np.uint8)
              for seed, (h, w) in enumerate([(400, 320), (713, 512), (320, 900)])]
    with TritonServer(openvino_repository) as server, \
            MuraClient(server.grpc_url, concurrency=3) as client:
        results = client.score(images)
        log = server.log_path.read_text(errors="replace")
    for member in OPENVINO_MEMBERS:       # the runtime's own word, read back at load
        found = re.findall(rf"{member}: OpenVINO \S+ CPU inference precision (\w+)", log)
        assert found and set(found) == {OPENVINO_INFERENCE_PRECISION}, (member, found)
    for image, result in zip(images, results, strict=True):
        assert result.error is None, result.error
        expected = reference.run(image)
        for i, member in enumerate(MURA_MEMBERS):
            assert result.members[member] == pytest.approx(
                float(expected["MEMBER_PROBABILITIES"][i]), abs=1e-4), member
        assert result.probability == pytest.approx(float(expected["PROBABILITY"][0]), abs=1e-4)
        assert np.abs(result.heatmap.astype(int) - expected["HEATMAP"].astype(int)).max() <= 1


def test_precision_is_explicit_and_read_back_from_the_runtime(demo_repository: Path) -> None:
    """Opened as the backend opens it: the compiled model reports f32 on every host; a config
    without the hint is refused; bf16 runs only where the CPU has it natively, and elsewhere is
    refused instead of silently running f32 (what OpenVINO itself would do)."""
    from server.backends.openvino import session as session_module

    path = str(sorted((demo_repository / OPENVINO_MEMBERS[0]).glob("*/model.onnx"))[-1])
    pixels = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)

    session = session_module.OpenVinoSession(
        path, {"INFERENCE_PRECISION_HINT": OPENVINO_INFERENCE_PRECISION})
    session.run(["PROBABILITY"], {"PIXELS": pixels})
    assert session.precision == OPENVINO_INFERENCE_PRECISION
    # Backbones run side by side in separate processes: none may pin its threads to cores
    # (OpenVINO's default), which piled them onto the same cores (bench/README.md).
    assert session.pinned is False

    with pytest.raises(ValueError, match="sets no INFERENCE_PRECISION_HINT"):
        session_module.OpenVinoSession(path, {})

    bf16 = session_module.OpenVinoSession(path, {"INFERENCE_PRECISION_HINT": "bf16"})
    if has_native_bf16():
        bf16.run(["PROBABILITY"], {"PIXELS": pixels})
        assert bf16.precision == "bf16"
    else:
        with pytest.raises(session_module.PrecisionMismatch, match="compiled it at f32, not "
                           "the bf16 the config asks for"):
            bf16.run(["PROBABILITY"], {"PIXELS": pixels})
