"""KServe v2 over HTTP, answered over gRPC: the translation the HTTP guard needs.

Why: tritonserver runs without HTTP (server/exposure.py), so the HTTP guard speaks the KServe v2
HTTP/REST protocol itself and sends each request as its gRPC twin through the gRPC guard's checked
path. Only what `msk serve` offers on HTTP is translated: health, server and model metadata,
model readiness, and inference (JSON tensors and the binary-tensor extension, as tritonclient.http
sends them). The JSON shapes follow Triton's HTTP API (docs/protocol/extension_binary_data.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

BINARY_HEADER = "Inference-Header-Content-Length"


class BadRequest(ValueError):
    """The HTTP request is not a KServe v2 request this server can translate."""


def _json_param(value) -> dict:
    """One KServe parameter value -> the fields of a gRPC InferParameter."""
    if isinstance(value, bool):
        return {"bool_param": value}
    if isinstance(value, int):
        return {"int64_param": value}
    if isinstance(value, str):
        return {"string_param": value}
    if isinstance(value, float):
        return {"double_param": value}
    raise BadRequest(f"parameter value {value!r} is not a bool, number or string")


def _grpc_param(parameter) -> object:
    kind = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, kind) if kind else None


def _set_params(target, params: dict | None) -> None:
    for key, value in (params or {}).items():
        if key in ("binary_data", "binary_data_size", "binary_data_output"):
            continue                       # HTTP-only (how tensors travel), not for Triton
        for attribute, converted in _json_param(value).items():
            setattr(target[key], attribute, converted)


@dataclass
class InferTranslation:
    """An HTTP inference request as gRPC, plus what the HTTP answer must look like."""

    request: object
    """tritonclient.grpc.service_pb2.ModelInferRequest"""
    binary_outputs: set[str] = field(default_factory=set)
    all_binary: bool = False


def _tensor_bytes(name: str, datatype: str, data) -> bytes:
    from tritonclient.utils import serialize_byte_tensor, triton_to_np_dtype

    if datatype == "BYTES":
        items = np.asarray([str(d).encode() if not isinstance(d, bytes) else d
                            for d in np.asarray(data, dtype=object).ravel()], dtype=object)
        return serialize_byte_tensor(items).tobytes()
    dtype = triton_to_np_dtype(datatype)
    if dtype is None:
        raise BadRequest(f"input {name!r} has an unknown datatype {datatype!r}")
    try:
        return np.asarray(data, dtype=dtype).ravel().tobytes()
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"input {name!r}: data is not {datatype} ({exc})") from exc


def infer_request(model: str, version: str, body: bytes,
                  header_length: int | None) -> InferTranslation:
    """The gRPC ModelInferRequest of a KServe v2 HTTP inference body."""
    from tritonclient.grpc import service_pb2

    head, binary = (body[:header_length], body[header_length:]) if header_length else (body, b"")
    try:
        doc = json.loads(head)
    except ValueError as exc:
        raise BadRequest(f"inference request for model {model!r} is not valid JSON "
                         f"({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise BadRequest(f"inference request for model {model!r} has no inputs list")
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version,
                                            id=str(doc.get("id", "")))
    params = doc.get("parameters") or {}
    _set_params(request.parameters, params)
    offset = 0
    for tensor in doc["inputs"]:
        try:
            name, datatype = str(tensor["name"]), str(tensor["datatype"])
            shape = [int(d) for d in tensor["shape"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise BadRequest(f"every input needs name, datatype and shape ({exc})") from exc
        grpc_tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        _set_params(grpc_tensor.parameters, tensor.get("parameters"))
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if int(size) < 0 or offset + int(size) > len(binary):
                raise BadRequest(f"input {name!r} declares {size} binary bytes; the body "
                                 f"has {len(binary) - offset} left")
            request.raw_input_contents.append(binary[offset:offset + int(size)])
            offset += int(size)
        elif "data" in tensor:
            request.raw_input_contents.append(_tensor_bytes(name, datatype, tensor["data"]))
        else:
            raise BadRequest(f"input {name!r} has neither data nor binary_data_size")
    translation = InferTranslation(request, all_binary=bool(params.get("binary_data_output")))
    for wanted in doc.get("outputs") or ():
        name = str(wanted.get("name", ""))
        request.outputs.add(name=name)
        if (wanted.get("parameters") or {}).get("binary_data"):
            translation.binary_outputs.add(name)
    return translation


def infer_response(raw: bytes, translation: InferTranslation) -> tuple[bytes, dict[str, str]]:
    """The HTTP body (and extra headers) of a gRPC ModelInferResponse."""
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

    response = service_pb2.ModelInferResponse.FromString(raw)
    outputs, blobs = [], []
    for tensor, content in zip(response.outputs, response.raw_output_contents, strict=False):
        entry: dict = {"name": tensor.name, "datatype": tensor.datatype,
                       "shape": [int(d) for d in tensor.shape]}
        if translation.all_binary or tensor.name in translation.binary_outputs:
            entry["parameters"] = {"binary_data_size": len(content)}
            blobs.append(content)
        elif tensor.datatype == "BYTES":
            entry["data"] = [item.decode(errors="replace")
                             for item in deserialize_bytes_tensor(content)]
        else:
            entry["data"] = np.frombuffer(content,
                                          dtype=triton_to_np_dtype(tensor.datatype)).tolist()
        outputs.append(entry)
    doc = {"model_name": response.model_name, "model_version": response.model_version,
           "outputs": outputs}
    if response.id:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = {k: _grpc_param(v) for k, v in response.parameters.items()}
    head = json.dumps(doc).encode()
    if not blobs:
        return head, {"Content-Type": "application/json"}
    return head + b"".join(blobs), {"Content-Type": "application/octet-stream",
                                    BINARY_HEADER: str(len(head))}


def _tensor_metadata(tensors) -> list[dict]:
    return [{"name": t.name, "datatype": t.datatype, "shape": [int(d) for d in t.shape]}
            for t in tensors]


def model_metadata(raw: bytes) -> dict:
    from tritonclient.grpc import service_pb2

    meta = service_pb2.ModelMetadataResponse.FromString(raw)
    return {"name": meta.name, "versions": list(meta.versions), "platform": meta.platform,
            "inputs": _tensor_metadata(meta.inputs), "outputs": _tensor_metadata(meta.outputs)}


def server_metadata(raw: bytes) -> dict:
    from tritonclient.grpc import service_pb2

    meta = service_pb2.ServerMetadataResponse.FromString(raw)
    return {"name": meta.name, "version": meta.version, "extensions": list(meta.extensions)}
