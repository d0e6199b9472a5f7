"""One queued study (a folder of DICOM files) -> routed Triton requests -> `StudyResult`.

Per instance: not an image (no pixel data) -> skipped; body part not an upper-limb MURA part ->
skipped (logged, not an error); pixels unusable (multi-frame, undecodable) -> skipped with the
reason. Everything else is scored by `mura_ensemble`, wrists also by `wrist_detect` when the
server has it. Failures are classified so the queue does the right thing:

* `TransientError`: Triton not ready or a request failed in transport -> retry with backoff;
* `PermanentError`: images were routed for scoring but none could be read -> dead-letter now.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import Dataset

from clients.errors import Reason, TransientError, error_text, is_retryable, request_reason
from clients.failover import url_list
from clients.gateway.phi import uid_tag
from clients.routing import Router
from clients.sr import ImageFinding, ModelProvenance, Structure, StudyResult
from clients.tls import GrpcTls, client_kwargs
from msk.constants import MURA_DEFAULT_THRESHOLD, MURA_ENSEMBLE_MODEL, WRIST_DETECT_MODEL
from msk.imaging import RadiographError, dataset_to_grayscale, read_dicom

log = logging.getLogger("msk.gateway.scoring")


class PermanentError(RuntimeError):
    """Retrying cannot help (nothing readable to score); `reason` is the first image's code."""

    def __init__(self, message: str, reason: str = "unreadable_image") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class ScoredStudy:
    """The scored study plus what the result builders need from the sources."""

    result: StudyResult
    source: Dataset
    received: int
    images: dict[str, np.ndarray] = field(default_factory=dict)   # SOP UID -> uint8 image
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict)  # SOP UID -> uint8 heatmap
    sources: dict[str, Dataset] = field(default_factory=dict)      # SOP UID -> header


@dataclass
class _Candidate:
    ds: Dataset
    body_part: str
    pipelines: tuple[str, ...]
    image: np.ndarray


