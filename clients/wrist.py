"""Client for the `wrist_detect` Triton ensemble: raw wrist radiograph in, structure boxes out.

The server does all the preprocessing (crop, letterbox, CLAHE) and maps the boxes back, so the
client only sends the grayscale image as UINT8 at its original size. Files and arrays are read by
the one radiograph reader (`msk.imaging`, the same as training and every other client), which
windows wider-than-8-bit images to uint8 and applies the shared limits. No torch; one bad image
yields a result with `error` set and the rest of the batch continues.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clients.errors import RequestFailed
from clients.rows import common_fields
from clients.tls import GrpcTls
from clients.transport import NO_WAITING, BlockingLoop, Inputs, RetryPolicy, Run, Transport
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
        for part in ("preprocess", "postprocess"):
            if part in self.provenance:
                found[f"wrist_{part}"] = str(self.provenance[part].get("sha256", ""))
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


WRIST_OUTPUTS: tuple[str, ...] = (BOXES_TENSOR, CLASSES_TENSOR, SCORES_TENSOR,
                                  WRIST_PROVENANCE_TENSOR)
"""What a `wrist_detect` request asks for, in `parse_outputs`' argument order (listed once)."""


class WristClient:
    """`WristClient(url).detect(images) -> list[WristResult]` (same order, never raises for a bad
    image). A codec over the one transport (`clients.transport`, as `msk score`): `url` is one
    gRPC "host:port" or several, requests go round-robin over them and one refused for a
    reason that says nothing about the image goes to another endpoint; `retry` is the outage
    budget of each `detect` call (default: each endpoint once, no waiting)."""

    pipeline = WRIST_DETECT_MODEL

    def __init__(self, url: str | Sequence[str] = DEFAULT_GRPC_URL, *,
                 model: str = WRIST_DETECT_MODEL, timeout_s: float = 120.0,
                 tls: GrpcTls | None = None, retry: RetryPolicy | None = None) -> None:
        self.transport = Transport(url, pipeline=self.pipeline, tls=tls, timeout_s=timeout_s,
                                   retry=retry or NO_WAITING)
        self.urls = self.transport.urls
        self.url = ", ".join(self.urls)
        self.model = model
        self.timeout_s = timeout_s
        self.pool = self.transport.pool
        self._loop = BlockingLoop()

    def close(self) -> None:
        if self._loop.started:
            self._loop.run(self.transport.aclose())
        self._loop.close()

    def __enter__(self) -> WristClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def infer_array(self, img: np.ndarray) -> tuple[list[Detection], dict, dict]:
        """One uint8 HxW image through the ensemble, failing over between the endpoints;
        raises `clients.errors.RequestFailed` when none could answer."""
        return self._loop.run(self._infer(self.transport.new_run(), img))

    async def _infer(self, run: Run, img: np.ndarray) -> tuple[list[Detection], dict, dict]:
        await self.transport.connect()
        reply = await self.transport.infer(
            run, self.model, Inputs(IMAGE_TENSOR, img), WRIST_OUTPUTS,
            lambda response: parse_outputs(*(response.as_numpy(n) for n in WRIST_OUTPUTS)))
        return reply.value

    def detect(self, images: Sequence[ImageSource]) -> list[WristResult]:
        """Every image, one after another (the detectors are heavy), under one outage budget."""
        return self._loop.run(self._detect(list(images)))

    async def _detect(self, images: list[ImageSource]) -> list[WristResult]:
        run = self.transport.new_run()
        results = []
        for item in images:
            source = str(item) if isinstance(item, str | Path) else None
            start = time.perf_counter()
            result = WristResult(source=source)
            try:
                img = await asyncio.to_thread(load_grayscale, item)
                result.height, result.width = img.shape
                result.detections, result.versions, result.provenance = await self._infer(
                    run, img)
            except RadiographError as exc:
                result.error, result.error_reason = str(exc), exc.reason
            except RequestFailed as exc:  # report, continue the batch
                result.error = f"{source or 'image'}: inference failed: {exc}"
                result.error_reason = exc.reason
            result.latency_s = time.perf_counter() - start
            results.append(result)
        return results
