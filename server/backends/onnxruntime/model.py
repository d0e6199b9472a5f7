"""A python-based Triton backend named `onnxruntime`: serves `model.onnx` with ONNX Runtime.

Why it exists: the tritonserver binary available on CPU-only machines (from the nvidia-pytriton
wheel) ships only the python backend. Triton's python-based-backend mechanism loads
`<backend-dir>/onnxruntime/model.py` for every model whose config says `backend: "onnxruntime"`, so
the exact configs that the native ORT backend serves in NVIDIA's container also serve here.

Behaviour that matters:
  * dynamic batching: Triton hands `execute` several requests; requests whose inputs have the same
    per-request shape are concatenated along the batch axis and run as one ORT call;
  * errors are per request (a bad request never fails the others in the batch) and name the model,
    the tensor and what was wrong;
  * output dtypes follow the config; STRING outputs are returned as bytes objects;
  * abandoned work is dropped: a request whose client went away or whose deadline passed
    (`request.is_cancelled()`, set by Triton on a gRPC cancel or deadline) gets a CANCELLED error
    without being run, so a flood of killed clients does not hold the model for minutes.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        self.config = json.loads(args["model_config"])
        self.name = self.config["name"]
        self.batching = int(self.config.get("max_batch_size", 0)) > 0
        self.input_names = [t["name"] for t in self.config["input"]]
        self.output_names = [t["name"] for t in self.config["output"]]
        self.output_dtypes = {
            t["name"]: pb_utils.triton_string_to_numpy(t["data_type"])
            for t in self.config["output"]
        }
        filename = self.config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        params = {k: v.get("string_value", "") for k, v in
                  self.config.get("parameters", {}).items()}
        self.session = self._open(path, params)

    def _open(self, path: str, params: dict[str, str]):
        """The runtime session: anything with ORT's `run(output_names, feeds) -> list`. The
        python-based `openvino` backend (server/backends/openvino) overrides only this."""
        options = ort.SessionOptions()
        threads = int(params.get("intra_op_thread_count", "0") or 0)
        if threads:
            options.intra_op_num_threads = threads
        # Every model instance is its own stub process with its own thread pool, and the four
        # backbones run at once: spinning idle threads would steal the cores the others need.
        spinning = params.get("allow_spinning", "0")
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
        # FP32 ops stay FP32 on every host: ORT's only lowering (bf16 fast-math GEMMs, arm64) is
        # off by default; said explicitly, as export/mura_accuracy_gate.py's ORT_FP32_ONLY does.
        options.add_session_config_entry("mlas.enable_gemm_fastmath_arm64_bfloat16", "0")
        return ort.InferenceSession(path, sess_options=options,
                                    providers=["CPUExecutionProvider"])

    # ---------------------------------------------------------------------------------------
    def _read_inputs(self, request) -> dict[str, np.ndarray]:
        arrays = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"missing input tensor {name!r}")
            array = tensor.as_numpy()
            if array.size == 0:
                raise ValueError(f"input {name!r} is empty (shape {list(array.shape)})")
            arrays[name] = array
        return arrays

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.output_names, feeds)

    def _response(self, outputs: list[np.ndarray]):
        tensors = []
        for name, value in zip(self.output_names, outputs, strict=True):
            dtype = self.output_dtypes[name]
            if dtype == np.object_:
                value = np.array([v.encode() if isinstance(v, str) else v
                                  for v in value.reshape(-1)], dtype=np.object_
                                 ).reshape(value.shape)
            else:
                value = np.ascontiguousarray(value.astype(dtype, copy=False))
            tensors.append(pb_utils.Tensor(name, value))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _error(self, message: str):
        return pb_utils.InferenceResponse(
            error=pb_utils.TritonError(f"model {self.name!r}: {message}"))

    def _cancelled(self):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(
            f"model {self.name!r}: request cancelled (client gone or deadline passed); not run",
            pb_utils.TritonError.CANCELLED))

    def execute(self, requests):
        responses = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict]]] = defaultdict(list)
        for index, request in enumerate(requests):
            if request.is_cancelled():
                responses[index] = self._cancelled()
                continue
            try:
                feeds = self._read_inputs(request)
            except Exception as exc:  # noqa: BLE001 - why: any bad input fails this request only
                responses[index] = self._error(str(exc))
                continue
            if not self.batching:
                responses[index] = self._safe_single(feeds)
                continue
            key = tuple((n, a.dtype.str, a.shape[1:]) for n, a in feeds.items())
            groups[key].append((index, feeds))
        for members in groups.values():
            self._run_group(members, responses)
        return responses

    def _safe_single(self, feeds: dict[str, np.ndarray]):
        try:
            return self._response(self._run(feeds))
        except Exception as exc:  # noqa: BLE001 - why: any ORT error answers this request only
            return self._error(str(exc))

    def _run_group(self, members: list[tuple[int, dict]], responses: list) -> None:
        if len(members) == 1:
            index, feeds = members[0]
            responses[index] = self._safe_single(feeds)
            return
        sizes = [next(iter(feeds.values())).shape[0] for _, feeds in members]
        stacked = {name: np.concatenate([feeds[name] for _, feeds in members])
                   for name in self.input_names}
        try:
            outputs = self._run(stacked)
        except Exception:  # noqa: BLE001 - why: rerun one by one, one bad request cannot fail all
            for index, feeds in members:
                responses[index] = self._safe_single(feeds)
            return
        offsets = np.cumsum([0, *sizes])
        for (index, _), start, stop in zip(members, offsets[:-1], offsets[1:], strict=True):
            responses[index] = self._response([o[start:stop] for o in outputs])

    def finalize(self) -> None:
        self.session = None
