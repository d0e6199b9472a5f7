"""A python-based Triton backend named `openvino`: serves `model.onnx` with OpenVINO's CPU plugin.

Why it exists: `msk export --cpu-runtime openvino` writes the MURA backbones' configs for
Triton's OpenVINO backend (`backend: "openvino"`, `default_model_filename: "model.onnx"`), which
NVIDIA's CPU containers ship natively and the nvidia-pytriton wheel does not. This backend serves
those same configs here, as `server/backends/onnxruntime` does for the ORT configs. It reads the
parameters the native backend reads (`INFERENCE_NUM_THREADS`, `PERFORMANCE_HINT`) plus the
precision it must run at (`INFERENCE_PRECISION_HINT`, required and read back: see session.py) and
keeps
everything else - batching requests, per-request errors, dropping cancelled work - from the
onnxruntime backend, which it loads from its sibling folder (one implementation of the request
path). Measured faster than ORT on the backbones of this CPU: bench/README.md, "OpenVINO".
"""

from __future__ import annotations

import importlib.util
import os

import triton_python_backend_utils as pb_utils

_HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_BASE = _load("msk_onnxruntime_backend",
              os.path.join(os.path.dirname(_HERE), "onnxruntime", "model.py"))
_SESSION = _load("msk_openvino_session", os.path.join(_HERE, "session.py"))


class TritonPythonModel(_BASE.TritonPythonModel):
    def _open(self, path: str, params: dict[str, str]):
        session = _SESSION.OpenVinoSession(path, params)
        if self.batching:
            session.warm(self.config["input"], range(1, int(self.config["max_batch_size"]) + 1))
        # Read back from the runtime, for the log and the tests (tests/test_openvino_runtime.py).
        pb_utils.Logger.log_info(
            f"{self.name}: OpenVINO {session.version} CPU inference precision "
            f"{session.precision} (config {_SESSION.PRECISION_PARAMETER}={session.requested}), "
            f"threads pinned to cores: {session.pinned}")
        return session
