"""MURA ensemble backbones: torchvision DenseNet-169 / ResNet-101 with a CAM-friendly head.

The head is global average pool -> dropout -> one linear logit, as in the MURA study. Because the
pool is a plain spatial mean and the head is linear, the class activation map (the last feature
map weighted by the head, before pooling) satisfies `mean(CAM) + bias == logit` exactly, so the
server can return a heatmap from the same forward pass that produces the probability.

Weights are `"none"` (seeded, deterministic init: the demo and training from scratch), a local
ImageNet weights file in torchvision's state-dict format, or `"imagenet"`: torchvision's own
ImageNet weights through torchvision's download and cache (`$TORCH_HOME/hub/checkpoints`), the way
users of torchvision expect on an online GPU box. Offline (or with `MSK_OFFLINE=1`) and without a
cached copy, `"imagenet"` fails at once with a message saying where to put the file.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from msk.constants import MURA_ARCHITECTURES, MURA_TINY_ARCHITECTURE

SUPPORTED_ARCHITECTURES = (*sorted(set(MURA_ARCHITECTURES.values())), MURA_TINY_ARCHITECTURE)


def _tiny_features() -> nn.Sequential:
    """Five stride-2 conv blocks (stride 32 like the real backbones) with ~30k parameters."""
    layers: list[nn.Module] = []
    channels = [1 * 3, 8, 16, 32, 32, 32]
    for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _features_and_width(architecture: str) -> tuple[nn.Module, int, nn.Module]:
    """Return (feature extractor, channel count, the full torchvision model for weight loading)."""
    if architecture == "densenet169":
        model = torchvision.models.densenet169(weights=None)
        # torchvision applies a ReLU after `features` in DenseNet.forward; keep it in the extractor.
        return nn.Sequential(model.features, nn.ReLU()), model.classifier.in_features, model
    if architecture == "resnet101":
        # Zero-initialised residual branches keep a from-scratch ResNet-101's activations bounded
        # (without it the untrained logits saturate at |logit| ~ 1e4).
        model = torchvision.models.resnet101(weights=None, zero_init_residual=True)
        body = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool,
                             model.layer1, model.layer2, model.layer3, model.layer4)
        return body, model.fc.in_features, model
    if architecture == MURA_TINY_ARCHITECTURE:
        features = _tiny_features()
        return features, 32, features
    raise ValueError(f"unknown architecture {architecture!r}; expected one of "
                     f"{', '.join(SUPPORTED_ARCHITECTURES)}")


class MuraBackbone(nn.Module):
    """Feature extractor + (GAP -> dropout -> linear) head producing one abnormality logit."""

    def __init__(self, architecture: str, dropout: float = 0.2) -> None:
        super().__init__()
        self.architecture = architecture
        self.features, width, self._source = _features_and_width(architecture)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logit [B, 1] (the training path: dropout active in train mode)."""
        pooled = self.features(x).mean(dim=(2, 3))
        return self.head(self.dropout(pooled))

    def forward_with_cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logit [B, 1], CAM [B, h, w]) for inference; CAM excludes the bias."""
        logit, cam, _ = self.forward_with_features(x)
        return logit, cam

    def forward_with_features(self, x: torch.Tensor
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logit [B, 1], CAM [B, h, w], pooled features [B, C]) from one pass over the feature
        map: the pooled penultimate features are what the out-of-distribution score measures."""
        feats = self.features(x)
        cam = torch.einsum("bchw,c->bhw", feats, self.head.weight[0])
        logit = cam.mean(dim=(1, 2)).unsqueeze(1) + self.head.bias
        return logit, cam, feats.mean(dim=(2, 3))


class WeightsUnavailable(RuntimeError):
    """ImageNet weights were asked for but cannot be had here (offline, not cached)."""


_DENSENET_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def imagenet_weights_file(architecture: str) -> Path:
    """torchvision's ImageNet weights for `architecture`, from its cache or its download."""
    weights = torchvision.models.get_model_weights(architecture).IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    if cached.is_file():
        return cached
    host = urlparse(weights.url).hostname or ""
    reason = "MSK_OFFLINE is set" if os.environ.get("MSK_OFFLINE") else None
    if reason is None:
        try:
            socket.create_connection((host, 443), timeout=10).close()
        except OSError as exc:
            reason = f"{host} cannot be reached ({exc.strerror or exc})"
    if reason:
        raise WeightsUnavailable(
            f"ImageNet weights for {architecture} are not cached at {cached} and {reason}. "
            f"Download {weights.url} on a machine with internet access, then either copy it to "
            f"{cached} or pass it with --weights PATH (a file, or a folder holding "
            f"{architecture}.pth).")
    weights.get_state_dict(progress=True, check_hash=True)     # torchvision's own download
    return cached


def load_imagenet_weights(backbone: MuraBackbone, path: Path) -> None:
    """Load a torchvision ImageNet state dict into the feature extractor (head ignored).

    torchvision's DenseNet files use legacy key names ("norm.1"); they are renamed the way
    torchvision's own loader does."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in list(state):
        match = _DENSENET_LEGACY_KEY.match(key)
        if match:
            state[match.group(1) + match.group(2)] = state.pop(key)
    source = backbone._source
    missing, unexpected = source.load_state_dict(state, strict=False)
    # torchvision's ImageNet classifier is 1000-way; only the feature layers must match.
    ignored = {k for k in unexpected if k.startswith(("fc.", "classifier."))}
    # torchvision's published files predate BatchNorm's `num_batches_tracked` buffers.
    bad = sorted(set(unexpected) - ignored) + sorted(
        k for k in missing
        if not k.startswith(("fc.", "classifier.")) and not k.endswith("num_batches_tracked")
    )
    if bad:
        raise ValueError(f"{path}: not {backbone.architecture} ImageNet weights "
                         f"(mismatched keys: {', '.join(bad[:5])}...)")


def build_backbone(architecture: str, weights: str | Path = "none", seed: int = 0,
                   dropout: float = 0.2) -> MuraBackbone:
    """Build a backbone; `weights` is "none" (seeded init), "imagenet" (torchvision's download
    and cache) or a local ImageNet weights file."""
    torch.manual_seed(seed)
    backbone = MuraBackbone(architecture, dropout=dropout)
    if str(weights) == "imagenet":
        load_imagenet_weights(backbone, imagenet_weights_file(architecture))
    elif str(weights) != "none":
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"ImageNet weights file not found: {path} (nothing is "
                                    "downloaded; pass a local torchvision state dict)")
        load_imagenet_weights(backbone, path)
    return backbone


def load_checkpoint(path: Path) -> tuple[MuraBackbone, dict]:
    """Rebuild a backbone from a training checkpoint; returns (model in eval mode, checkpoint)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    backbone = MuraBackbone(checkpoint["architecture"])
    backbone.load_state_dict(checkpoint["state_dict"])
    backbone.eval()
    return backbone, checkpoint
