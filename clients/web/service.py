"""What the web app asks of Triton: score a study, find wrist structures, report model versions.

Everything goes through the thin gRPC clients (`clients.mura.MuraClient`,
`clients.wrist.WristClient`) exactly as any other client would; no model runs in the web
process. Errors become sentences a person can act on ("the inference server at 127.0.0.1:8001
is not reachable"), never tracebacks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clients.errors import Reason, error_text, request_reason
from clients.failover import url_list
from clients.rows import common_fields, trust_fields
from clients.study import ScoredImage, member_means, study_call
from clients.tls import GrpcTls, client_kwargs
from clients.web import rendering
from clients.web.uploads import DecodedUpload
from msk.constants import (
    MURA_DEFAULT_THRESHOLD,
    MURA_ENSEMBLE_MODEL,
    MURA_MEMBERS,
    OOD_POLICIES,
    OOD_REFUSED_REASON,
    WRIST_DETECT_MODEL,
)
from msk.imaging import RadiographError

log = logging.getLogger("msk.web")

STATUS_TIMEOUT_S = 3.0
"""How long the page waits for Triton's model index before saying the server is unreachable."""

_UNREACHABLE = frozenset({Reason.SERVER_UNAVAILABLE, Reason.TIMEOUT})
"""Reasons (`clients.errors`) that mean the server could not be reached at all."""


def unreachable_message(url: str) -> str:
    return (f"The inference server at {url} is not reachable. Check that Triton is running "
            f"(`msk serve`) and that --triton-url points at its gRPC port.")


def humanize(url: str, message: str, reason: str | None = None) -> str:
    """A client error as one readable line (no traceback, no gRPC boilerplate); `reason` (a
    `clients.errors.Reason`) decides whether it is "the server is not reachable"."""
    if reason in _UNREACHABLE:
        return unreachable_message(url)
    first = (message.strip().splitlines() or ["unknown error"])[0]
    return first if len(first) <= 300 else first[:299] + "…"


@dataclass
class ServerStatus:
    """What the page header shows: is Triton reachable, which model versions are loaded."""

    url: str
    reachable: bool
    models: dict[str, list[str]] = field(default_factory=dict)   # name -> READY versions
    error: str | None = None

    @property
    def wrist_available(self) -> bool:
        return bool(self.models.get(WRIST_DETECT_MODEL))

    @property
    def mura_available(self) -> bool:
        return bool(self.models.get(MURA_ENSEMBLE_MODEL))

    def to_json(self) -> dict[str, Any]:
        return {"triton_url": self.url, "reachable": self.reachable, "models": self.models,
                "wrist_detect": self.wrist_available, "error": self.error}


