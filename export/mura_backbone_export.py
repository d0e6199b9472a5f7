"""Export one ensemble member to ONNX: PIXELS [B,3,S,S] -> PROBABILITY [B,1], CAM [B,h,w],
FEATURES [B,C] (the pooled penultimate features the out-of-distribution score measures, from
the same feature map as the CAM: no second pass).

Legacy TorchScript-based exporter (`dynamo=False`), opset `msk.constants.ONNX_OPSET`, dynamic
batch axis. Every export is verified twice before it is used: `onnx.checker` and a numerical
parity check against PyTorch on random inputs (max abs difference <= 1e-4), so a broken artifact
never reaches the repository.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from msk.constants import (
    CAM_TENSOR,
    FEATURES_TENSOR,
    ONNX_OPSET,
    PIXELS_TENSOR,
    PROBABILITY_TENSOR,
)
from training.mura_models import MuraBackbone

PARITY_TOLERANCE = 1e-4


class ExportedBackbone(nn.Module):
    """What the server runs: the calibrated probability, the raw CAM and the pooled features
    from one forward pass."""

    def __init__(self, backbone: MuraBackbone, temperature: float = 1.0) -> None:
        super().__init__()
        self.backbone = backbone.eval()
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, pixels: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logit, cam, features = self.backbone.forward_with_features(pixels)
        return torch.sigmoid(logit / self.temperature), cam, features


class ParityError(RuntimeError):
    """The exported graph does not reproduce the PyTorch model."""


def export_backbone(backbone: MuraBackbone, out_path: Path, image_size: int,
                    temperature: float = 1.0, seed: int = 0) -> float:
    """Write `out_path` and return the max abs difference to PyTorch on a random batch of 2."""
    module = ExportedBackbone(backbone, temperature).eval()
    example = torch.rand(1, 3, image_size, image_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")   # legacy-exporter deprecation chatter
        torch.onnx.export(
            module, (example,), buffer, dynamo=False, opset_version=ONNX_OPSET,
            input_names=[PIXELS_TENSOR],
            output_names=[PROBABILITY_TENSOR, CAM_TENSOR, FEATURES_TENSOR],
            dynamic_axes={PIXELS_TENSOR: {0: "batch"}, PROBABILITY_TENSOR: {0: "batch"},
                          CAM_TENSOR: {0: "batch"}, FEATURES_TENSOR: {0: "batch"}},
        )
    model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(buffer.getvalue())
    return check_parity(module, out_path, image_size, seed)


def check_parity(module: ExportedBackbone, onnx_path: Path, image_size: int, seed: int) -> float:
    """Compare ONNX Runtime with PyTorch on random inputs; raise ParityError above tolerance."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(2, 3, image_size, image_size, generator=generator)
    with torch.no_grad():
        expected = [t.numpy() for t in module(pixels)]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    actual = session.run([PROBABILITY_TENSOR, CAM_TENSOR, FEATURES_TENSOR],
                         {PIXELS_TENSOR: pixels.numpy()})
    prob_diff = float(np.max(np.abs(actual[0] - expected[0])))
    # The CAM and the features are in the network's units, whose scale depends on the weights:
    # compare them relative to that scale (the probability, the served result, absolutely).
    cam_diff, feat_diff = (
        float(np.max(np.abs(actual[k] - expected[k]))) / max(1.0, float(np.max(np.abs(
            expected[k])))) for k in (1, 2))
    diff = max(prob_diff, cam_diff, feat_diff)
    if not diff <= PARITY_TOLERANCE:
        raise ParityError(f"{onnx_path.name}: ONNX differs from PyTorch by {diff:.2e} "
                          f"(probability {prob_diff:.2e}, CAM {cam_diff:.2e} relative, "
                          f"features {feat_diff:.2e} relative; "
                          f"tolerance {PARITY_TOLERANCE:.0e})")
    return diff
