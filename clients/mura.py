"""Score radiographs with the MURA ensemble on Triton over gRPC (no torch, no model code).

    from clients.mura import MuraClient
    results = MuraClient("127.0.0.1:8001").score(["elbow.png", "wrist.png"])
    print(results[0].probability, results[0].abnormal, results[0].members)

The client learns everything model-specific from the server: the input tensor name from the
ensemble's metadata, each output's role from its datatype and shape, the member order from the
ensemble's `members` parameter, and versions, artifact SHA-256s and operating points from the
`PROVENANCE` output that arrives in the same response as the probabilities.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from clients.errors import RequestFailed
from clients.rows import common_fields, trust_fields
from clients.telemetry import observe_request
from clients.tls import GrpcTls, client_kwargs
from clients.transport import NO_WAITING, BlockingLoop, Inputs, RetryPolicy, Run, Transport
from msk.constants import (
    DEFAULT_GRPC_URL,
    DRIFT_BODY_PART_PARAMETER,
    MEMBER_SPREAD_TENSOR,
    MURA_DEFAULT_THRESHOLD,
    MURA_ENSEMBLE_MODEL,
    OOD_POLICIES,
    OOD_REFUSED_REASON,
    OOD_SCORE_TENSOR,
)
from msk.imaging import RadiographError, load_grayscale

ImageInput = str | Path | bytes | np.ndarray


@dataclass
class MuraResult:
    """One image's result, or its error (then every score field is None)."""

    source: str
    probability: float | None = None
    members: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)      # model -> sha256
    threshold: float | None = None
    abnormal: bool | None = None
    body_part: str | None = None
    weights: str | None = None
    heatmap: np.ndarray | None = None
    latency_s: float | None = None
    error: str | None = None
    error_reason: str | None = None
    """A `clients.errors.Reason` or `msk.imaging` reason code when `error` is set."""
    default_threshold: float = MURA_DEFAULT_THRESHOLD
    """The model's default operating point (provenance), for studies of mixed body parts."""
    ood_score: float | None = None
    """Distance of the image's features to the reference set (`export.ood_stats`); ~1 typical."""
    ood_threshold: float | None = None
    """The body part's in-distribution threshold from the provenance (stated percentile)."""
    in_distribution: bool | None = None
    member_spread: float | None = None
    """max - min of the member probabilities."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def refused(self) -> bool:
        """Refused by the OOD gate (`--ood refuse`): scored by the server, no call given."""
        return self.error_reason == OOD_REFUSED_REASON

    def to_json(self) -> dict:
        """The JSON-lines record (`msk score`): the shared row fields (`clients.rows`), then
        the scores; everything but the heatmap pixels."""
        scored = self.error is None and self.probability is not None
        return {
            **common_fields(self.source, error=self.error, error_reason=self.error_reason,
                            versions=self.versions, latency_s=self.latency_s),
            "probability": round(self.probability, 6) if scored else None,
            "abnormal": self.abnormal, "threshold": self.threshold,
            "default_threshold": self.default_threshold if scored else None,
            "body_part": self.body_part,
            "members": {k: round(v, 6) for k, v in self.members.items()} if scored else None,
            "weights": self.weights,
            **trust_fields(self.ood_score, self.in_distribution, self.ood_threshold,
                           self.member_spread),
        }


@dataclass(frozen=True)
class EnsembleContract:
    """What the server says the ensemble looks like (discovered once per client)."""

    input_name: str
    probability: str
    member_probabilities: str
    heatmap: str | None
    provenance: str | None
    members: tuple[str, ...]
    ood_score: str | None = None
    member_spread: str | None = None

    def wanted(self, heatmap: bool) -> list[str]:
        """The outputs a scoring request asks for."""
        names = [self.probability, self.member_probabilities, self.provenance, self.ood_score,
                 self.member_spread, self.heatmap if heatmap else None]
        return [n for n in names if n]


def discover_contract(client: grpcclient.InferenceServerClient, model: str) -> EnsembleContract:
    """The contract from a synchronous client (`discover_contract_async` for the asyncio one)."""
    return contract_from(client.get_model_metadata(model, as_json=True),
                         client.get_model_config(model, as_json=True)["config"], model)


async def discover_contract_async(client: Any, model: str) -> EnsembleContract:
    """The contract from a `tritonclient.grpc.aio` client (what `clients.transport` holds)."""
    meta = await client.get_model_metadata(model, as_json=True)
    config = await client.get_model_config(model, as_json=True)
    return contract_from(meta, config["config"], model)


def contract_from(meta: dict, config: dict, model: str) -> EnsembleContract:
    """Read the ensemble's roles from its metadata and config (as JSON)."""
    (image_input,) = meta["inputs"]
    roles: dict[str, str] = {}
    for out in meta["outputs"]:
        shape = [int(d) for d in out["shape"]]
        if out["name"] in (OOD_SCORE_TENSOR, MEMBER_SPREAD_TENSOR):
            roles[out["name"]] = out["name"]     # scalars like the probability: known by name
        elif out["datatype"] == "FP32" and shape == [1]:
            roles["probability"] = out["name"]
        elif out["datatype"] == "FP32" and len(shape) == 1:
            roles["member_probabilities"] = out["name"]
        elif out["datatype"] == "UINT8" and len(shape) == 2:
            roles["heatmap"] = out["name"]
        elif out["datatype"] == "BYTES":
            roles["provenance"] = out["name"]
    members = config.get("parameters", {}).get("members", {}).get("string_value", "")
    if "probability" not in roles or "member_probabilities" not in roles:
        raise RuntimeError(f"model {model!r} does not look like the MURA ensemble "
                           f"(outputs: {[o['name'] for o in meta['outputs']]})")
    return EnsembleContract(
        input_name=image_input["name"], probability=roles["probability"],
        member_probabilities=roles["member_probabilities"], heatmap=roles.get("heatmap"),
        provenance=roles.get("provenance"),
        members=tuple(m for m in members.split(",") if m),
        ood_score=roles.get(OOD_SCORE_TENSOR), member_spread=roles.get(MEMBER_SPREAD_TENSOR),
    )


