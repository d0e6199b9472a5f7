"""OpenVINO compiled models behind ORT's `run(output_names, feeds)`, at an explicit precision.

Kept apart from `model.py` (which needs Triton's `triton_python_backend_utils`) so that tests and
benchmarks can open a model exactly as the backend does and read back what the runtime chose.

Why the precision is explicit and checked: OpenVINO's CPU plugin picks its own inference
precision for floating-point ops when none is given. On hosts with AMX (and AVX-512 BF16) its
default `INFERENCE_PRECISION_HINT` is bfloat16 (OpenVINO docs, "Precision Control"; measured on
an AMX host with OpenVINO 2026.4: the demo DenseNet-169 then differs from ORT by 3e-4 in the
probability and 8e-3 in the CAM, and by 0.0 with the hint `f32`). So a model that the manifest
calls FP32 or INT8 would serve BF16 on such a host. Every compiled model is therefore given the
precision named in the config, and its effective precision is read back from the compiled model:
a runtime that would run anything else (for example bf16 asked for on a CPU without native
bfloat16, which OpenVINO silently runs as f32) is refused at load, never served.

Why CPU pinning is off (`ENABLE_CPU_PINNING`, on by default in OpenVINO's CPU plugin on Linux):
Triton runs each backbone in its own stub process, and each process's plugin pins its inference
threads as if it had the host to itself, so the backbones that run side by side pile onto the same
cores instead of sharing them. Measured on the 2-core AVX2 host (bench/README.md, "Thread
placement"): the four INT8 backbones all on OpenVINO, 1 thread each, served 1.37-1.54 images/s at
8 in flight with pinning and 2.97 without, in alternating runs; the operating system's scheduler
places the processes better than four plugins that do not know about each other.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

PRECISION_PARAMETER = "INFERENCE_PRECISION_HINT"
"""The config parameter (and OpenVINO property) naming the precision of floating-point ops."""


PINNING_PROPERTY = "ENABLE_CPU_PINNING"
"""OpenVINO's property that pins inference threads to cores; always off here (module docstring)."""


class PrecisionMismatch(RuntimeError):
    """OpenVINO compiled a model at another precision than the one the config asked for."""


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

        self.requested = params.get(PRECISION_PARAMETER, "").strip().lower()
        if not self.requested:
            raise ValueError(
                f"{path}: the config sets no {PRECISION_PARAMETER} parameter; OpenVINO would "
                "choose the precision itself (bfloat16 on AMX hosts). Re-render the configs "
                "with `msk export`.")
        self.properties: dict[str, object] = {
            "PERFORMANCE_HINT": params.get("PERFORMANCE_HINT", "LATENCY"),
            PRECISION_PARAMETER: self.requested,
            PINNING_PROPERTY: False,         # see the module docstring
        }
        threads = int(params.get("INFERENCE_NUM_THREADS", "0") or 0)
        if threads:
            self.properties["INFERENCE_NUM_THREADS"] = threads
        self.path = path
        self.version = ov.__version__
        self.core = ov.Core()
        self.model = self.core.read_model(path)
        self.compiled: dict[tuple, tuple] = {}

    def _request(self, shapes: dict[str, tuple[int, ...]]):
        key = tuple(sorted(shapes.items()))
        if key not in self.compiled:
            model = self.model.clone()
            model.reshape({name: list(shape) for name, shape in shapes.items()})
            compiled = self._compile(model)
            self.compiled[key] = (compiled, compiled.create_infer_request())
        return self.compiled[key]

    def _compile(self, model):
        compiled = self.core.compile_model(model, "CPU", self.properties)
        effective = compiled.get_property(PRECISION_PARAMETER).get_type_name()
        if effective != self.requested:
            raise PrecisionMismatch(
                f"{self.path}: OpenVINO {self.version} compiled it at {effective}, not the "
                f"{self.requested} the config asks for (this CPU cannot run {self.requested} "
                "natively); refusing to serve another precision")
        return compiled

    @property
    def precision(self) -> str:
        """The precision OpenVINO actually runs floating-point ops at, read back from a compiled
        model (each was checked against the config when compiled; with none compiled yet, the
        model as read is compiled for the check)."""
        return self._read_back(PRECISION_PARAMETER).get_type_name()

    @property
    def pinned(self) -> bool:
        """Whether OpenVINO pins this model's inference threads to cores (read back from a
        compiled model, as `precision`)."""
        return bool(self._read_back(PINNING_PROPERTY))

    def _read_back(self, name: str):
        """A property as a compiled model reports it (the first one compiled, or the model as
        read, compiled now)."""
        compiled = (next(iter(self.compiled.values()))[0] if self.compiled
                    else self._compile(self.model))
        return compiled.get_property(name)

    def warm(self, inputs: list[dict], batches: Iterable[int]) -> None:
        """Compile for these batch sizes now (inputs: the config's, with fixed dims)."""
        for batch in batches:
            self._request({t["name"]: (batch, *map(int, t["dims"])) for t in inputs})

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        compiled, request = self._request({n: a.shape for n, a in feeds.items()})
        results = request.infer(feeds)
        return [np.array(results[compiled.output(name)]) for name in output_names]
