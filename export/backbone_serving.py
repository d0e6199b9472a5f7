"""Serve backbone graphs through the real Triton, configured exactly as the repository will serve
them, for the export's own measurements: the runtime choice (`export.runtime_choice`) and the
accuracy gate (`export.mura_int8_version`).

Why through Triton and not in-process: what is timed and scored must be what will serve. The
runtime (our onnxruntime or OpenVINO python-based backend), its thread count, its precision hint
and the stub process around it all change speed, and the precision hint changes the numbers; an
in-process ORT session is a proxy for none of them but ORT itself. So each candidate gets the
config `export.configs.render` writes for the repository (renamed, so that several candidates of
the same member load side by side) and runs in a temporary repository served by the server
composition the caller passes in (`launch`: `server.launcher.TritonServer` from the CLI; the
export layer may not import `server`, see docs/ARCHITECTURE.md "Import rules").

Only the backbones are served: the preprocessing and averaging graphs are the same ORT FP32 graphs
for every candidate (the caller runs them in-process on both sides of a comparison).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from export.configs import render
from export.model_specs import intra_op_threads, mura_specs
from msk.constants import (
    CAM_TENSOR,
    EXPORT_BF16,
    EXPORT_CPU_RUNTIMES,
    MURA_MEMBERS,
    OPENVINO_INFERENCE_PRECISION,
    PIXELS_TENSOR,
    PROBABILITY_TENSOR,
)

_HINT = 'key: "INFERENCE_PRECISION_HINT" value: {{ string_value: "{}" }}'

Launch = Callable[[Path], contextlib.AbstractContextManager[Any]]
"""repository folder -> a running server (context manager) with `grpc_client()`: the serving
composition (`server.launcher.TritonServer`)."""


@dataclass(frozen=True)
class Serving:
    """How one backbone graph is served: runtime, precision it runs at, intra-op threads."""

    runtime: str
    precision: str
    threads: int

    def record(self) -> dict:
        return asdict(self)


def backbone_config(member: str, image_size: int, cpu_cores: int, runtime: str,
                    precision: str, name: str | None = None) -> str:
    """The config.pbtxt the repository serves `member` with on `runtime` (any backbone may run
    on either runtime here: the measured choice, not `OPENVINO_ARCHITECTURES`, decides), with the
    OpenVINO precision hint for bf16, renamed to `name` for a candidate repository."""
    if runtime not in EXPORT_CPU_RUNTIMES:
        raise ValueError(f"runtime must be one of {EXPORT_CPU_RUNTIMES}, got {runtime!r}")
    spec = next(s for s in mura_specs(image_size) if s.name == member)
    text = render(replace(spec, openvino=runtime == "openvino"), "cpu", cpu_cores, runtime)
    if precision == EXPORT_BF16:
        if runtime != "openvino":
            raise ValueError("bf16 is served by the OpenVINO runtime only")
        f32 = _HINT.format(OPENVINO_INFERENCE_PRECISION)
        if f32 not in text:
            raise ValueError(f"{member}: rendered config carries no {f32!r} to turn into bf16")
        text = text.replace(f32, _HINT.format(EXPORT_BF16))
    if name is not None:
        text = text.replace(f'name: "{member}"', f'name: "{name}"', 1)
    return text


def serving_of(member: str, cpu_cores: int, runtime: str, precision: str) -> Serving:
    """The Serving a config rendered by `backbone_config` describes."""
    spec = next(s for s in mura_specs() if s.name == member)
    return Serving(runtime, precision, intra_op_threads(cpu_cores, spec.parallel))


@dataclass(frozen=True)
class Candidate:
    """One backbone graph to serve under `name` with `serving`'s config."""

    name: str
    member: str
    graph: Path
    serving: Serving


class BackboneServer:
    """Candidates in a temporary repository, served by `launch`; infer and time them by name."""

    def __init__(self, launch: Launch, candidates: list[Candidate], image_size: int,
                 cpu_cores: int) -> None:
        self.launch = launch
        self.candidates = {c.name: c for c in candidates}
        self.image_size = image_size
        self.cpu_cores = cpu_cores
        self.max_batch = {s.name: s.max_batch_size for s in mura_specs(image_size)}
        self._stack = contextlib.ExitStack()
        self.server: Any = None
        self.client: Any = None

    def _write(self, root: Path) -> None:
        for c in self.candidates.values():
            folder = root / c.name / "1"
            folder.mkdir(parents=True)
            os.symlink(Path(c.graph).resolve(), folder / "model.onnx")
            (root / c.name / "config.pbtxt").write_text(backbone_config(
                c.member, self.image_size, self.cpu_cores, c.serving.runtime,
                c.serving.precision, name=c.name))

    def __enter__(self) -> BackboneServer:
        try:
            root = Path(self._stack.enter_context(
                tempfile.TemporaryDirectory(prefix="msk-candidates-")))
            self._write(root)
            self.server = self._stack.enter_context(self.launch(root))
            self.client = self.server.grpc_client()
            self._stack.callback(self.client.close)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _infer_batch(self, name: str, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import tritonclient.grpc as grpcclient

        tensor = grpcclient.InferInput(PIXELS_TENSOR, list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(pixels, np.float32))
        outputs = [grpcclient.InferRequestedOutput(n) for n in (PROBABILITY_TENSOR, CAM_TENSOR)]
        result = self.client.infer(name, [tensor], outputs=outputs)
        return result.as_numpy(PROBABILITY_TENSOR), result.as_numpy(CAM_TENSOR)

    def infer(self, name: str, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities [N, 1], CAMs [N, c, c]) of candidate `name` on pixels [N, 3, S, S],
        sent in batches the model accepts."""
        step = max(1, self.max_batch[self.candidates[name].member])
        outs = [self._infer_batch(name, pixels[i:i + step]) for i in range(0, len(pixels), step)]
        return (np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs]))

    def time_ms(self, name: str, pixels: np.ndarray, warmup: int, repeats: int) -> list[float]:
        """Wall milliseconds of `repeats` requests of one batch each (after `warmup` untimed
        ones), as a client sees them: the runtime, its threads and the stub's IPC included."""
        for _ in range(warmup):
            self._infer_batch(name, pixels)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            self._infer_batch(name, pixels)
            times.append(1e3 * (time.perf_counter() - start))
        return times


def member_names(prefix: str) -> dict[str, str]:
    """member -> candidate model name with `prefix` (Triton model names: letters, digits, _)."""
    return {m: f"{prefix}__{m}" for m in MURA_MEMBERS}
