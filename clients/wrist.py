"""Client for the `wrist_detect` Triton ensemble: raw wrist radiograph in, structure boxes out.

The server does all the preprocessing (crop, letterbox, CLAHE) and maps the boxes back, so the
client only sends the grayscale image as UINT8 at its original size. Files and arrays are read by
the one radiograph reader (`msk.imaging`, the same as training and every other client), which
windows wider-than-8-bit images to uint8 and applies the shared limits. No torch; one bad image
yields a result with `error` set and the rest of the batch continues.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clients.errors import Reason, error_text, is_retryable, request_reason
from clients.failover import EndpointPool, url_list
from clients.rows import common_fields
from clients.tls import GrpcTls, client_kwargs
from msk.constants import (
    BOXES_TENSOR,
    CLASSES_TENSOR,
    DEFAULT_GRPC_URL,
    IMAGE_TENSOR,
    SCORES_TENSOR,
    WRIST_DETECT_MODEL,
    WRIST_PROVENANCE_TENSOR,
)
from msk.imaging import RadiographError, load_grayscale

ImageSource = np.ndarray | str | Path | bytes


@dataclass(frozen=True)
class Detection:
    class_name: str
    score: float
    x1: float
    y1: float
    x2: float
    y2: float

    def to_json(self) -> dict:
        return {"class": self.class_name, "score": round(float(self.score), 4),
                **{k: round(float(getattr(self, k)), 2) for k in ("x1", "y1", "x2", "y2")}}


@dataclass
class WristResult:
    source: str | None = None
    detections: list[Detection] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    width: int | None = None
    height: int | None = None
    error: str | None = None
    latency_s: float | None = None
    error_reason: str | None = None
    """A `clients.errors.Reason` or `msk.imaging` reason code when `error` is set."""

    @property
    def boxes(self) -> list[Detection]:
        """Alias of `detections` (the web app reads `.boxes`)."""
        return self.detections

    @property
    def artifacts(self) -> dict[str, str]:
        """Model name -> SHA-256 of the served artifact (from the ensemble's provenance)."""
        found = {m: str(i.get("sha256", "")) for m, i in
                 self.provenance.get("detectors", {}).items()}
        if "preprocess" in self.provenance:
            found["wrist_preprocess"] = str(self.provenance["preprocess"].get("sha256", ""))
        return found

    def to_json(self) -> dict:
        """One `msk detect` row: the shared row fields (`clients.rows`), then the boxes."""
        return {**common_fields(self.source or "image", error=self.error,
                                error_reason=self.error_reason, versions=self.versions,
                                latency_s=self.latency_s),
                "width": self.width, "height": self.height,
                "boxes": [d.to_json() for d in self.detections]}


def parse_outputs(boxes: np.ndarray, classes: np.ndarray, scores: np.ndarray,
                  provenance: np.ndarray | None) -> tuple[list[Detection], dict, dict]:
    dets = []
    for b, c, s in zip(boxes.reshape(-1, 4), classes.reshape(-1), scores.reshape(-1),
                       strict=True):
        name = c.decode() if isinstance(c, bytes) else str(c)
        dets.append(Detection(name, float(s), *(float(v) for v in b)))
    prov: dict = {}
    if provenance is not None and provenance.size:
        raw = provenance.reshape(-1)[0]
        prov = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    versions = {m: str(info.get("version")) for m, info in prov.get("detectors", {}).items()}
    for part in ("preprocess", "postprocess"):
        if part in prov:
            versions[f"wrist_{part}"] = str(prov[part].get("version"))
    return dets, versions, prov


class WristClient:
    """`WristClient(url).detect(images) -> list[WristResult]` (same order, never raises for a bad
    image). `url` is one gRPC "host:port" or several: requests go round-robin over them and a
    request refused for a reason that says nothing about the image is sent once to each other
    endpoint (`clients.failover.EndpointPool`, as `msk score`)."""

    def __init__(self, url: str | Sequence[str] = DEFAULT_GRPC_URL, *,
                 model: str = WRIST_DETECT_MODEL, timeout_s: float = 120.0,
                 tls: GrpcTls | None = None) -> None:
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self.urls = url_list(url)
        self.url = ", ".join(self.urls)
        self.model = model
        self.timeout_s = timeout_s
        self.pool = EndpointPool(self.urls)
        for endpoint in self.pool.endpoints:
            endpoint.client = grpcclient.InferenceServerClient(url=endpoint.url,
                                                               **client_kwargs(tls))

    def close(self) -> None:
        for endpoint in self.pool.endpoints:
            endpoint.client.close()

    def __enter__(self) -> WristClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def infer_array(self, img: np.ndarray) -> tuple[list[Detection], dict, dict]:
        """One uint8 HxW image through the ensemble, failing over between the endpoints;
        raises the last InferenceServerException when none could answer."""
        from tritonclient.utils import InferenceServerException

        g = self._grpc
        inp = g.InferInput(IMAGE_TENSOR, list(img.shape), "UINT8")
        inp.set_data_from_numpy(img)
        outs = [g.InferRequestedOutput(n) for n in (BOXES_TENSOR, CLASSES_TENSOR, SCORES_TENSOR,
                                                    WRIST_PROVENANCE_TENSOR)]
        for attempt in range(len(self.pool.endpoints)):
            endpoint = self.pool.pick()
            try:
                res = endpoint.client.infer(self.model, [inp], outputs=outs,
                                            client_timeout=self.timeout_s)
            except InferenceServerException as exc:
                if not is_retryable(request_reason(exc)):
                    raise
                self.pool.failure(endpoint)
                if attempt == len(self.pool.endpoints) - 1:
                    raise
                continue
            self.pool.success(endpoint)
            return parse_outputs(res.as_numpy(BOXES_TENSOR), res.as_numpy(CLASSES_TENSOR),
                                 res.as_numpy(SCORES_TENSOR),
                                 res.as_numpy(WRIST_PROVENANCE_TENSOR))
        raise AssertionError("unreachable: the pool has at least one endpoint")

    def detect(self, images: Sequence[ImageSource]) -> list[WristResult]:
        from tritonclient.utils import InferenceServerException

        results = []
        for item in images:
            source = str(item) if isinstance(item, str | Path) else None
            start = time.perf_counter()
            result = WristResult(source=source)
            try:
                img = load_grayscale(item)
                result.height, result.width = img.shape
                result.detections, result.versions, result.provenance = self.infer_array(img)
            except RadiographError as exc:
                result.error, result.error_reason = str(exc), exc.reason
            except InferenceServerException as exc:  # report, continue the batch
                result.error = f"{source or 'image'}: inference failed: {error_text(exc)}"
                result.error_reason = request_reason(exc)
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                result.error = f"{source or 'image'}: bad response: {exc}"
                result.error_reason = Reason.BAD_RESPONSE
            result.latency_s = time.perf_counter() - start
            results.append(result)
        return results
