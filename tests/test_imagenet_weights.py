"""`--weights imagenet`: torchvision's own ImageNet weights through torchvision's cache.

Nothing here downloads: the cached-copy case puts a file where torchvision's download would have
left it (`$TORCH_HOME/hub/checkpoints/<torchvision's file name>`), in torchvision's format (the
DenseNet files keep their legacy "norm.1" key names), and the offline case is refused at once.
"""

from __future__ import annotations

import re

import pytest
import torch
import torchvision

from training.mura_models import WeightsUnavailable, build_backbone, imagenet_weights_file


def _legacy_densenet_keys(state: dict) -> dict:
    """torchvision's published DenseNet files use 'norm.1' where the module has 'norm1', and
    carry no `num_batches_tracked` buffers."""
    return {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))(\d)\.", r"\1.\2.", k): v
            for k, v in state.items() if not k.endswith("num_batches_tracked")}


def test_cached_imagenet_weights_are_loaded_from_torchvisions_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("MSK_OFFLINE", "1")                 # a cached copy needs no network
    reference = torchvision.models.densenet169(weights=None)
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "densenet169-b2777c0a.pth"
    cached.parent.mkdir(parents=True)
    legacy = _legacy_densenet_keys(reference.state_dict())
    assert any(".norm.1." in k for k in legacy)
    torch.save(legacy, cached)
    assert imagenet_weights_file("densenet169") == cached
    backbone = build_backbone("densenet169", weights="imagenet", seed=123)
    features = dict(backbone._source.state_dict())
    for key, value in reference.state_dict().items():
        if not key.startswith("classifier.") and not key.endswith("num_batches_tracked"):
            assert torch.equal(features[key], value), key


def test_offline_without_a_cached_copy_fails_at_once_naming_the_way_out(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("MSK_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable) as info:
        build_backbone("resnet101", weights="imagenet")
    message = str(info.value)
    assert "resnet101-63fe2227.pth" in message and "--weights PATH" in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message
