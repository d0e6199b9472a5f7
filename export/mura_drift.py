"""Write `mura_drift/<version>/`: the drift step's code and the reference it compares against.

The reference distributions are those of the version's own OOD reference set (issue 21, item 5),
in the bucket edges of `msk.constants.DRIFT_BUCKETS`:

  probability    the ensemble probability of each reference image (mean of the members'
                 probabilities, as `mura_mean` computes it) from the same ONNX pass that gave
                 the OOD features (`export.ood_reference.member_outputs`);
  ood_score      the cross-fitted reference scores (`Reference.scores`): the unbiased
                 estimate of what a new image like the reference set scores, the scores the
                 thresholds are taken from;
  member_spread  max - min of the members' probabilities of each reference image.

`drift_reference.json` holds the edges, the shares per bucket (upper edges, `le` semantics, the
last bucket +Inf), the reference size and the version's OOD thresholds; it is an artifact of the
version (SHA-256 in the manifest), with `model.py` (export/python_models/mura_drift.py) and a
vendored copy of msk/constants.py, as the wrist postprocessing model is vendored.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from export.manifest import artifact_record
from export.python_step import write_python_step
from msk.constants import DRIFT_BUCKETS, MURA_DRIFT_MODEL

PARAMS_FILE = "drift_reference.json"
"""Read by the model (`PARAMS_FILE` there: the same name)."""


def bucket_shares(values: np.ndarray, edges: tuple[float, ...]) -> list[float]:
    """Share of `values` in each bucket: (-inf, e0], (e0, e1], ..., (e_last, +inf); NaN ignored
    (the served model skips them too)."""
    x = np.asarray(values, np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return [0.0] * (len(edges) + 1)
    counts = np.bincount(np.searchsorted(np.asarray(edges, np.float64), x, side="left"),
                         minlength=len(edges) + 1)
    return [float(c) / len(x) for c in counts]


def reference_quantities(member_probabilities: np.ndarray, ood_scores: np.ndarray
                         ) -> dict[str, np.ndarray]:
    """The reference values of every drift quantity from the members' probabilities [N, M]
    and the cross-fitted OOD scores [N]."""
    p = np.asarray(member_probabilities, np.float64)
    return {"probability": p.mean(1), "ood_score": np.asarray(ood_scores, np.float64),
            "member_spread": p.max(1) - p.min(1)}


def drift_parameters(member_probabilities: np.ndarray, ood_scores: np.ndarray,
                     ood_provenance: dict) -> dict:
    """Contents of `drift_reference.json` (`ood_provenance`: the version's PROVENANCE `ood`)."""
    values = reference_quantities(member_probabilities, ood_scores)
    return {
        "edges": {q: list(edges) for q, edges in DRIFT_BUCKETS.items()},
        "reference_shares": {q: bucket_shares(values[q], DRIFT_BUCKETS[q])
                             for q in DRIFT_BUCKETS},
        "reference_images": int(len(values["ood_score"])),
        "ood_thresholds": ood_provenance["thresholds"],
        "ood_default_threshold": ood_provenance["default_threshold"],
    }


def write_drift_model(out_dir: Path, version: int, params: dict) -> list[dict]:
    """Write `mura_drift/<version>/` (model.py, vendored constants, drift_reference.json) into
    the export's staging folder; return its manifest records."""
    folder = Path(out_dir) / MURA_DRIFT_MODEL / str(version)
    model = write_python_step(folder, "mura_drift.py", ("constants.py",))
    (folder / PARAMS_FILE).write_text(json.dumps(params, indent=1, sort_keys=True))
    return [artifact_record(out_dir, MURA_DRIFT_MODEL, version, folder / PARAMS_FILE),
            artifact_record(out_dir, MURA_DRIFT_MODEL, version, model)]
