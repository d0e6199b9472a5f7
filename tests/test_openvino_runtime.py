"""`msk export --cpu-runtime openvino`: DenseNet-169 backbones served by Triton's OpenVINO backend.

The real demo repository (DenseNet-169 and ResNet-101 at 320 px) gets OpenVINO configs for the
DenseNet members - the same model.onnx, no new version - and the real tritonserver serves them
through `server/backends/openvino` (the python-based stand-in for NVIDIA's native backend) with
the probabilities and heatmaps that ONNX Runtime gives in-process on the same graphs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from clients.mura import MuraClient
from export.model_specs import OPENVINO_ARCHITECTURES
from export.repository import build_repository
from msk.constants import MURA_ARCHITECTURES, MURA_MEMBERS
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
            assert 'key: "INFERENCE_NUM_THREADS" value: { string_value: "1" }' in text
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
    for image, result in zip(images, results, strict=True):
        assert result.error is None, result.error
        expected = reference.run(image)
        for i, member in enumerate(MURA_MEMBERS):
            assert result.members[member] == pytest.approx(
                float(expected["MEMBER_PROBABILITIES"][i]), abs=1e-4), member
        assert result.probability == pytest.approx(float(expected["PROBABILITY"][0]), abs=1e-4)
        assert np.abs(result.heatmap.astype(int) - expected["HEATMAP"].astype(int)).max() <= 1
