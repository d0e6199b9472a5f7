"""Reference statistics of the out-of-distribution (OOD) score: fitted here, served by `mura_mean`.

The score (Lee et al., NeurIPS 2018, "A simple unified framework for detecting out-of-distribution
samples"): per ensemble member, the Mahalanobis distance of an image's pooled penultimate features
to the nearest class-conditional Gaussian, the classes sharing one (tied) covariance. The features
have 1664 (DenseNet-169) or 2048 (ResNet-101) dimensions and a reference set has hundreds to a few
thousand images, so the full covariance cannot be estimated: it is modelled as probabilistic PCA
(Tipping & Bishop 1999), the `OOD_PCA_COMPONENTS` leading directions with their own variances and
one isotropic variance for the rest. The distance therefore has two parts, the whitened distance
inside the principal subspace and the residual off it divided by the residual variance; the second
is what a photograph or a chest film, whose features leave the reference subspace, mostly raises.

Members' distances have different scales (dimensions, architectures), so each is divided by its
median over the reference set, and the ensemble's score is the mean of the four: a typical
reference image scores about 1. Every reference score used for a threshold or a scale comes from
cross-fitting (`OOD_FOLDS` folds: statistics fitted without the image), because the distance of
an image the statistics were fitted on is biased low and a threshold set on such scores would
flag far more than the stated share of new in-distribution images.

numpy only: `export.mura_mean_graph` builds the same computation as ONNX and a test holds the two
to the same numbers.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from msk.constants import (
    MURA_OVERALL_OPERATING_POINT,
    OOD_DEFAULT_PERCENTILE,
    OOD_FOLDS,
    OOD_PCA_COMPONENTS,
)

MIN_REFERENCE_IMAGES = 2 * OOD_FOLDS
"""Fewer reference images than this cannot be cross-fitted into a meaningful percentile."""
METHOD = "mahalanobis-tied-ppca"
"""The method's name in PROVENANCE (what a reader of a result can look up)."""


class OodReferenceError(ValueError):
    """The reference set cannot give statistics (too few images, a member without features)."""


@dataclass(frozen=True)
class MemberGaussians:
    """One member's class means and tied probabilistic-PCA covariance, and its score scale."""

    means: np.ndarray          # [C, D] class means
    components: np.ndarray     # [D, k] leading directions of the tied within-class covariance
    variances: np.ndarray      # [k] their variances
    residual_variance: float   # variance of every direction off the principal subspace
    scale: float = 1.0         # median cross-fitted distance over the reference set

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance [N] of features [N, D] to the nearest class mean,
        divided by `scale`."""
        x = np.asarray(features, np.float64)
        best = np.full(len(x), np.inf)
        for mean in self.means:
            diff = x - mean
            proj = diff @ self.components
            resid = diff - proj @ self.components.T
            d = (proj ** 2 / self.variances).sum(1) + (resid ** 2).sum(1) / self.residual_variance
            best = np.minimum(best, d)
        return best / self.scale


def fit_member(features: np.ndarray, labels: np.ndarray,
               components: int = OOD_PCA_COMPONENTS) -> MemberGaussians:
    """Fit class means and the tied PPCA covariance on features [N, D] with labels [N]
    (one class when every label is the same)."""
    x = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(0) for c in classes])
    centred = x - means[np.searchsorted(classes, labels)]
    dof = max(1, len(x) - len(classes))
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    eig = singular ** 2 / dof
    dim = x.shape[1]
    k = int(max(1, min(components, len(eig) - 1, dim - 1)))
    floor = 1e-6 * float(eig.mean()) + 1e-12   # features may be constant in some directions
    residual = max(float(eig[k:].sum()) / (dim - k), floor)
    return MemberGaussians(means=means, components=vt[:k].T.copy(),
                           variances=np.maximum(eig[:k], residual), residual_variance=residual)


@dataclass(frozen=True)
class Reference:
    """The fitted statistics of every member and the reference set's cross-fitted scores."""

    members: dict[str, MemberGaussians]
    scores: np.ndarray          # [N] cross-fitted ensemble scores of the reference images
    body_parts: tuple[str, ...]  # [N] each reference image's body part ("" when unknown)
    classes: tuple[str, ...]

    def score(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """The ensemble's OOD score [N]: mean over members of their scaled distances."""
        return np.mean([g.distance(features[m]) for m, g in self.members.items()], axis=0)

    def threshold(self, percentile: float) -> float:
        """The score at `percentile` of the reference set's cross-fitted scores."""
        return float(np.percentile(self.scores, percentile))

    def thresholds(self, percentiles: Mapping[str, float], parts: Sequence[str]
                   ) -> tuple[dict[str, float], dict[str, float], float, float]:
        """(percentile per body part, threshold per body part, default percentile, default
        threshold); `percentiles` may name body parts and MURA_OVERALL_OPERATING_POINT."""
        default_q = float(percentiles.get(MURA_OVERALL_OPERATING_POINT, OOD_DEFAULT_PERCENTILE))
        qs = {part: float(percentiles.get(part, default_q)) for part in parts}
        return qs, {p: self.threshold(q) for p, q in qs.items()}, default_q, \
            self.threshold(default_q)

    def to_bytes(self) -> bytes:
        """The statistics as an .npz file (deterministic bytes: same inputs, same SHA-256)."""
        arrays: dict[str, np.ndarray] = {
            "members": np.array(list(self.members)), "scores": self.scores.astype(np.float64),
            "body_parts": np.array(self.body_parts), "classes": np.array(self.classes)}
        for name, g in self.members.items():
            arrays |= {f"{name}.means": g.means, f"{name}.components": g.components,
                       f"{name}.variances": g.variances,
                       f"{name}.residual_variance": np.array(g.residual_variance),
                       f"{name}.scale": np.array(g.scale)}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)   # uncompressed: zip entries carry no time stamp variance
        return _normalise_zip(buffer.getvalue())

    @classmethod
    def from_bytes(cls, data: bytes) -> Reference:
        with np.load(io.BytesIO(data)) as z:
            members = {str(m): MemberGaussians(
                means=z[f"{m}.means"], components=z[f"{m}.components"],
                variances=z[f"{m}.variances"],
                residual_variance=float(z[f"{m}.residual_variance"]),
                scale=float(z[f"{m}.scale"])) for m in z["members"]}
            return cls(members=members, scores=z["scores"],
                       body_parts=tuple(str(p) for p in z["body_parts"]),
                       classes=tuple(str(c) for c in z["classes"]))


