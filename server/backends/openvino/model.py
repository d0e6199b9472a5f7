"""A python-based Triton backend named `openvino`: serves `model.onnx` with OpenVINO's CPU plugin.

Why it exists: `msk export --cpu-runtime openvino` writes the MURA backbones' configs for
Triton's OpenVINO backend (`backend: "openvino"`, `default_model_filename: "model.onnx"`), which
NVIDIA's CPU containers ship natively and the nvidia-pytriton wheel does not. This backend serves
those same configs here, as `server/backends/onnxruntime` does for the ORT configs. It reads the
parameters the native backend reads (`INFERENCE_NUM_THREADS`, `PERFORMANCE_HINT`) and keeps
everything else - batching requests, per-request errors, dropping cancelled work - from the
onnxruntime backend, which it loads from its sibling folder (one implementation of the request
path). Measured faster than ORT on the backbones of this CPU: bench/README.md, "OpenVINO".
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable

import numpy as np

_SPEC = importlib.util.spec_from_file_location(
    "msk_onnxruntime_backend",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "onnxruntime",
                 "model.py"))
_BASE = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_BASE)


class OpenVinoSession:
    """OpenVINO compiled models with ORT's `run(output_names, feeds)`, one per input shape.

    Why one per shape: OpenVINO's CPU plugin runs a graph compiled for a static shape ~1.35x
    faster than the same graph with a dynamic batch axis (measured on the INT8 DenseNet-169 at
    batch 8, 1 and 2 threads). The batch sizes a dynamically batched model sees are few (1 to
    its max batch size) and all are compiled at load time by `warm`: compiling one on first use
    stalled the first requests of that size for seconds (measured: 0.68 instead of 2.5 images/s
    over a 24-image run at 8 in flight). Any other shape is compiled on first use."""

    def __init__(self, path: str, params: dict[str, str]) -> None:
        import openvino as ov

        self.properties = {"PERFORMANCE_HINT": params.get("PERFORMANCE_HINT", "LATENCY")}
        threads = int(params.get("INFERENCE_NUM_THREADS", "0") or 0)
        if threads:
            self.properties["INFERENCE_NUM_THREADS"] = threads
        self.core = ov.Core()
        self.model = self.core.read_model(path)
        self.compiled: dict[tuple, tuple] = {}

    def _request(self, shapes: dict[str, tuple[int, ...]]):
        key = tuple(sorted(shapes.items()))
        if key not in self.compiled:
            model = self.model.clone()
            model.reshape({name: list(shape) for name, shape in shapes.items()})
            compiled = self.core.compile_model(model, "CPU", self.properties)
            self.compiled[key] = (compiled, compiled.create_infer_request())
        return self.compiled[key]

    def warm(self, inputs: list[dict], batches: Iterable[int]) -> None:
        """Compile for these batch sizes now (inputs: the config's, with fixed dims)."""
        for batch in batches:
            self._request({t["name"]: (batch, *map(int, t["dims"])) for t in inputs})

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        compiled, request = self._request({n: a.shape for n, a in feeds.items()})
        results = request.infer(feeds)
        return [np.array(results[compiled.output(name)]) for name in output_names]


class TritonPythonModel(_BASE.TritonPythonModel):
    def _open(self, path: str, params: dict[str, str]) -> OpenVinoSession:
        session = OpenVinoSession(path, params)
        if self.batching:
            session.warm(self.config["input"], range(1, int(self.config["max_batch_size"]) + 1))
        return session
