"""The gateway's study scoring as small typed steps, one job each (in the spirit of MONAI Deploy's
operators): select the images -> score them -> detect wrist structures -> collect the models'
provenance -> call the study. `StudyScorer.score` (clients/gateway/scoring.py) only chains them;
building the DICOM objects (clients/gateway/results.py) and delivering them
(clients/gateway/service.py) follow.

Each step takes and returns plain dataclasses, so each is tested alone. Failures are classified
here, so that the queue does the right thing:

* `TransientError`: a request failed in transport, or the replicas disagree on a model's
  version (a rollout in progress) -> retry with backoff;
* `PermanentError`: images were routed but none could be read, none could be scored, or the
  server's answer lacks the versions/SHA-256s the SR must carry -> dead-letter now.

Per instance: not an image (no pixel data) -> skipped; body part not an upper-limb MURA part ->
skipped (logged, not an error); pixels unusable (multi-frame, undecodable) -> a finding with the
reason. Everything else is scored by `mura_ensemble`, wrists also by `wrist_detect` when the
router says so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.uid import UID

from clients.errors import Reason, TransientError, is_retryable
from clients.findings import (
    ImageFinding,
    ModelProvenance,
    NotScored,
    ProvenanceError,
    Structure,
    StudyResult,
)
from clients.gateway.phi import uid_tag
from clients.mura import MuraClient, MuraResult
from clients.routing import Router
from clients.wrist import WristClient, WristResult
from msk.constants import MURA_ENSEMBLE_MODEL, WRIST_DETECT_MODEL, WRIST_DETECTORS
from msk.imaging import RadiographError, dataset_to_grayscale, read_dicom

log = logging.getLogger("msk.gateway.scoring")

__all__ = ["Candidate", "PermanentError", "ScoredStudy", "Selection", "TransientError",
           "call_study", "collect_provenance", "detect_structures", "score_images",
           "select_images"]


class PermanentError(RuntimeError):
    """Retrying cannot help (nothing readable to score); `reason` is the first image's code."""

    def __init__(self, message: str, reason: str = "unreadable_image") -> None:
        super().__init__(message)
        self.reason = reason


# ----------------------------------------------------------------------------- select
@dataclass(frozen=True)
class Candidate:
    """An image routed for scoring, decoded."""

    ds: Dataset
    body_part: str
    pipelines: tuple[str, ...]
    image: np.ndarray

    @property
    def sop_instance_uid(self) -> str:
        return str(self.ds.SOPInstanceUID)


@dataclass(frozen=True)
class Selection:
    """What of a received batch is to be scored, and why the rest is not."""

    received: int
    """Files in the batch."""
    candidates: tuple[Candidate, ...]
    unreadable: tuple[ImageFinding, ...] = ()
    """Routed for scoring, but the pixels are unusable (the finding says why)."""
    skipped: tuple[NotScored, ...] = ()
    """Not meant to be scored: not an image, not routed, not a readable DICOM file."""

    @property
    def wrists(self) -> tuple[Candidate, ...]:
        """The candidates the router sends to the wrist detector too."""
        return tuple(c for c in self.candidates if WRIST_DETECT_MODEL in c.pipelines)