def _normalise_zip(data: bytes) -> bytes:
    """Rewrite a zip with fixed time stamps, so the .npz's SHA-256 depends on its arrays only."""
    import zipfile

    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            target.writestr(fixed, source.read(info.filename))
    return out.getvalue()


def fit_reference(features: Mapping[str, np.ndarray], labels: Sequence[int | None],
                  body_parts: Sequence[str | None], components: int = OOD_PCA_COMPONENTS,
                  folds: int = OOD_FOLDS) -> Reference:
    """Cross-fit the reference statistics of every member (module docstring).

    `labels`: each reference image's class (0/1), or None; class-conditional Gaussians need every
    image labelled, otherwise the whole set is one class."""
    n = len(labels)
    if n < MIN_REFERENCE_IMAGES:
        raise OodReferenceError(f"the OOD reference set has {n} images; at least "
                             f"{MIN_REFERENCE_IMAGES} are needed")
    labelled = all(label is not None for label in labels)
    y = np.array([int(label) for label in labels]) if labelled else np.zeros(n, int)
    classes = tuple(("normal", "abnormal")[c] for c in np.unique(y)) if labelled else ("all",)
    fold = np.random.default_rng(0).permutation(n) % folds
    oof = {}
    for member, x in features.items():
        x = np.asarray(x, np.float64)
        if x.shape[0] != n:
            raise OodReferenceError(f"{member}: {x.shape[0]} feature rows for {n} images")
        scores = np.empty(n)
        for f in range(folds):
            held = fold == f
            scores[held] = fit_member(x[~held], y[~held], components).distance(x[held])
        oof[member] = scores
    scales = {m: float(np.median(s)) or 1.0 for m, s in oof.items()}
    fitted = {}
    for member, x in features.items():
        g = fit_member(np.asarray(x, np.float64), y, components)
        fitted[member] = MemberGaussians(g.means, g.components, g.variances,
                                         g.residual_variance, scales[member])
    combined = np.mean([oof[m] / scales[m] for m in features], axis=0)
    return Reference(members=fitted, scores=combined,
                     body_parts=tuple(p or "" for p in body_parts), classes=classes)
