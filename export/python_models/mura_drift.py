"""mura_drift (Triton python backend): the drift metrics of every served MURA image.

The last step of `mura_ensemble`, after `mura_mean`: it observes each image's PROBABILITY,
OOD_SCORE and MEMBER_SPREAD into Prometheus metrics on Triton's metrics port and passes the three
tensors on unchanged. Server side, so every client is counted (batch, gateway, web, anyone's
tritonclient), and it works the same on our embedded server and in NVIDIA's container (both run
the python backend; custom metrics are `pb_utils.MetricFamily`, HISTOGRAM kind included in 2.51).

Copied by `export.mura_drift` as `model.py` into every version of `mura_drift`, next to
`_vendored/msk/constants.py` and `drift_reference.json` (the version's bucket edges, its
reference shares in those buckets and its OOD thresholds, written at export): the model needs
neither this package nor a PYTHONPATH, and a version keeps the edges and reference it was
exported with. Families (labels `version`, and `body_part` where the request says it):

  msk_mura_<quantity>                      histogram (`_bucket{le}`, `_sum`, `_count`)
  msk_mura_drift_observations_total        counter per bucket, NOT cumulative (`bucket` = upper
                                           edge): what the PSI rule needs (deploy/prometheus/
                                           drift.yml); PromQL cannot difference adjacent `le`
                                           buckets without matching their text, which Prometheus
                                           2 and 3 format differently ("1" vs "1.0")
  msk_mura_drift_reference_share           gauge: the reference set's share per bucket
  msk_mura_drift_reference_images          gauge: reference set size
  msk_mura_ood_threshold                   gauge: the version's OOD threshold per body part
  msk_mura_out_of_distribution_total       counter: images above their threshold

Every series of a version exists from load (all body parts, all buckets, at 0), so `increase()`
counts a version's first images too. The body part is the request parameter `body_part` (one of
MURA_BODY_PARTS, else `unknown`, which also gets the default threshold).
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parent / "_vendored"))
from msk.constants import (  # noqa: E402 - importable only once _vendored is on the path
    DRIFT_BODY_PART_PARAMETER,
    DRIFT_UNKNOWN_BODY_PART,
    MEMBER_SPREAD_TENSOR,
    MURA_BODY_PARTS,
    MURA_DRIFT_MODEL,
    OOD_SCORE_TENSOR,
    PROBABILITY_TENSOR,
    WARMUP_PARAMETER,
)
from msk.python_step import execute_each  # noqa: E402

PARAMS_FILE = "drift_reference.json"
TENSORS = {"probability": PROBABILITY_TENSOR, "ood_score": OOD_SCORE_TENSOR,
           "member_spread": MEMBER_SPREAD_TENSOR}
DESCRIPTIONS = {
    "probability": "Ensemble abnormality probability of each served MURA image",
    "ood_score": "Out-of-distribution score of each served MURA image (about 1 = typical)",
    "member_spread": "Max - min of the four member probabilities of each served MURA image",
}


def bucket_label(edge: float) -> str:
    """The `bucket` label of an upper edge (export.mura_drift writes the same text)."""
    return "+Inf" if math.isinf(edge) else repr(float(edge))


def bucket_index(value: float, edges: list) -> int:
    """Index of the first bucket whose upper edge is >= value (Prometheus' `le`)."""
    return int(np.searchsorted(np.asarray(edges, np.float64), value, side="left"))


class TritonPythonModel:
    """Observes the three drift quantities of each request, then returns them unchanged."""

    def initialize(self, args: dict) -> None:
        here = Path(args["model_repository"]) / args["model_version"]
        self.params = json.loads((here / PARAMS_FILE).read_text())
        version = str(args["model_version"])
        self.edges = {q: [float(e) for e in self.params["edges"][q]] for q in TENSORS}
        self.thresholds = {p: float(t) for p, t in self.params["ood_thresholds"].items()}
        self.default_threshold = float(self.params["ood_default_threshold"])
        family = pb_utils.MetricFamily
        self.histograms = {q: family(name=f"msk_mura_{q}", description=DESCRIPTIONS[q],
                                     kind=family.HISTOGRAM) for q in TENSORS}
        self.buckets = family(
            name="msk_mura_drift_observations_total", kind=family.COUNTER,
            description="Served MURA images per quantity and bucket (not cumulative)")
        self.ood = family(name="msk_mura_out_of_distribution_total", kind=family.COUNTER,
                          description="Served MURA images whose OOD score is above the "
                          "version's threshold for their body part")
        reference = family(name="msk_mura_drift_reference_share", kind=family.GAUGE,
                           description="Share of the version's reference set per bucket")
        images = family(name="msk_mura_drift_reference_images", kind=family.GAUGE,
                        description="Images in the version's OOD reference set")
        thresholds = family(name="msk_mura_ood_threshold", kind=family.GAUGE,
                            description="The version's OOD threshold per body part")
        self.gauges = []      # kept alive: a Metric lives as long as its Python object
        for q, shares in self.params["reference_shares"].items():
            for edge, share in zip([*self.edges[q], math.inf], shares, strict=True):
                gauge = reference.Metric(labels={"version": version, "quantity": q,
                                                 "bucket": bucket_label(edge)})
                gauge.set(float(share))
                self.gauges.append(gauge)
        gauge = images.Metric(labels={"version": version})
        gauge.set(float(self.params["reference_images"]))
        self.gauges.append(gauge)
        self.metrics = {}
        for part in (*MURA_BODY_PARTS, DRIFT_UNKNOWN_BODY_PART):
            labels = {"version": version, "body_part": part}
            gauge = thresholds.Metric(labels=labels)
            gauge.set(self._threshold(part))
            self.gauges.append(gauge)
            self.metrics[part] = {
                "histograms": {q: self.histograms[q].Metric(labels=labels, buckets=self.edges[q])
                               for q in TENSORS},
                "buckets": {q: [self.buckets.Metric(labels={**labels, "quantity": q,
                                                            "bucket": bucket_label(edge)})
                                for edge in [*self.edges[q], math.inf]] for q in TENSORS},
                "ood": self.ood.Metric(labels=labels),
            }
        self.families = [reference, images, thresholds]   # kept until `finalize`

    def finalize(self) -> None:
        """Metrics first, then their families: pb_utils refuses a Metric whose family is gone."""
        self.metrics.clear()
        self.gauges.clear()
        self.histograms.clear()
        self.families.clear()
        self.buckets = self.ood = None

    def _threshold(self, part: str) -> float:
        return self.thresholds.get(part, self.default_threshold)

    @staticmethod
    def _parameters(request) -> dict:
        try:
            params = json.loads(request.parameters() or "{}")
        except (ValueError, AttributeError):
            return {}
        return params if isinstance(params, dict) else {}

    def _body_part(self, request) -> str:
        part = self._parameters(request).get(DRIFT_BODY_PART_PARAMETER)
        return part if part in MURA_BODY_PARTS else DRIFT_UNKNOWN_BODY_PART

    def _observe(self, part: str, values: dict) -> None:
        metrics = self.metrics[part]
        for q, value in values.items():
            if not math.isfinite(value):    # a NaN would poison _sum; no bucket holds it
                continue
            metrics["histograms"][q].observe(value)
            metrics["buckets"][q][bucket_index(value, self.edges[q])].increment(1)
        score = values["ood_score"]
        if math.isfinite(score) and score > self._threshold(part):
            metrics["ood"].increment(1)

    def _one(self, request) -> "pb_utils.InferenceResponse":
        tensors = {q: pb_utils.get_input_tensor_by_name(request, name)
                   for q, name in TENSORS.items()}
        arrays = {q: t.as_numpy() for q, t in tensors.items()}
        try:
            if WARMUP_PARAMETER not in self._parameters(request):   # warm-up: not served
                self._observe(self._body_part(request),
                              {q: float(a.reshape(-1)[0]) for q, a in arrays.items()})
        except Exception as exc:  # noqa: BLE001 - why: a metrics failure must not fail a result
            pb_utils.Logger.log_warn(f"{MURA_DRIFT_MODEL}: not observed: {exc}")
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(TENSORS[q], a) for q, a in arrays.items()])

    def execute(self, requests: list) -> list:
        return execute_each(requests, self._one, MURA_DRIFT_MODEL, pb_utils)