class StudyScorer:
    """Scores studies on one or several Triton servers (requests spread over them, failing over
    as `msk score` does); discovers `wrist_detect` on every readiness check."""

    def __init__(self, triton_url: str | Sequence[str], router: Router, wrist: str = "auto",
                 timeout_s: float = 120.0, tls: GrpcTls | None = None,
                 ood_policy: str = "refuse") -> None:
        import tritonclient.grpc as grpcclient

        from clients.mura import MuraClient

        self.urls = url_list(triton_url)
        self.url = ", ".join(self.urls)
        self.router = router
        self.wrist_mode = wrist
        self.timeout_s = timeout_s
        self.tls = tls
        self._control = {u: grpcclient.InferenceServerClient(u, **client_kwargs(tls))
                         for u in self.urls}
        self._mura = MuraClient(self.urls, timeout_s=timeout_s, tls=tls, ood_policy=ood_policy)
        self._wrist = None
        self._wrist_models: dict[str, ModelProvenance] = {}

    def close(self) -> None:
        self._mura.close()
        for client in self._control.values():
            client.close()

    def check_ready(self) -> None:
        """Raise TransientError unless some endpoint has the ensemble ready; update routing.

        The wrist detector is used when every READY endpoint has it (a request may go to any).
        """
        from tritonclient.utils import InferenceServerException

        ready: list[str] = []
        problems: list[str] = []
        wrist = self.wrist_mode != "off"
        for url, control in self._control.items():
            try:
                if not (control.is_server_ready() and control.is_model_ready(
                        MURA_ENSEMBLE_MODEL)):
                    problems.append(f"{url}: {MURA_ENSEMBLE_MODEL} not ready")
                    continue
            except InferenceServerException as exc:
                problems.append(f"{url}: unreachable ({error_text(exc)})")
                continue
            ready.append(url)
            if wrist:
                try:  # a repository without the detector answers "unknown model": no outage
                    wrist = bool(control.is_model_ready(WRIST_DETECT_MODEL))
                except InferenceServerException:
                    wrist = False
        if not ready:
            raise TransientError(f"Triton not ready: {'; '.join(problems)}", outage=True,
                                 reason=Reason.SERVER_UNAVAILABLE)
        if self.wrist_mode == "on" and not wrist:
            raise TransientError(f"{WRIST_DETECT_MODEL} required (wrist=on) but not ready",
                                 outage=True, reason=Reason.SERVER_UNAVAILABLE)
        self.router.wrist_detect_available = wrist

    # ------------------------------------------------------------------------------------
    def score(self, files: list[Path]) -> ScoredStudy | None:
        """Score one study batch; None when nothing in it is meant to be scored."""
        self.check_ready()
        self._wrist_models = {}
        headers: list[Dataset] = []
        skipped: list[tuple[str, str]] = []
        findings: list[ImageFinding] = []
        candidates: list[_Candidate] = []
        for path in files:
            try:
                headers.append(read_dicom(path))   # capped: never a 1.5 GB inflate
            except Exception as exc:  # why: corrupt files raise many types; skip, go on
                log.warning("instance file %s unreadable: %s", path.name, type(exc).__name__)
                skipped.append((path.name, "unreadable DICOM file"))
        headers.sort(key=_reading_order)      # files are named by hash; the SR reads in order
        for ds in headers:
            path = Path(ds.filename) if isinstance(ds.filename, str) else Path("?")
            tag = uid_tag(ds.get("SOPInstanceUID", path.name))
            sop_uid = str(ds.get("SOPInstanceUID", path.name))
            if "PixelData" not in ds:
                sop = ds.get("SOPClassUID")
                reason = f"not an image (SOP class {getattr(sop, 'name', sop)})"
                log.info("skipped %s: %s", tag, reason)
                skipped.append((sop_uid, reason))
                continue
            route = self.router.route(ds)
            if not route.scored:
                log.info("skipped %s: not routed (%s)", tag, route.reason)
                skipped.append((sop_uid, f"not routed: {route.reason}"))
                continue
            try:
                image = dataset_to_grayscale(ds, source=tag)
            except RadiographError as exc:
                log.warning("skipped %s: %s", tag, exc.detail)
                findings.append(_finding(ds, route.body_part, error=exc.detail))
                continue
            candidates.append(_Candidate(ds, route.body_part or "", route.pipelines, image))
        if not headers:
            raise PermanentError("no readable DICOM instance in the study")
        if not candidates:
            if findings:
                raise PermanentError("; ".join(f.error or "" for f in findings))
            return None

        mura = self._mura.score([c.image for c in candidates],
                                body_parts=[c.body_part for c in candidates],
                                names=[uid_tag(c.ds.SOPInstanceUID) for c in candidates])
        transport = [r for r in mura if r.error and is_retryable(r.error_reason)]
        if transport:
            raise TransientError(f"{len(transport)} request(s) failed: {transport[0].error}",
                                 reason=str(transport[0].error_reason))
        structures = self._detect([c for c in candidates if WRIST_DETECT_MODEL in c.pipelines])

        scored = ScoredStudy(result=StudyResult([], [], MURA_DEFAULT_THRESHOLD, skipped),
                             source=candidates[0].ds, received=len(files))
        models: dict[str, ModelProvenance] = {}
        for cand, res in zip(candidates, mura, strict=True):
            sop = str(cand.ds.SOPInstanceUID)
            finding = _finding(cand.ds, cand.body_part, error=res.error)
            finding.ood_score, finding.ood_threshold = res.ood_score, res.ood_threshold
            finding.in_distribution, finding.member_spread = res.in_distribution, \
                res.member_spread
            finding.refused = res.refused
            if res.refused:         # refused by the OOD gate: the SR says "not assessed"
                for name, version in res.versions.items():
                    model = MURA_ENSEMBLE_MODEL if name == "pipeline" else name
                    models.setdefault(model, ModelProvenance(
                        model, str(version), res.artifacts.get(name, "")))
            if res.error is None:
                finding.probability = res.probability
                finding.members = dict(res.members)
                finding.abnormal = res.abnormal
                finding.threshold = float(res.threshold)
                for name, version in res.versions.items():
                    model = MURA_ENSEMBLE_MODEL if name == "pipeline" else name
                    models.setdefault(model, ModelProvenance(
                        model, str(version), res.artifacts.get(name, "")))
                if res.heatmap is not None:
                    scored.heatmaps[sop] = res.heatmap
            finding.structures = structures.get(sop, [])
            findings.append(finding)
            scored.images[sop] = cand.image
            scored.sources[sop] = cand.ds
        ok = [r for r in mura if r.error is None or r.refused]
        if not ok:
            raise PermanentError("no image could be scored: " + "; ".join(
                sorted({f.error or "" for f in findings if f.error})),
                reason=str(next(r.error_reason for r in mura if r.error_reason)))
        models.update(self._wrist_models)
        scored.result.images = findings
        scored.result.models = list(models.values())
        scored.result.default_threshold = ok[0].default_threshold
        call = scored.result.call
        # Every image refused by the OOD gate: no call, the default point is only reported.
        scored.result.threshold = float(call.threshold if call.threshold is not None
                                        else ok[0].default_threshold)
        return scored

    def _detect(self, candidates: list[_Candidate]) -> dict[str, list[Structure]]:
        """Wrist structures per SOP UID; a failure there fails the batch (transient when its
        reason is retryable, else permanent)."""
        if not candidates:
            return {}
        from tritonclient.utils import InferenceServerException

        from clients.wrist import WristClient

        if self._wrist is None:
            self._wrist = WristClient(self.urls, tls=self.tls)
        try:
            outputs = self._wrist.detect([c.image for c in candidates])
        except InferenceServerException as exc:
            reason = request_reason(exc)
            failure = TransientError if is_retryable(reason) else PermanentError
            raise failure(f"{WRIST_DETECT_MODEL} failed: {error_text(exc)}",
                          reason=reason) from exc
        found: dict[str, list[Structure]] = {}
        models: dict[str, ModelProvenance] = {}
        for cand, out in zip(candidates, outputs, strict=True):
            error = getattr(out, "error", None)
            if error:
                # The same rule as the MURA requests: only a reason that says nothing about the
                # image (a sick or busy server) is worth another attempt.
                failure = TransientError if is_retryable(out.error_reason) else PermanentError
                raise failure(f"{WRIST_DETECT_MODEL}: {error}", reason=str(out.error_reason))
            detections = getattr(out, "detections", out)
            found[str(cand.ds.SOPInstanceUID)] = [
                Structure(d.class_name, float(d.score), float(d.x1), float(d.y1), float(d.x2),
                          float(d.y2)) for d in detections]
            versions = getattr(out, "versions", {}) or {}
            artifacts = getattr(out, "artifacts", {}) or {}
            for name, version in versions.items():
                models.setdefault(name, ModelProvenance(name, str(version),
                                                        artifacts.get(name, "")))
        if not models:
            models[WRIST_DETECT_MODEL] = ModelProvenance(WRIST_DETECT_MODEL, "latest", "")
        self._wrist_models = models
        return found


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
