"""Weak answers made clear at the front door (issue "Close the side doors", item 6): requests
Triton 2.51 answered UNKNOWN with a Python exception name, INTERNAL, or silently used, are
refused by the gRPC guard with INVALID_ARGUMENT and a plain message, before Triton sees them; the
server keeps serving. Against the real tritonserver behind the real guard, loopback only."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from msk.constants import IMAGE_TENSOR, MURA_ENSEMBLE_MODEL
from server.grpc_guard import GrpcGuard

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def _request(shape=(8, 8), raws=1, names=(IMAGE_TENSOR,), **parameters):
    request = service_pb2.ModelInferRequest(model_name=MURA_ENSEMBLE_MODEL)
    for name in names:
        tensor = request.inputs.add(name=name, datatype="UINT8")
        tensor.shape.extend(shape)
    for _ in range(raws):
        request.raw_input_contents.append(bytes(int(np.prod(shape))))
    for key, value in parameters.items():
        request.parameters[key].int64_param = value
    return request.SerializeToString()


@pytest.fixture()
def call(tiny_triton):
    with GrpcGuard(tiny_triton.grpc_url, "127.0.0.1", 0) as guard, \
            grpc.insecure_channel(guard.url) as channel:
        yield channel.unary_unary(METHOD)


@pytest.mark.parametrize(("raw", "message"), [
    (b"\xff\xff\xff\xff not protobuf", "could not be decoded"),
    (_request(shape=(0, 8)), "declares an empty shape [0, 8]"),
    (_request(raws=2), "carries 2 raw contents for 1 inputs"),
    (_request(names=(IMAGE_TENSOR, IMAGE_TENSOR), raws=2), "names an input twice"),
    (_request(priority=2 ** 62), "parameter 'priority' is not used"),
    (_request(sequence_id=7), "parameter 'sequence_id' is not used"),
])
def test_refused_with_invalid_argument_and_a_plain_message(call, raw: bytes, message: str):
    with pytest.raises(grpc.RpcError) as caught:
        call(raw, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()
    assert "Traceback" not in caught.value.details()


def test_a_good_request_still_passes(call):
    image = (np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)
    request = service_pb2.ModelInferRequest(model_name=MURA_ENSEMBLE_MODEL)
    tensor = request.inputs.add(name=IMAGE_TENSOR, datatype="UINT8")
    tensor.shape.extend(image.shape)
    request.raw_input_contents.append(image.tobytes())
    reply = service_pb2.ModelInferResponse.FromString(
        call(request.SerializeToString(), timeout=120))
    assert reply.model_name == MURA_ENSEMBLE_MODEL and reply.outputs