class WebService:
    """Holds the gRPC clients for one Triton server; safe to share between request threads."""

    def __init__(self, triton_url: str | Sequence[str], tls: GrpcTls | None = None,
                 ood_policy: str = "flag") -> None:
        if ood_policy not in OOD_POLICIES:
            raise ValueError(f"ood_policy must be one of {OOD_POLICIES}, got {ood_policy!r}")
        self.ood_policy = ood_policy
        """What an out-of-distribution image gets (`msk web --ood`, docs/ood.md): flag = scored
        with a warning; refuse = "not assessed", no probability and no call."""
        self.urls = url_list(triton_url)
        self.url = ", ".join(self.urls)
        """All endpoints, for messages; requests are spread over them (`clients.failover`)."""
        self.tls = tls
        self._mura = None
        self._wrist = None

    # -- clients (created lazily so the app starts even while Triton is down) --------------------
    def _mura_client(self):
        if self._mura is None:
            from clients.mura import MuraClient

            self._mura = MuraClient(self.urls, tls=self.tls, ood_policy=self.ood_policy)
        return self._mura

    def _wrist_client(self):
        if self._wrist is None:
            from clients.wrist import WristClient

            self._wrist = WristClient(self.urls, tls=self.tls)
        return self._wrist

    # -- status -----------------------------------------------------------------------------
    def status(self) -> ServerStatus:
        """Ask Triton (gRPC) for its model index; READY versions per model name.

        With several endpoints, the first that answers speaks for them (they serve the same
        repository); unreachable only when none answers.
        """
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        errors: list[tuple[str, str | None]] = []
        index: dict[str, Any] | None = None
        for url in self.urls:
            try:
                client = grpcclient.InferenceServerClient(url, **client_kwargs(self.tls))
                try:
                    index = client.get_model_repository_index(
                        as_json=True, client_timeout=STATUS_TIMEOUT_S)
                finally:
                    client.close()
                break
            except InferenceServerException as exc:
                errors.append((error_text(exc), request_reason(exc)))
            except (OSError, ValueError) as exc:  # a malformed address, a refused TLS setup
                errors.append((str(exc), None))
        if index is None:
            return ServerStatus(self.url, False, error=humanize(self.url, *errors[-1]))
        models: dict[str, list[str]] = {}
        for entry in index.get("models", []):
            if entry.get("state") == "READY":
                models.setdefault(entry["name"], []).append(str(entry.get("version", "")))
        for versions in models.values():
            versions.sort(key=lambda v: int(v) if v.isdigit() else -1)
        return ServerStatus(self.url, True, models=models)

    # -- scoring ------------------------------------------------------------------------------
    def score_study(self, uploads: list[DecodedUpload | RadiographError], body_part: str | None,
                    ) -> dict[str, Any]:
        """Score every decodable upload; a `RadiographError` entry is an upload that could not
        be read, reported as that image's error.

        Returns {"images": [...], "study": {...}, "status": {...}, "ood_policy": ...}; never
        raises for bad input or an unreachable server. Each image carries the shared row
        fields (`clients.rows`).
        """
        status = self.status()
        decoded = [u for u in uploads if isinstance(u, DecodedUpload)]
        parts = [u.body_part or body_part for u in decoded]
        results: list[Any] = []
        global_error: tuple[str, str] | None = None      # (message, reason) for every image
        if decoded:
            if not status.reachable:
                global_error = (status.error or unreachable_message(self.url),
                                Reason.SERVER_UNAVAILABLE)
            elif not status.mura_available:
                global_error = (f"The inference server at {self.url} has no ready "
                                f"{MURA_ENSEMBLE_MODEL} model.", Reason.MODEL_NOT_FOUND)
            else:
                results = self._mura_client().score(
                    [u.image for u in decoded], body_parts=parts,
                    names=[u.filename for u in decoded])

        images: list[dict[str, Any]] = []
        it = iter(zip(decoded, parts, results or [None] * len(decoded), strict=True))
        for upload in uploads:
            if isinstance(upload, RadiographError):
                images.append({**common_fields(upload.source, error=str(upload),
                                               error_reason=upload.reason),
                               "filename": upload.source})
                continue
            item, part, result = next(it)
            images.append(self._image_payload(item, part, result, global_error, status))
        default = next((r.default_threshold for r in results if r.error is None),
                       MURA_DEFAULT_THRESHOLD)
        return {"images": images, "study": aggregate(images, default),
                "status": status.to_json(), "ood_policy": self.ood_policy}

    def _image_payload(self, upload: DecodedUpload, part: str | None, result: Any,
                       global_error: tuple[str, str] | None, status: ServerStatus
                       ) -> dict[str, Any]:
        h, w = upload.image.shape
        payload: dict[str, Any] = {
            "filename": upload.filename, "format": upload.kind, "body_part": part,
            "width": int(w), "height": int(h),
            "image": rendering.png_data_url(rendering.display_image(upload.image)),
        }
        if global_error is None and result is not None and result.error is None:
            error = None
        elif global_error is not None:
            error, reason = global_error
        else:
            error, reason = result.error, result.error_reason
        if error:
            message = humanize(self.url, error, reason)
            if not message.startswith(f"{upload.filename}:"):
                message = f"{upload.filename}: {message}"
            return {**common_fields(upload.filename, error=message, error_reason=reason,
                                    latency_s=getattr(result, "latency_s", None)),
                    **payload, **_trust(result)}
        payload.update({
            "probability": float(result.probability),
            "threshold": float(result.threshold),
            "abnormal": bool(result.abnormal) if result.abnormal is not None else None,
            "members": {m: float(result.members[m]) for m in MURA_MEMBERS if m in result.members},
            "weights": result.weights, **_trust(result),
        })
        if result.heatmap is not None:
            payload["heatmap"] = rendering.heatmap_views(np.asarray(result.heatmap, np.uint8))
        if part == "wrist" and status.wrist_available:
            payload.update(self._wrist_boxes(upload))
        return {**common_fields(upload.filename, versions=result.versions,
                                latency_s=result.latency_s), **payload}

    def _wrist_boxes(self, upload: DecodedUpload) -> dict[str, Any]:
        """Labelled boxes from `wrist_detect`, in original pixels; errors do not hide the score."""
        try:
            detection = self._wrist_client().detect([upload.image])[0]
        except Exception as exc:  # noqa: BLE001  # why: shown next to the score, not instead
            return {"boxes": [], "boxes_error": humanize(self.url, str(exc))}
        if detection.error:
            return {"boxes": [], "boxes_error": humanize(self.url, detection.error,
                                                         detection.error_reason)}
        return {"boxes": [box_json(b) for b in detection.boxes],
                "wrist_versions": dict(detection.versions)}


def _trust(result: Any) -> dict[str, Any]:
    """The row schema's trust fields (`clients.rows.trust_fields`) of a MuraResult, or nulls."""
    if result is None:
        return dict(trust_fields())
    return dict(trust_fields(result.ood_score, result.in_distribution, result.ood_threshold,
                             result.member_spread))


def box_json(box: Any) -> dict[str, Any]:
    """One `clients.wrist.Detection` as {label, score, x1, y1, x2, y2, colour} (original pixels;
    the colour per structure is the one `msk detect --overlay-dir` PNGs use)."""
    from clients.overlay import CLASS_COLOURS

    r, g, b = CLASS_COLOURS.get(box.class_name, (255, 255, 255))
    return {"label": box.class_name, "score": float(box.score),
            **{k: float(getattr(box, k)) for k in ("x1", "y1", "x2", "y2")},
            "colour": f"#{r:02x}{g:02x}{b:02x}"}


def aggregate(images: list[dict[str, Any]],
              default_threshold: float = MURA_DEFAULT_THRESHOLD) -> dict[str, Any]:
    """Study level, by the one study rule (`clients.study`): mean probability over the scored
    images, called against the body part's operating point (the default one when the images'
    body parts differ: `mixed_body_parts`)."""
    scored = [im for im in images if im.get("probability") is not None]
    call = study_call((ScoredImage(im.get("probability"), im.get("body_part"),
                                   im.get("threshold"), in_distribution=im.get("in_distribution"),
                                   refused=im.get("error_reason") == OOD_REFUSED_REASON)
                       for im in images), default_threshold)
    study: dict[str, Any] = call.to_json()
    if scored:
        study["members"] = member_means(im["members"] for im in scored)
    return study
