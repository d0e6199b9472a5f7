"""The OOD reference set of a version: which images, their fingerprint, and the members' features.

Three kinds, named in PROVENANCE (`ood.reference.kind`) so that every result can say what its
"in distribution" was measured against:

  training-images  the images the members were trained on (`msk train mura` lists them next to
                   the checkpoints, `OOD_REFERENCE_CSV`; `msk export --checkpoints` reads it);
  given            `msk export --reference DIR|CSV`;
  demo-synthetic   the demo and tiny repositories (untrained weights have no training images):
                   the synthetic radiographs of `training.mura_synthetic` (every body part,
                   normal and fractured) and the demo's own sample images (`msk.samples`).

The features are computed with the ONNX artifacts of the version being exported (ONNX Runtime),
through the server's preprocessing graph, so the statistics describe exactly what is served
(an INT8 version's statistics are fitted on its INT8 features).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from msk.constants import (
    FEATURES_TENSOR,
    MURA_BODY_PARTS,
    OOD_REFERENCE_MAX_IMAGES,
    PIXELS_TENSOR,
    PROBABILITY_TENSOR,
)

DEMO_KIND = "demo-synthetic"
TRAINING_KIND = "training-images"
GIVEN_KIND = "given"
DEMO_SYNTHETIC_PER_CLASS = 3
"""Synthetic radiographs per body part and class in the demo reference (7 x 2 x 3 = 42)."""
DEMO_SAMPLE_RADIOGRAPHS = 8
"""`msk.samples.radiograph` images (the demo's sample look) in the demo reference."""


@dataclass(frozen=True)
class ReferenceImage:
    """One reference image: a file (read by the one reader) or pixels made in memory."""

    name: str
    sha256: str
    label: int | None = None
    body_part: str | None = None
    path: Path | None = None
    pixels: np.ndarray | None = field(default=None, compare=False, repr=False)

    def load(self) -> np.ndarray:
        from msk.imaging import load_grayscale

        return self.pixels if self.pixels is not None else load_grayscale(self.path)


@dataclass(frozen=True)
class ReferenceSet:
    """The images the OOD statistics are fitted on, and where they came from."""

    kind: str
    source: str
    images: tuple[ReferenceImage, ...]
    available: int = 0
    """Images the source held before the deterministic sample (`OOD_REFERENCE_MAX_IMAGES`)."""

    def fingerprint(self) -> str:
        """SHA-256 over every image's content, label and body part: the same reference set
        gives the same fingerprint (so the same version), whatever the folder is called."""
        rows = sorted((i.sha256, i.label, i.body_part) for i in self.images)
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()

    def describe(self) -> dict:
        labels = [i.label for i in self.images]
        parts: dict[str, int] = {}
        for image in self.images:
            parts[image.body_part or "unknown"] = parts.get(image.body_part or "unknown", 0) + 1
        return {"kind": self.kind, "source": self.source, "images": len(self.images),
                "available": self.available or len(self.images),
                "labelled": all(label is not None for label in labels),
                "abnormal": sum(1 for label in labels if label == 1),
                "body_parts": dict(sorted(parts.items())), "fingerprint": self.fingerprint()}


def _pixels_image(name: str, pixels: np.ndarray, label: int | None,
                  body_part: str | None) -> ReferenceImage:
    digest = hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()
    return ReferenceImage(name=name, sha256=digest, label=label, body_part=body_part,
                          pixels=pixels)


def demo_reference() -> ReferenceSet:
    """The demo's reference (module docstring): seeded, so the same every time."""
    from msk.samples import radiograph
    from training.mura_synthetic import render_image

    rng = np.random.default_rng(21)
    images = []
    for part in MURA_BODY_PARTS:
        for label in (0, 1):
            for k in range(DEMO_SYNTHETIC_PER_CLASS):
                h, w = (int(v) for v in rng.integers(160, 320, size=2))
                pixels = render_image(part, bool(label), rng, height=h, width=w)
                images.append(_pixels_image(f"synthetic/{part}/{label}/{k}", pixels, None, part))
    for seed in range(DEMO_SAMPLE_RADIOGRAPHS):
        h, w = 300 + 40 * seed, 260 + 30 * (seed % 4)
        pixels = (radiograph(h, w, seed) * 255).astype(np.uint8)
        images.append(_pixels_image(f"sample/{seed}", pixels, None, None))
    return ReferenceSet(DEMO_KIND, "training.mura_synthetic + msk.samples (untrained demo: "
                        "no training images exist)", tuple(images))


def reference_from_files(entries: Iterable[tuple[str, int | None, str | None]], kind: str,
                         source: str) -> ReferenceSet:
    """A reference set from (path, label, body part) entries (the CLI expands DIR|CSV with the
    one input expander); more than `OOD_REFERENCE_MAX_IMAGES` are sampled deterministically
    (smallest SHA-256 of the path first)."""
    from export.manifest import sha256_file

    rows = list(entries)
    chosen = sorted(rows, key=lambda r: hashlib.sha256(str(r[0]).encode()).hexdigest())
    chosen = chosen[:OOD_REFERENCE_MAX_IMAGES]
    images = tuple(ReferenceImage(name=str(path), sha256=sha256_file(Path(path)), label=label,
                                  body_part=part, path=Path(path))
                   for path, label, part in chosen)
    return ReferenceSet(kind, source, images, available=len(rows))


def member_features(models: Mapping[str, Path], reference: ReferenceSet, image_size: int,
                    batch: int = 8, threads: int = 2) -> dict[str, np.ndarray]:
    """Pooled features [N, D] of every member (ONNX Runtime on the version's artifacts)."""
    return member_outputs(models, reference, image_size, batch, threads)[0]


def member_outputs(models: Mapping[str, Path], reference: ReferenceSet, image_size: int,
                   batch: int = 8, threads: int = 2
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(pooled features [N, D], probability [N]) of every member, from one ONNX Runtime pass
    over the version's artifacts: the probabilities give the drift reference
    (`export.mura_drift`) at no extra cost."""
    import onnxruntime as ort

    from training.mura_preprocess import preprocess_mura

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = {m: ort.InferenceSession(str(p), sess_options=options,
                                        providers=["CPUExecutionProvider"])
                for m, p in models.items()}
    chunks: dict[str, list[np.ndarray]] = {m: [] for m in models}
    probs: dict[str, list[np.ndarray]] = {m: [] for m in models}
    images = reference.images
    for start in range(0, len(images), batch):
        pixels = np.stack([preprocess_mura(i.load(), size=image_size)
                           for i in images[start:start + batch]])
        for member, session in sessions.items():
            features, probability = session.run([FEATURES_TENSOR, PROBABILITY_TENSOR],
                                                {PIXELS_TENSOR: pixels})
            chunks[member].append(features)
            probs[member].append(np.asarray(probability).reshape(-1))
    return ({m: np.concatenate(c) for m, c in chunks.items()},
            {m: np.concatenate(c) for m, c in probs.items()})
