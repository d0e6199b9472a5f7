"""In-process reference for the served MURA pipeline: the repository's own ONNX files run with
onnxruntime, step by step, exactly as the ensemble chains them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.repository import latest_version
from msk.constants import (
    CAM_TENSOR,
    FEATURES_TENSOR,
    IMAGE_TENSOR,
    MURA_MEAN_MODEL,
    MURA_MEMBERS,
    MURA_PREPROCESS_MODEL,
    OOD_REFERENCE_FILE,
    PIXELS_TENSOR,
    PROBABILITY_TENSOR,
    member_cam_tensor,
    member_features_tensor,
    member_probability_tensor,
)


class ReferencePipeline:
    def __init__(self, repository: Path, version: int | None = None) -> None:
        self.version = version or latest_version(repository)

        def session(model: str) -> ort.InferenceSession:
            path = repository / model / str(self.version) / "model.onnx"
            return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        self.preprocess = session(MURA_PREPROCESS_MODEL)
        self.members = {m: session(m) for m in MURA_MEMBERS}
        self.mean = session(MURA_MEAN_MODEL)
        self.stats_path = repository / MURA_MEAN_MODEL / str(self.version) / OOD_REFERENCE_FILE

    def pixels(self, image: np.ndarray) -> np.ndarray:
        return self.preprocess.run(None, {IMAGE_TENSOR: image})[0]

    def run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        pixels = self.pixels(image)
        feeds = {}
        for member, sess in self.members.items():
            prob, cam, feats = sess.run([PROBABILITY_TENSOR, CAM_TENSOR, FEATURES_TENSOR],
                                        {PIXELS_TENSOR: pixels})
            feeds[member_probability_tensor(member)] = prob
            feeds[member_cam_tensor(member)] = cam
            feeds[member_features_tensor(member)] = feats
        names = [o.name for o in self.mean.get_outputs()]
        out = dict(zip(names, self.mean.run(names, feeds), strict=True))
        out["PROVENANCE"] = json.loads(out["PROVENANCE"].reshape(-1)[0])
        out["FEATURES"] = {m: feeds[member_features_tensor(m)] for m in self.members}
        return out

    def numpy_ood_score(self, features: dict[str, np.ndarray]) -> float:
        """The OOD score from the stored statistics in float64 numpy (not the served graph)."""
        from export.ood_stats import Reference

        stats = Reference.from_bytes(self.stats_path.read_bytes())
        return float(stats.score(features)[0])
