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

from clients.telemetry import observe_request
from clients.tls import GrpcTls, client_kwargs
from msk import RESEARCH_USE_NOTICE
from msk.constants import DEFAULT_GRPC_URL, MURA_DEFAULT_THRESHOLD, MURA_ENSEMBLE_MODEL
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

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict:
        """The JSON-lines record (`msk score`): everything but the heatmap pixels."""
        if self.error is not None:
            return {"input": self.source, "error": self.error}
        return {
            "input": self.source, "probability": round(self.probability, 6),
            "abnormal": self.abnormal, "threshold": self.threshold, "body_part": self.body_part,
            "members": {k: round(v, 6) for k, v in self.members.items()},
            "versions": self.versions, "weights": self.weights,
            "latency_ms": round(1000 * (self.latency_s or 0.0), 2),
            "notice": RESEARCH_USE_NOTICE,
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


def discover_contract(client: grpcclient.InferenceServerClient, model: str) -> EnsembleContract:
    meta = client.get_model_metadata(model, as_json=True)
    config = client.get_model_config(model, as_json=True)["config"]
    (image_input,) = meta["inputs"]
    roles: dict[str, str] = {}
    for out in meta["outputs"]:
        shape = [int(d) for d in out["shape"]]
        if out["datatype"] == "FP32" and shape == [1]:
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
    )


class MuraClient:
    """Thin gRPC client for `mura_ensemble`; `score` never raises for a bad image."""

    pipeline = MURA_ENSEMBLE_MODEL

    def __init__(self, url: str = DEFAULT_GRPC_URL, model: str = MURA_ENSEMBLE_MODEL,
                 timeout_s: float = 120.0, concurrency: int = 4,
                 tls: GrpcTls | None = None) -> None:
        self.url = url
        self.model = model
        self.timeout_s = timeout_s
        self.concurrency = max(1, concurrency)
        self.client = grpcclient.InferenceServerClient(url, **client_kwargs(tls))
        self._contract: EnsembleContract | None = None

    @property
    def contract(self) -> EnsembleContract:
        if self._contract is None:
            self._contract = discover_contract(self.client, self.model)
        return self._contract

    def close(self) -> None:
        self.client.close()

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
        try:
            pixels = load_grayscale(image, name=label)
            contract = self.contract
        except RadiographError as exc:
            observe_request(self.pipeline, "invalid_input", 0.0, 0)
            finish(index, MuraResult(source=label, body_part=body_part, error=str(exc)))
            return
        except InferenceServerException as exc:
            finish(index, MuraResult(source=label, body_part=body_part,
                                     error=f"server: {exc.message()}"))
            return
        except Exception as exc:  # noqa: BLE001 - one unreadable input never ends the batch
            observe_request(self.pipeline, "invalid_input", 0.0, 0)
            finish(index, MuraResult(source=label, body_part=body_part,
                                     error=f"{label}: cannot read ({type(exc).__name__}: {exc})"))
            return
        infer_input = grpcclient.InferInput(contract.input_name, list(pixels.shape), "UINT8")
        infer_input.set_data_from_numpy(pixels)
        wanted = [contract.probability, contract.member_probabilities]
        wanted += [n for n in (contract.provenance,) if n]
        if heatmaps and contract.heatmap:
            wanted.append(contract.heatmap)
        outputs = [grpcclient.InferRequestedOutput(n) for n in wanted]

        def callback(result, error) -> None:
            elapsed = time.perf_counter() - start
            if error is not None:
                observe_request(self.pipeline, "server_error", elapsed, pixels.nbytes)
                finish(index, MuraResult(source=label, body_part=body_part, latency_s=elapsed,
                                         error=f"server: {error.message()}"))
                return
            try:
                parsed = self.parse_result(result, label, body_part, contract)
            except Exception as exc:  # noqa: BLE001 - a malformed response is this image's error
                finish(index, MuraResult(source=label, body_part=body_part,
                                         error=f"bad response: {exc}"))
                return
            parsed.latency_s = elapsed
            observe_request(self.pipeline, "ok", elapsed, pixels.nbytes)
            finish(index, parsed)

        try:
            self.client.async_infer(self.model, [infer_input], callback, outputs=outputs,
                                    client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            observe_request(self.pipeline, "unavailable", time.perf_counter() - start,
                            pixels.nbytes)
            finish(index, MuraResult(source=label, body_part=body_part,
                                     error=f"server: {exc.message()}"))

    @staticmethod
    def parse_result(result, label: str, body_part: str | None,
                     contract: EnsembleContract) -> MuraResult:
        """Turn one ensemble response into a MuraResult (shared with the batch scorer)."""
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
        return MuraResult(
            source=label, probability=probability, members=members,
            versions={"pipeline": provenance.get("version", "?"),
                      **{m: info.get("version", "?") for m, info in member_info.items()}},
            artifacts={m: info.get("sha256", "") for m, info in member_info.items()},
            threshold=threshold, abnormal=probability >= threshold, body_part=body_part,
            weights=provenance.get("weights"), heatmap=heatmap,
        )


def _label(image: ImageInput, index: int) -> str:
    if isinstance(image, str | Path):
        return str(image)
    return f"image[{index}]"
