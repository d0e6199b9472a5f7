"""Class activation maps computed by Triton in the same forward pass as the probabilities.

Checked against PyTorch references from the checkpoints:
  * each backbone's `CAM` output equals `forward_with_cam` of the checkpoint's model;
  * spatial mean(CAM) + bias == the member's logit (recovered from its calibrated PROBABILITY,
    logit = T * log(p / (1 - p))), the identity of a global-average-pooled linear head;
  * the ensemble's `HEATMAP` equals sigmoid(mean_m((CAM_m + b_m) / T_m)), bilinearly upsampled
    to 320x320, x255, within one grey level.

Two repositories: one built here from tiny checkpoints with non-zero biases and temperatures != 1
(so that forgetting either is caught; seconds to export), and the session's demo repository with
the real DenseNet-169 / ResNet-101 members (so that the real architectures' CAMs are checked).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient

from msk.constants import (
    CAM_TENSOR,
    HEATMAP_TENSOR,
    IMAGE_TENSOR,
    MURA_ARCHITECTURES,
    MURA_CAM_STRIDE,
    MURA_DEMO_SEED,
    MURA_ENSEMBLE_MODEL,
    MURA_IMAGE_SIZE,
    MURA_MEMBERS,
    MURA_PREPROCESS_MODEL,
    PIXELS_TENSOR,
    PROBABILITY_TENSOR,
)
from tests.plugins.web import synthetic_radiograph, write_tiny_checkpoints

CAM_SIZE = MURA_IMAGE_SIZE // MURA_CAM_STRIDE
TINY_LOGITS = (0.8, -0.6, 0.3, -1.1)
TINY_TEMPERATURES = (1.0, 1.7, 0.6, 2.3)
TINY_CAM_SPREAD = 2.0
"""Logits of spatial spread in the tiny members' CAMs, as a trained model's (the untrained
stand-ins' HEATMAP is flat, which would make the comparison vacuous)."""


# -- helpers ---------------------------------------------------------------------------------
def infer(client, model: str, name: str, array: np.ndarray, datatype: str,
          outputs: list[str]) -> list[np.ndarray]:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    result = client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput(o)
                                                    for o in outputs])
    return [result.as_numpy(o) for o in outputs]


def served_cams(url: str, image: np.ndarray) -> tuple[np.ndarray, dict[str, tuple]]:
    """PIXELS from mura_preprocess, then (probability, CAM) from each backbone, all from Triton."""
    client = grpcclient.InferenceServerClient(url)
    (pixels,) = infer(client, MURA_PREPROCESS_MODEL, IMAGE_TENSOR, image, "UINT8",
                      [PIXELS_TENSOR])
    pixels = pixels.reshape(3, MURA_IMAGE_SIZE, MURA_IMAGE_SIZE).astype(np.float32)
    members = {}
    for member in MURA_MEMBERS:
        prob, cam = infer(client, member, PIXELS_TENSOR, pixels[None], "FP32",
                          [PROBABILITY_TENSOR, CAM_TENSOR])
        members[member] = (float(prob.reshape(-1)[0]), cam.reshape(CAM_SIZE, CAM_SIZE))
    client.close()
    return pixels, members


def served_heatmap(url: str, image: np.ndarray) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    (heatmap,) = infer(client, MURA_ENSEMBLE_MODEL, IMAGE_TENSOR, image, "UINT8",
                       [HEATMAP_TENSOR])
    client.close()
    return heatmap


def reference_heatmap(cams: list[np.ndarray], biases: list[float],
                      temperatures: list[float]) -> np.ndarray:
    """The contract: sigmoid of the mean of (CAM + b) / T, bilinear to 320x320, x255, uint8."""
    z = np.mean([(c.astype(np.float64) + b) / t
                 for c, b, t in zip(cams, biases, temperatures, strict=True)], axis=0)
    s = torch.sigmoid(torch.from_numpy(z))[None, None]
    up = torch.nn.functional.interpolate(s, size=(MURA_IMAGE_SIZE, MURA_IMAGE_SIZE),
                                         mode="bilinear", align_corners=False)[0, 0].numpy()
    return np.clip(np.rint(up * 255.0), 0, 255).astype(np.uint8)


def logit(p: float, temperature: float) -> float:
    return temperature * float(np.log(p / (1.0 - p)))


