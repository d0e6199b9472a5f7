"""Export path: ONNX checks, parity guard, versioned promotion with provenance."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import tritonclient.grpc as grpcclient

from clients.mura import MuraClient
from export.manifest import load_manifest, sha256_file
from export.mura_backbone_export import ExportedBackbone, ParityError, check_parity, export_backbone
from export.repository import build_repository, existing_versions, latest_version
from msk.constants import MURA_MEMBERS, MURA_TINY_ARCHITECTURE
from msk.graphs.mura_preprocess import build_preprocess_graph
from msk.samples import radiograph
from server.launcher import TritonServer
from training.mura_models import build_backbone


def test_preprocess_graph_matches_an_independent_numpy_reference():
    import onnxruntime as ort
    from PIL import Image

    image = (radiograph(480, 360, 3) * 255).astype(np.uint8)
    session = ort.InferenceSession(build_preprocess_graph(96).SerializeToString())
    pixels = session.run(None, {"IMAGE": image})[0]
    assert pixels.shape == (1, 3, 96, 96) and pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels[0, 0], pixels[0, 2])
    # PIL's antialiased bilinear (triangle filter) is the same family of resampling.
    expected = np.asarray(Image.fromarray(image).resize((96, 96), Image.Resampling.BILINEAR),
                          np.float32) / 255
    assert np.abs(pixels[0, 0] - expected).mean() < 1 / 255
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0


def test_backbone_export_is_checked_and_matches_torch(tmp_path):
    model = build_backbone("resnet101", seed=3).eval()
    diff = export_backbone(model, tmp_path / "r.onnx", image_size=64)
    assert diff <= 1e-4
    onnx.checker.check_model(onnx.load(tmp_path / "r.onnx"))
    graph = onnx.load(tmp_path / "r.onnx").graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_parity_guard_rejects_a_graph_that_differs(tmp_path):
    first = build_backbone(MURA_TINY_ARCHITECTURE, seed=1).eval()
    export_backbone(first, tmp_path / "a.onnx", image_size=64)
    other = ExportedBackbone(build_backbone(MURA_TINY_ARCHITECTURE, seed=2).eval())
    with pytest.raises(ParityError, match="differs from PyTorch"):
        check_parity(other, tmp_path / "a.onnx", 64, seed=0)


def _tiny_checkpoints(folder, seed: int) -> dict:
    paths = {}
    for i, member in enumerate(MURA_MEMBERS):
        model = build_backbone(MURA_TINY_ARCHITECTURE, seed=seed + i)
        with torch.no_grad():
            model.head.bias.fill_(0.25 * (i + 1))
        paths[member] = folder / f"{member}.pt"
        torch.save({"member": member, "architecture": MURA_TINY_ARCHITECTURE,
                    "state_dict": model.state_dict(), "image_size": 320,
                    "recipe": {"name": f"test-{member}"}, "dataset_fingerprint": "sha256:test",
                    "metrics": {"auroc": 0.5}, "temperature": 1.5,
                    "operating_points": {"wrist": 0.4}}, paths[member])
    return paths


def test_promotion_adds_a_version_and_keeps_the_old_one_loadable(tmp_path, repository_copy):
    repo = repository_copy
    assert latest_version(repo) == 1
    checkpoints = _tiny_checkpoints(tmp_path, seed=40)
    version = build_repository(repo, checkpoints=checkpoints,
                               operating_points={"wrist": 0.42, "elbow": 0.61, "default": 0.55})
    assert version == 2
    assert torch.is_grad_enabled(), "exporting must not switch autograd off for the process"
    for member in MURA_MEMBERS:
        assert existing_versions(repo, member) == [1, 2]
    manifest = load_manifest(repo)
    provenance = manifest["versions"]["mura_ensemble/2"]
    assert provenance["weights"] == "trained"
    assert provenance["members"]["densenet169_a"]["recipe"] == "test-densenet169_a"
    for record in manifest["artifacts"]:
        assert sha256_file(repo / record["path"]) == record["sha256"]

    image = (radiograph(256, 256, 5) * 255).astype(np.uint8)
    with TritonServer(repo) as server, MuraClient(server.grpc_url) as client:
        result = client.score([image], body_parts=["elbow"], heatmaps=False)[0]
        assert result.versions["pipeline"] == "2" and result.weights == "trained"
        assert result.threshold == pytest.approx(0.61)
        assert result.abnormal == (result.probability >= 0.61)
        unknown_part = client.score([image], heatmaps=False)[0]
        assert unknown_part.threshold == pytest.approx(0.55)
        assert client.score([image], body_parts=["hand"], heatmaps=False)[0].threshold == \
            pytest.approx(0.55)
        # The previous version is still loaded and addressable by number.
        raw = grpcclient.InferenceServerClient(server.grpc_url)
        for member in MURA_MEMBERS:
            assert raw.is_model_ready(member, "1") and raw.is_model_ready(member, "2")
        # The served probability is the checkpoints' calibrated probability (T = 1.5).
        from training.mura_preprocess import preprocess_mura
        pixels = torch.from_numpy(preprocess_mura(image))[None]
        expected = []
        for member in MURA_MEMBERS:
            model = build_backbone(MURA_TINY_ARCHITECTURE)
            model.load_state_dict(torch.load(checkpoints[member])["state_dict"])
            with torch.no_grad():
                expected.append(torch.sigmoid(model.eval()(pixels) / 1.5).item())
        assert result.members == pytest.approx(dict(zip(MURA_MEMBERS, expected, strict=True)),
                                               abs=1e-5)
    assert json.loads(json.dumps(provenance))["operating_points"]["elbow"] == 0.61


def test_rebuilding_the_demo_is_a_no_op(repository_copy):
    before = {p: p.stat().st_mtime for p in repository_copy.rglob("model.onnx")}
    assert build_repository(repository_copy, tiny=True) == 1
    after = {p: p.stat().st_mtime for p in repository_copy.rglob("model.onnx")}
    assert before == after
