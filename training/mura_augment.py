"""The MURA study's augmentation, applied to batches of *preprocessed* tensors.

Why after preprocessing: the server resizes every image with one ONNX graph; augmenting the
already-preprocessed tensor keeps that graph the only resize the network ever learns from.
Why batched: one `affine_grid`/`grid_sample` call per batch is far cheaper on CPU than per-image
PIL transforms, and a `torch.Generator` makes every draw reproducible (resume included).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from training.recipe_schema import AugmentSpec


def augment_batch(x: torch.Tensor, spec: AugmentSpec, generator: torch.Generator) -> torch.Tensor:
    """Random affine (+flip) per sample of x [B, C, H, W]. Uncovered pixels repeat the nearest
    edge pixel, as Keras' ImageDataGenerator (the study's tool) does by default."""
    b = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=generator)

    angle = uniform(-spec.rotate_deg, spec.rotate_deg) * (math.pi / 180.0)
    scale = uniform(1.0 - spec.zoom, 1.0 + spec.zoom)
    # affine_grid works in [-1, 1] coordinates: a shift of 20 % of the side is 0.4 there.
    tx = uniform(-spec.shift, spec.shift) * 2.0
    ty = uniform(-spec.shift, spec.shift) * 2.0
    flip = (torch.rand(b, generator=generator) < 0.5) if spec.hflip else torch.zeros(b, dtype=bool)
    sx = torch.where(flip, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # The grid maps output -> input coordinates, hence the inverse zoom.
    theta = torch.stack([
        torch.stack([cos * sx, -sin, tx], dim=1),
        torch.stack([sin * sx, cos, ty], dim=1),
    ], dim=1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid.to(x.device), mode="bilinear", padding_mode="border",
                         align_corners=False)
