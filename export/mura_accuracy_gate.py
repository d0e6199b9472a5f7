"""The INT8 accuracy gate: an INT8 version is promoted only if it scores a held-out set like FP32.

Both versions of the same weights score the held-out images, each preprocessed by the server's
own graph: the four FP32 backbones + the averaging graph (`mura_mean`), and the four candidate
(INT8) backbones + the same averaging graph. The backbones are served by the real Triton with the
runtime, precision hint and thread count the repository will serve them with (`ServedEnsemble`,
`export.backbone_serving`), so the gate judges what will serve, not an in-process ORT proxy; the
averaging graph is the same ORT FP32 graph on both sides and runs in-process. `EnsembleRunner`
(all in-process ORT) stays as the reference the tests compare with. Three numbers decide:

* study-level AUROC drop (FP32 AUROC - INT8 AUROC; a study's probability is the mean of its
  images, the MURA rule) <= `MAX_AUROC_DROP`;
* mean |delta p| over images of the ensemble probability <= `MAX_MEAN_ABS_DELTA`;
* the call (abnormal at the operating point of the image's body part) is the same for at least
  `MIN_CALL_AGREEMENT` of the images.

Why all three: AUROC alone ignores calibration (a uniform shift of every probability keeps the
ranking but moves calls); |delta p| alone can hide flips near the operating point; call agreement
is what a reader of the result actually sees.

How much each number rests on is part of the result: the images, the studies and the
normal/abnormal study pairs the AUROC counts. One swapped pair moves the AUROC by 1/pairs, so on a
set with fewer than 1/MAX_AUROC_DROP = 200 pairs a single swap fails the gate (the summary says
so).

Precision: each served backbone runs at the precision its config names (OpenVINO's
INFERENCE_PRECISION_HINT, read back at load; ORT's FP32 graphs in FP32 and the INT8 graphs'
quantized ops in int8). ORT never lowers FP32 on x86; its only lowering option (`ORT_FP32_ONLY`,
bf16 fast-math GEMMs on arm64) is set off explicitly, here and in the served ORT backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from export.staging import ExportAborted
from msk.constants import (
    CAM_TENSOR,
    MURA_DEFAULT_THRESHOLD,
    PIXELS_TENSOR,
    PROBABILITY_TENSOR,
    member_cam_tensor,
    member_probability_tensor,
)
from training.mura_metrics import auroc, labelled_study_means

MAX_AUROC_DROP = 0.005
MAX_MEAN_ABS_DELTA = 0.02
MIN_CALL_AGREEMENT = 0.99
_BATCH = 8
ORT_FP32_ONLY = {"mlas.enable_gemm_fastmath_arm64_bfloat16": "0"}
"""ORT session entries that keep FP32 ops in FP32 on every host (the same in
server/backends/onnxruntime/model.py, which Triton loads without this package)."""


@dataclass(frozen=True)
class GateResult:
    """The gate's numbers on one held-out set (written into the promoted version's manifest)."""

    images: int
    studies: int
    pairs: int
    """Normal x abnormal study pairs behind the AUROC: one swapped pair moves it by 1/pairs."""
    auroc_fp32: float
    auroc_int8: float
    auroc_drop: float
    mean_abs_delta: float
    max_abs_delta: float
    """The largest |delta p| of one image: recorded, not a criterion (one outlier is what the
    call agreement judges)."""
    call_agreement: float

    @property
    def passed(self) -> bool:
        return (self.auroc_drop <= MAX_AUROC_DROP and self.mean_abs_delta <= MAX_MEAN_ABS_DELTA
                and self.call_agreement >= MIN_CALL_AGREEMENT)

    def summary(self) -> str:
        """The three numbers against their thresholds, for the user and the log."""
        def mark(ok: bool) -> str:
            return "ok" if ok else "FAILED"
        return (f"study AUROC drop {self.auroc_drop:.4f} (FP32 {self.auroc_fp32:.4f}, INT8 "
                f"{self.auroc_int8:.4f}; must be <= {MAX_AUROC_DROP}) "
                f"{mark(self.auroc_drop <= MAX_AUROC_DROP)}; "
                f"mean |delta p| {self.mean_abs_delta:.4f} (must be <= {MAX_MEAN_ABS_DELTA}) "
                f"{mark(self.mean_abs_delta <= MAX_MEAN_ABS_DELTA)} "
                f"(max {self.max_abs_delta:.4f}); "
                f"call unchanged on {100 * self.call_agreement:.1f} % of {self.images} images "
                f"(must be >= {100 * MIN_CALL_AGREEMENT:.0f} %) "
                f"{mark(self.call_agreement >= MIN_CALL_AGREEMENT)}; on {self.images} images, "
                f"{self.studies} studies, {self.pairs} normal/abnormal study pairs (one swapped "
                f"pair = {self.auroc_step:.4f} AUROC"
                + (", so one swap alone fails the AUROC criterion)"
                   if self.auroc_step > MAX_AUROC_DROP else ")"))

    @property
    def auroc_step(self) -> float:
        """What one swapped normal/abnormal study pair does to the AUROC."""
        return 1.0 / self.pairs

    def record(self) -> dict:
        """Manifest form: the numbers, the thresholds and the verdict."""
        return asdict(self) | {"passed": self.passed, "auroc_step": self.auroc_step,
                               "thresholds": {
            "max_auroc_drop": MAX_AUROC_DROP, "max_mean_abs_delta": MAX_MEAN_ABS_DELTA,
            "min_call_agreement": MIN_CALL_AGREEMENT}}


class AccuracyGateFailed(ExportAborted):
    """The INT8 version scores the held-out set differently from FP32; it is not promoted."""

    def __init__(self, result: GateResult, candidate: str = "INT8") -> None:
        super().__init__(f"{candidate} version not promoted: it fails the accuracy gate against "
                         f"FP32 on the held-out set: {result.summary()}")
        self.result = result


class EnsembleRunner:
    """One version's backbones + the averaging graph, in-process: ensemble probability per image.

    The backbones run in batches, then the averaging graph per image (its inputs are one
    request's outputs, as in the served ensemble).
    """

    def __init__(self, backbones: Sequence[Path], mean_graph: bytes,
                 members: Sequence[str]) -> None:
        import onnxruntime as ort

        self.members = list(members)
        options = ort.SessionOptions()
        for key, value in ORT_FP32_ONLY.items():
            options.add_session_config_entry(key, value)
        self.sessions = [ort.InferenceSession(str(p), sess_options=options,
                                              providers=["CPUExecutionProvider"])
                         for p in backbones]
        self.mean = ort.InferenceSession(mean_graph, sess_options=options,
                                         providers=["CPUExecutionProvider"])

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        probs, cams = [], []
        for session in self.sessions:
            outs = [session.run([PROBABILITY_TENSOR, CAM_TENSOR],
                                {PIXELS_TENSOR: pixels[i:i + _BATCH]})
                    for i in range(0, len(pixels), _BATCH)]
            probs.append(np.concatenate([o[0] for o in outs]))
            cams.append(np.concatenate([o[1] for o in outs]))
        return average(self.mean, self.members, probs, cams)


def average(mean, members: Sequence[str], probs: list[np.ndarray],
            cams: list[np.ndarray]) -> np.ndarray:
    """The averaging graph (an ORT session) per image over the members' outputs: its inputs are
    one request's outputs, as in the served ensemble."""
    result = np.empty(len(probs[0]), np.float64)
    for i in range(len(result)):
        feed = {}
        for k, member in enumerate(members):
            feed[member_probability_tensor(member)] = probs[k][i:i + 1].reshape(1, 1)
            feed[member_cam_tensor(member)] = cams[k][i:i + 1]
        (p,) = mean.run([PROBABILITY_TENSOR], feed)
        result[i] = float(p.reshape(-1)[0])
    return result


class ServedEnsemble:
    """One version's backbones served by Triton (`export.backbone_serving.BackboneServer`, as
    the repository will serve them) + the averaging graph in-process: what the gate scores.

    The averaging graph is the same ORT FP32 graph on both sides of the comparison, so it runs
    here; the backbones are where runtime, precision and threads differ, so they run there."""

    def __init__(self, server, names: Sequence[str], mean_graph: bytes,
                 members: Sequence[str]) -> None:
        import onnxruntime as ort

        self.server, self.names, self.members = server, list(names), list(members)
        options = ort.SessionOptions()
        for key, value in ORT_FP32_ONLY.items():
            options.add_session_config_entry(key, value)
        self.mean = ort.InferenceSession(mean_graph, sess_options=options,
                                         providers=["CPUExecutionProvider"])

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        outs = [self.server.infer(name, pixels) for name in self.names]
        return average(self.mean, self.members, [o[0] for o in outs], [o[1] for o in outs])


def ensemble_probabilities(backbones: Sequence[Path], mean_graph: bytes, members: Sequence[str],
                           pixels: np.ndarray) -> np.ndarray:
    """Ensemble probability per image of preprocessed `pixels` [N, 3, S, S]."""
    return EnsembleRunner(backbones, mean_graph, members)(pixels)


def compare(labels: Sequence[int], studies: Sequence[str], thresholds: Sequence[float],
            fp32: np.ndarray, int8: np.ndarray) -> GateResult:
    """The gate's three numbers from per-image ensemble probabilities of both versions."""
    _, study_labels, study_fp32 = labelled_study_means(studies, labels, fp32)
    _, _, study_int8 = labelled_study_means(studies, labels, int8)
    if len(set(study_labels.tolist())) < 2:
        raise ValueError("the held-out set needs normal and abnormal studies (AUROC is undefined "
                         "with one class)")
    auc32, auc8 = auroc(study_labels, study_fp32), auroc(study_labels, study_int8)
    t = np.asarray(thresholds, np.float64)
    agreement = float(np.mean((fp32 >= t) == (int8 >= t)))
    positives = int(np.sum(study_labels))
    return GateResult(images=len(fp32), studies=len(study_labels),
                      pairs=positives * (len(study_labels) - positives), auroc_fp32=float(auc32),
                      auroc_int8=float(auc8), auroc_drop=float(auc32 - auc8),
                      mean_abs_delta=float(np.mean(np.abs(fp32 - int8))),
                      max_abs_delta=float(np.max(np.abs(fp32 - int8))),
                      call_agreement=agreement)


def thresholds_for(body_parts: Sequence[str | None], points: dict[str, float],
                   default: float = MURA_DEFAULT_THRESHOLD) -> list[float]:
    """The operating point each image is called at (its body part's, else the default)."""
    return [float(points.get(part or "", default)) for part in body_parts]