class MuraClient:
    """Thin gRPC client for `mura_ensemble`; `score` never raises for a bad image.

    A codec over the one transport (`clients.transport`): images in, `MuraResult`s out. `url`
    is one Triton address or several: requests go round-robin over the endpoints and a request
    that fails for a reason that says nothing about the image is sent to another endpoint;
    `retry` is the outage budget of each `score` call (default: each endpoint once, no
    waiting; `RetryPolicy(give_up_after_s=60)` waits out a restart). `ood_policy`
    (`OOD_POLICIES`): "flag" scores every image and says `in_distribution`; "refuse" turns an
    out-of-distribution image into an error (`OOD_REFUSED_REASON`) without probability or call.
    """

    pipeline = MURA_ENSEMBLE_MODEL

    def __init__(self, url: str | Sequence[str] = DEFAULT_GRPC_URL,
                 model: str = MURA_ENSEMBLE_MODEL, timeout_s: float = 120.0,
                 concurrency: int = 4, tls: GrpcTls | None = None,
                 ood_policy: str = "flag", retry: RetryPolicy | None = None) -> None:
        if ood_policy not in OOD_POLICIES:
            raise ValueError(f"ood_policy must be one of {OOD_POLICIES}, got {ood_policy!r}")
        self.ood_policy = ood_policy
        self.transport = Transport(url, pipeline=self.pipeline, tls=tls, timeout_s=timeout_s,
                                   retry=retry or NO_WAITING)
        self.urls = self.transport.urls
        self.url = ", ".join(self.urls)
        self.model = model
        self.timeout_s = timeout_s
        self.concurrency = max(1, concurrency)
        self.pool = self.transport.pool
        self._tls = tls
        self._loop = BlockingLoop()
        self._client: grpcclient.InferenceServerClient | None = None
        self._contract: EnsembleContract | None = None

    @property
    def client(self) -> grpcclient.InferenceServerClient:
        """A synchronous client of the first endpoint, for callers that ask one server
        directly (health, metadata); scoring goes through the transport."""
        if self._client is None:
            self._client = grpcclient.InferenceServerClient(self.urls[0],
                                                            **client_kwargs(self._tls))
        return self._client

    @property
    def contract(self) -> EnsembleContract:
        """The ensemble's contract, read from the first endpoint that answers; raises
        `RequestFailed` when none does."""
        return self._loop.run(self._contract_for(self.transport.new_run()))

    async def _contract_for(self, run: Run) -> EnsembleContract:
        if self._contract is None:
            await self.transport.connect()
            reply = await self.transport.call(
                run, lambda endpoint: discover_contract_async(endpoint.client, self.model))
            self._contract = reply.value
        return self._contract

    def close(self) -> None:
        if self._loop.started:
            self._loop.run(self.transport.aclose())
        self._loop.close()
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> MuraClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------
    def score(self, images: Sequence[ImageInput], body_parts: Sequence[str | None] | None = None,
              heatmaps: bool = True, names: Sequence[str] | None = None) -> list[MuraResult]:
        """Score every image (paths, bytes or uint8 arrays); results in input order."""
        parts = list(body_parts) if body_parts is not None else [None] * len(images)
        labels = list(names) if names is not None else [_label(img, i) for i, img in
                                                         enumerate(images)]
        if not images:
            return []
        return self._loop.run(self._score(list(images), labels, parts, heatmaps))

    def score_one(self, image: ImageInput, body_part: str | None = None,
                  heatmap: bool = True, name: str | None = None) -> MuraResult:
        return self.score([image], [body_part], heatmap, [name] if name else None)[0]

    async def _score(self, images: list[ImageInput], labels: list[str],
                     parts: list[str | None], heatmaps: bool) -> list[MuraResult]:
        run = self.transport.new_run()
        slots = asyncio.Semaphore(self.concurrency)

        async def one(index: int) -> MuraResult:
            async with slots:
                return await self._score_one(run, images[index], labels[index], parts[index],
                                             heatmaps)

        return list(await asyncio.gather(*(one(i) for i in range(len(images)))))

    async def _score_one(self, run: Run, image: ImageInput, label: str,
                         body_part: str | None, heatmaps: bool) -> MuraResult:
        try:
            pixels = await asyncio.to_thread(load_grayscale, image, name=label)
        except RadiographError as exc:
            observe_request(self.pipeline, "invalid_input", 0.0, 0)
            return MuraResult(source=label, body_part=body_part, error=str(exc),
                              error_reason=exc.reason)
        try:
            contract = await self._contract_for(run)
            reply = await self.transport.infer(
                run, self.model, Inputs(contract.input_name, pixels), contract.wanted(heatmaps),
                lambda response: self.parse_result(response, label, body_part, contract,
                                                   self.ood_policy),
                request_parameters(body_part))
        except RequestFailed as exc:
            return MuraResult(source=label, body_part=body_part, latency_s=exc.latency_s,
                              error=f"{label}: server: {exc}", error_reason=exc.reason)
        reply.value.latency_s = reply.latency_s
        return reply.value

    @staticmethod
    def parse_result(result, label: str, body_part: str | None,
                     contract: EnsembleContract, ood_policy: str = "flag") -> MuraResult:
        """Turn one ensemble response into a MuraResult (shared with the batch scorer), with
        the OOD policy applied (`apply_ood_policy`)."""
        probability = float(result.as_numpy(contract.probability).reshape(-1)[0])
        member_values = result.as_numpy(contract.member_probabilities).reshape(-1)
        members = dict(zip(contract.members, (float(v) for v in member_values), strict=True))
        provenance: dict = {}
        if contract.provenance:
            raw = result.as_numpy(contract.provenance).reshape(-1)[0]
            provenance = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        points = provenance.get("operating_points", {})
        threshold = float(points.get(body_part or "",
                                     provenance.get("default_threshold", MURA_DEFAULT_THRESHOLD)))
        member_info = provenance.get("members", {})
        heatmap = result.as_numpy(contract.heatmap) if contract.heatmap else None
        ood = provenance.get("ood") or {}
        ood_score = (float(result.as_numpy(contract.ood_score).reshape(-1)[0])
                     if contract.ood_score else None)
        ood_threshold = ood.get("thresholds", {}).get(body_part or "",
                                                      ood.get("default_threshold"))
        spread = (float(result.as_numpy(contract.member_spread).reshape(-1)[0])
                  if contract.member_spread else None)
        return apply_ood_policy(MuraResult(
            source=label, probability=probability, members=members,
            versions={"pipeline": provenance.get("version", "?"),
                      **{m: info.get("version", "?") for m, info in member_info.items()}},
            artifacts={m: info.get("sha256", "") for m, info in member_info.items()},
            threshold=threshold, abnormal=probability >= threshold, body_part=body_part,
            weights=provenance.get("weights"), heatmap=heatmap,
            default_threshold=float(provenance.get("default_threshold",
                                                   MURA_DEFAULT_THRESHOLD)),
            ood_score=ood_score,
            ood_threshold=None if ood_threshold is None else float(ood_threshold),
            in_distribution=(None if ood_score is None or ood_threshold is None
                             else ood_score <= float(ood_threshold)),
            member_spread=spread,
        ), ood_policy)


def apply_ood_policy(result: MuraResult, policy: str) -> MuraResult:
    """"refuse": an out-of-distribution result loses its probability, members and call and
    becomes an `OOD_REFUSED_REASON` error (the OOD fields stay, to say why). "flag": unchanged.
    The one place the policy is applied (score, web, gateway)."""
    if policy != "refuse" or result.in_distribution is not False:
        return result
    result.error = (f"{result.source}: not assessed: the image is out of distribution for "
                    f"this model (OOD score {result.ood_score:.3g} > threshold "
                    f"{result.ood_threshold:.3g})")
    result.error_reason = OOD_REFUSED_REASON
    result.probability, result.abnormal, result.threshold = None, None, None
    result.members, result.heatmap = {}, None
    return result


def request_parameters(body_part: str | None) -> dict[str, str]:
    """What a MURA request tells the server besides the image: its body part, which labels the
    drift metrics of the ensemble's `mura_drift` step (docs/ood.md); nothing when unknown."""
    return {DRIFT_BODY_PART_PARAMETER: body_part} if body_part else {}


def _label(image: ImageInput, index: int) -> str:
    if isinstance(image, str | Path):
        return str(image)
    return f"image[{index}]"