def select_images(files: Sequence[Path], router: Router) -> Selection:
    """Read the headers, put them in reading order and route each instance; raise
    PermanentError when nothing can be read or every routed image is unreadable."""
    headers: list[Dataset] = []
    skipped: list[NotScored] = []
    for path in files:
        try:
            headers.append(read_dicom(path))   # capped: never a 1.5 GB inflate
        except Exception as exc:  # why: corrupt files raise many types; skip, go on
            log.warning("instance file %s unreadable: %s", path.name, type(exc).__name__)
            skipped.append(NotScored(path.name, "unreadable DICOM file"))
    if not headers:
        raise PermanentError("no readable DICOM instance in the study")
    headers.sort(key=_reading_order)      # files are named by hash; the SR reads in order
    unreadable: list[ImageFinding] = []
    candidates: list[Candidate] = []
    for ds in headers:
        name = Path(ds.filename).name if isinstance(ds.filename, str) else "?"
        sop_uid = str(ds.get("SOPInstanceUID", name))
        tag = uid_tag(sop_uid)
        if "PixelData" not in ds:
            sop_class = ds.get("SOPClassUID")
            reason = f"not an image (SOP class {UID(sop_class).name if sop_class else None})"
            log.info("skipped %s: %s", tag, reason)
            skipped.append(NotScored(sop_uid, reason))
            continue
        route = router.route(ds)
        if not route.scored:
            log.info("skipped %s: not routed (%s)", tag, route.reason)
            skipped.append(NotScored(sop_uid, f"not routed: {route.reason}"))
            continue
        try:
            image = dataset_to_grayscale(ds, source=tag)
        except RadiographError as exc:
            log.warning("skipped %s: %s", tag, exc.detail)
            unreadable.append(_finding(ds, route.body_part, error=exc.detail))
            continue
        candidates.append(Candidate(ds, route.body_part or "", route.pipelines, image))
    if not candidates and unreadable:
        raise PermanentError("; ".join(f.error or "" for f in unreadable))
    return Selection(len(files), tuple(candidates), tuple(unreadable), tuple(skipped))


# ----------------------------------------------------------------------------- score
def score_images(client: MuraClient, candidates: Sequence[Candidate]) -> tuple[MuraResult, ...]:
    """One `MuraResult` per candidate, in order; TransientError when any request failed for a
    reason that says nothing about its image (the whole study is retried)."""
    results = tuple(client.score([c.image for c in candidates],
                                 body_parts=[c.body_part for c in candidates],
                                 names=[uid_tag(c.sop_instance_uid) for c in candidates]))
    transport = [r for r in results if r.error and is_retryable(r.error_reason)]
    if transport:
        raise TransientError(f"{len(transport)} request(s) failed: {transport[0].error}",
                             reason=str(transport[0].error_reason))
    return results


def detect_structures(client: WristClient, candidates: Sequence[Candidate]
                      ) -> dict[str, WristResult]:
    """SOP Instance UID -> the wrist detector's result for each candidate; any failure fails
    the batch, as the MURA requests do: transient when its reason is retryable, else
    permanent."""
    if not candidates:
        return {}
    found: dict[str, WristResult] = {}
    for cand, out in zip(candidates, client.detect([c.image for c in candidates]), strict=True):
        if out.error:
            failure = TransientError if is_retryable(out.error_reason) else PermanentError
            raise failure(f"{WRIST_DETECT_MODEL}: {out.error}", reason=str(out.error_reason))
        found[cand.sop_instance_uid] = out
    return found


# ----------------------------------------------------------------------------- provenance
DETECTOR_MODELS = frozenset(model for model, _ in WRIST_DETECTORS.values())
"""The wrist models served from weights (their SHA-256 is required)."""


def collect_provenance(mura: Iterable[MuraResult], wrists: Iterable[WristResult]
                       ) -> tuple[ModelProvenance, ...]:
    """Every model that answered, with the version and SHA-256 its response carried.

    Required: a version for every model, and the SHA-256 of every model served from weights
    (the four MURA members, the wrist detectors); the ensembles have no artifact of their own,
    and the other wrist models carry theirs when the export recorded it. Missing -> a
    PermanentError (bad_response) naming the model; two replicas answering with different
    versions of one model (a rollout in progress) -> a TransientError, since the SR could not
    say which version scored which image.
    """
    found: dict[str, ModelProvenance] = {}

    def add(model: ModelProvenance) -> None:
        known = found.setdefault(model.name, model)
        if known != model:
            raise TransientError(f"replicas answered with different versions of {model.name} "
                                 f"({known.version} and {model.version}): a rollout is in "
                                 "progress", reason=Reason.SERVER_UNAVAILABLE)

    try:
        for res in mura:
            if res.error is not None and not res.refused:
                continue                      # a failed request reported nothing
            if not res.versions:
                raise ProvenanceError(f"{MURA_ENSEMBLE_MODEL}: the response carried no "
                                      "provenance")
            for name, version in res.versions.items():
                if name == "pipeline":        # the ensemble: a composition, no artifact
                    add(ModelProvenance(MURA_ENSEMBLE_MODEL, str(version)))
                else:
                    add(ModelProvenance(name, str(version), _required_sha(res.artifacts, name)))
        for out in wrists:
            if not out.versions:
                raise ProvenanceError(f"{WRIST_DETECT_MODEL}: the response carried no "
                                      "provenance")
            artifacts = out.artifacts
            for name, version in out.versions.items():
                sha = (_required_sha(artifacts, name) if name in DETECTOR_MODELS
                       else artifacts.get(name) or None)
                add(ModelProvenance(name, str(version), sha))
    except ProvenanceError as exc:
        raise PermanentError(f"incomplete provenance from Triton: {exc}",
                             reason=Reason.BAD_RESPONSE) from exc
    return tuple(found.values())