def check_members(url: str, image: np.ndarray, models: dict, biases: dict,
                  temperatures: dict) -> dict[str, np.ndarray]:
    """CAM vs PyTorch, the pooling identity on Triton's outputs; returns Triton's CAMs."""
    pixels, served = served_cams(url, image)
    x = torch.from_numpy(pixels.astype(np.float32))[None]
    cams = {}
    with torch.no_grad():
        for member in MURA_MEMBERS:
            model = models[member].eval()
            ref_logit, ref_cam = model.forward_with_cam(x)
            ref_cam = ref_cam[0].double().numpy()
            prob, cam = served[member]
            assert cam.shape == (CAM_SIZE, CAM_SIZE) and cam.dtype == np.float32
            scale = max(1.0, float(np.abs(ref_cam).max()))
            np.testing.assert_allclose(cam, ref_cam, rtol=0, atol=2e-4 * scale,
                                       err_msg=f"{member}: CAM differs from PyTorch")
            # The identity of a GAP + linear head, on what the server returned.
            t, b = temperatures[member], biases[member]
            assert float(cam.astype(np.float64).mean()) + b == pytest.approx(
                logit(prob, t), abs=2e-4 * scale), member
            # ... and in PyTorch, where `forward` pools the features (no CAM) before the head.
            assert float(model(x)[0, 0]) == pytest.approx(float(ref_cam.mean()) + b,
                                                          abs=1e-4 * scale), member
            assert float(ref_logit[0, 0]) == pytest.approx(logit(prob, t), abs=2e-4 * scale)
            cams[member] = cam
    return cams


# -- a repository from tiny checkpoints with biases and temperatures --------------------------
@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory) -> dict:
    return write_tiny_checkpoints(tmp_path_factory.mktemp("cam-checkpoints"),
                                  logits=TINY_LOGITS, temperatures=TINY_TEMPERATURES,
                                  cam_spread=TINY_CAM_SPREAD, seed=700)


@pytest.fixture(scope="module")
def cam_server(tiny_checkpoints, tmp_path_factory):
    from export.repository import build_repository
    from server.launcher import TritonServer

    repo = tmp_path_factory.mktemp("cam-repository")
    build_repository(repo, checkpoints=tiny_checkpoints)
    with TritonServer(repository=repo) as server:
        yield server


def test_cam_and_heatmap_from_checkpoints(cam_server, tiny_checkpoints):
    from training.mura_models import load_checkpoint

    loaded = {m: load_checkpoint(p) for m, p in tiny_checkpoints.items()}
    models = {m: model for m, (model, _) in loaded.items()}
    biases = {m: float(model.head.bias.item()) for m, model in models.items()}
    temperatures = {m: float(ckpt["temperature"]) for m, (_, ckpt) in loaded.items()}
    for seed in (21, 22):
        image = synthetic_radiograph(seed, 560 + 40 * (seed - 21), 480)
        cams = check_members(cam_server.grpc_url, image, models, biases, temperatures)
        order = list(MURA_MEMBERS)
        ref = reference_heatmap([cams[m] for m in order], [biases[m] for m in order],
                                [temperatures[m] for m in order])
        heatmap = served_heatmap(cam_server.grpc_url, image)
        assert heatmap.shape == (MURA_IMAGE_SIZE, MURA_IMAGE_SIZE) and heatmap.dtype == np.uint8
        assert np.abs(heatmap.astype(int) - ref.astype(int)).max() <= 1
        # Not vacuous: the map has structure, and bias and temperature both change it.
        assert int(ref.max()) - int(ref.min()) >= 20
        no_temperature = reference_heatmap([cams[m] for m in order],
                                           [biases[m] for m in order], [1.0] * len(order))
        no_bias = reference_heatmap([cams[m] for m in order], [0.0] * len(order),
                                    [temperatures[m] for m in order])
        assert np.abs(no_temperature.astype(int) - heatmap.astype(int)).max() > 2
        assert np.abs(no_bias.astype(int) - heatmap.astype(int)).max() > 2


# -- the demo repository: the real DenseNet-169 / ResNet-101 members --------------------------
def test_real_backbones_cam_and_heatmap(triton):
    """Demo members are the seeded untrained backbones (`build_repository`'s demo weights)."""
    from training.mura_models import build_backbone

    torch.set_num_threads(2)
    models = {m: build_backbone(MURA_ARCHITECTURES[m], weights="none",
                                seed=MURA_DEMO_SEED + i).eval()
              for i, m in enumerate(MURA_MEMBERS)}
    biases = {m: float(model.head.bias.item()) for m, model in models.items()}
    temperatures = dict.fromkeys(MURA_MEMBERS, 1.0)
    image = synthetic_radiograph(31, 640, 520)
    cams = check_members(triton.grpc_url, image, models, biases, temperatures)
    order = list(MURA_MEMBERS)
    ref = reference_heatmap([cams[m] for m in order], [biases[m] for m in order],
                            [temperatures[m] for m in order])
    heatmap = served_heatmap(triton.grpc_url, image)
    assert np.abs(heatmap.astype(int) - ref.astype(int)).max() <= 1
    assert any(float(np.std(c)) > 1e-4 for c in cams.values())
