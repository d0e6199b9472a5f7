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

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clients.errors import Reason, error_text, is_retryable, request_reason
from clients.failover import Endpoint, EndpointPool, url_list
from clients.rows import common_fields, trust_fields
from clients.telemetry import observe_request
from clients.tls import GrpcTls, client_kwargs
from msk.constants import (
    DEFAULT_GRPC_URL,
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
    meta = client.get_model_metadata(model, as_json=True)
    config = client.get_model_config(model, as_json=True)["config"]
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

    `url` is one Triton address or several: requests go round-robin over the endpoints
    (`clients.failover.EndpointPool`), and a request that fails for a reason that says nothing
    about the image (`clients.errors.is_retryable`) is sent once to each other endpoint before
    it becomes that image's error. `ood_policy` (`OOD_POLICIES`): "flag" scores every image
    and says `in_distribution`; "refuse" turns an out-of-distribution image into an error
    (`OOD_REFUSED_REASON`) without probability or call.
    """

    pipeline = MURA_ENSEMBLE_MODEL

    def __init__(self, url: str | Sequence[str] = DEFAULT_GRPC_URL,
                 model: str = MURA_ENSEMBLE_MODEL, timeout_s: float = 120.0,
                 concurrency: int = 4, tls: GrpcTls | None = None,
                 ood_policy: str = "flag") -> None:
        if ood_policy not in OOD_POLICIES:
            raise ValueError(f"ood_policy must be one of {OOD_POLICIES}, got {ood_policy!r}")
        self.ood_policy = ood_policy
        self.urls = url_list(url)
        self.url = ", ".join(self.urls)
        self.model = model
        self.timeout_s = timeout_s
        self.concurrency = max(1, concurrency)
        self.pool = EndpointPool(self.urls)
        for endpoint in self.pool.endpoints:
            endpoint.client = grpcclient.InferenceServerClient(endpoint.url, **client_kwargs(tls))
        self.client = self.pool.endpoints[0].client
        """The first endpoint's client (kept for callers that ask one server directly)."""
        self._contract: EnsembleContract | None = None
        self._lock = threading.Lock()

    @property
    def contract(self) -> EnsembleContract:
        """The ensemble's contract, read from the first endpoint that answers."""
        if self._contract is None:
            last: InferenceServerException | None = None
            for _ in self.pool.endpoints:
                endpoint = self._pick()
                try:
                    self._contract = discover_contract(endpoint.client, self.model)
                    break
                except InferenceServerException as exc:
                    self.pool.failure(endpoint)
                    last = exc
            else:
                assert last is not None
                raise last
        return self._contract

    def _pick(self) -> Endpoint:
        with self._lock:
            return self.pool.pick()

    def close(self) -> None:
        for endpoint in self.pool.endpoints:
            endpoint.client.close()

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
        results: list[MuraResult | None] = [None] * len(images)
        slots = threading.Semaphore(self.concurrency)
        done = threading.Event()
        remaining = [len(images)]
        lock = threading.Lock()

        def finish(index: int, result: MuraResult) -> None:
            results[index] = result
            slots.release()
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.set()

        if not images:
            return []
        for index, image in enumerate(images):
            slots.acquire()
            self._submit(index, image, labels[index], parts[index], heatmaps, finish)
        done.wait()
        return [r for r in results if r is not None]

    def score_one(self, image: ImageInput, body_part: str | None = None,
                  heatmap: bool = True, name: str | None = None) -> MuraResult:
        return self.score([image], [body_part], heatmap, [name] if name else None)[0]

    def _submit(self, index, image, label, body_part, heatmaps, finish) -> None:
        start = time.perf_counter()

        def failed(reason: str, error: str, elapsed: float | None = None) -> MuraResult:
            return MuraResult(source=label, body_part=body_part, latency_s=elapsed,
                              error=error, error_reason=reason)

        try:
            pixels = load_grayscale(image, name=label)
        except RadiographError as exc:
            observe_request(self.pipeline, "invalid_input", 0.0, 0)
            finish(index, failed(exc.reason, str(exc)))
            return
        try:
            contract = self.contract
        except InferenceServerException as exc:
            finish(index, failed(request_reason(exc), f"{label}: server: {error_text(exc)}"))
            return
        infer_input = grpcclient.InferInput(contract.input_name, list(pixels.shape), "UINT8")
        infer_input.set_data_from_numpy(pixels)
        outputs = [grpcclient.InferRequestedOutput(n) for n in contract.wanted(heatmaps)]
        tries = [0]

        def send() -> None:
            endpoint = self._pick()
            tries[0] += 1

            def callback(result, error) -> None:
                elapsed = time.perf_counter() - start
                if error is not None:
                    retry(endpoint, error, elapsed)
                    return
                with self._lock:
                    self.pool.success(endpoint)
                try:
                    parsed = self.parse_result(result, label, body_part, contract,
                                               self.ood_policy)
                except (KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
                    observe_request(self.pipeline, "bad_response", elapsed, pixels.nbytes)
                    finish(index, failed(Reason.BAD_RESPONSE, f"{label}: bad response: {exc}",
                                         elapsed))
                    return
                parsed.latency_s = elapsed
                observe_request(self.pipeline, "ok", elapsed, pixels.nbytes)
                finish(index, parsed)

            try:
                endpoint.client.async_infer(self.model, [infer_input], callback,
                                            outputs=outputs, client_timeout=self.timeout_s)
            except InferenceServerException as exc:
                retry(endpoint, exc, time.perf_counter() - start)

        def retry(endpoint: Endpoint, exc: InferenceServerException, elapsed: float) -> None:
            reason = request_reason(exc)
            if is_retryable(reason):
                with self._lock:
                    self.pool.failure(endpoint)
                if tries[0] < len(self.pool.endpoints):  # each other endpoint once
                    observe_request(self.pipeline, "unavailable", elapsed, pixels.nbytes)
                    send()
                    return
            observe_request(self.pipeline, "server_error", elapsed, pixels.nbytes)
            finish(index, failed(reason, f"{label}: server: {error_text(exc)}", elapsed))

        send()

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


def _label(image: ImageInput, index: int) -> str:
    if isinstance(image, str | Path):
        return str(image)
    return f"image[{index}]"