def _required_sha(artifacts: dict[str, str], name: str) -> str:
    sha = artifacts.get(name)
    if not sha:
        raise ProvenanceError(f"{name}: the response carried no SHA-256")
    return sha


# ----------------------------------------------------------------------------- study
@dataclass(frozen=True)
class ScoredStudy:
    """The scored study plus what the result builders need from the sources."""

    result: StudyResult
    source: Dataset
    """Any instance of the study: the header the result objects copy."""
    received: int
    images: dict[str, np.ndarray] = field(default_factory=dict)   # SOP UID -> uint8 image
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict)  # SOP UID -> uint8 heatmap
    sources: dict[str, Dataset] = field(default_factory=dict)      # SOP UID -> header


def call_study(selection: Selection, mura: Sequence[MuraResult],
               wrists: dict[str, WristResult], models: Sequence[ModelProvenance]
               ) -> ScoredStudy:
    """One finding per image, and the study's call by the one study rule (`StudyResult.of`);
    PermanentError when no image could be scored (refused by the OOD gate counts as
    assessed)."""
    assessed = [r for r in mura if r.error is None or r.refused]
    if not assessed:
        raise PermanentError("no image could be scored: " + "; ".join(
            sorted({r.error or "" for r in mura if r.error})),
            reason=str(next(r.error_reason for r in mura if r.error_reason)))
    findings = list(selection.unreadable)
    images: dict[str, np.ndarray] = {}
    heatmaps: dict[str, np.ndarray] = {}
    sources: dict[str, Dataset] = {}
    for cand, res in zip(selection.candidates, mura, strict=True):
        sop = cand.sop_instance_uid
        wrist = wrists.get(sop)
        findings.append(_scored_finding(cand, res, wrist.detections if wrist else []))
        if res.error is None and res.heatmap is not None:
            heatmaps[sop] = res.heatmap
        images[sop], sources[sop] = cand.image, cand.ds
    result = StudyResult.of(findings, models, default_threshold=assessed[0].default_threshold,
                            skipped=selection.skipped)
    return ScoredStudy(result, selection.candidates[0].ds, selection.received, images,
                       heatmaps, sources)


def _scored_finding(cand: Candidate, res: MuraResult, structures: Sequence[Structure]
                    ) -> ImageFinding:
    """A candidate's finding: its scores when it was scored, its error else (a refused image
    keeps its OOD fields, to say why)."""
    finding = _finding(cand.ds, cand.body_part, error=res.error)
    finding.ood_score, finding.ood_threshold = res.ood_score, res.ood_threshold
    finding.in_distribution, finding.member_spread = res.in_distribution, res.member_spread
    finding.refused = res.refused
    if res.error is None:
        finding.probability = res.probability
        finding.members = dict(res.members)
        finding.abnormal = res.abnormal
        finding.threshold = None if res.threshold is None else float(res.threshold)
    finding.structures = list(structures)
    return finding


def _reading_order(ds: Dataset) -> tuple[int, int, str]:
    """Series number, instance number, SOP UID: the order a reader would page through."""
    def number(keyword: str) -> int:
        try:
            return int(ds.get(keyword) or 0)
        except (TypeError, ValueError):
            return 0
    return number("SeriesNumber"), number("InstanceNumber"), str(ds.get("SOPInstanceUID", ""))


def _finding(ds: Dataset, body_part: str | None, error: str | None = None) -> ImageFinding:
    return ImageFinding(
        sop_class_uid=str(ds.SOPClassUID), sop_instance_uid=str(ds.SOPInstanceUID),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")), body_part=body_part,
        error=error)
