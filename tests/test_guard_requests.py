"""Weak answers made clear at the front door (issue "Close the side doors", item 6): requests
Triton 2.51 answered UNKNOWN with a Python exception name, INTERNAL, or silently used, are
refused by the gRPC guard with INVALID_ARGUMENT and a plain message, before Triton sees them; the
server keeps serving. A refused large request leaves memory where it was: longer than the
largest legal request, it is refused from its gRPC length prefix before it is read; shorter, its
data is checked against its shape before Triton copies it in. Against the real tritonserver
behind the real guard (and the real `msk serve`), loopback only."""

from __future__ import annotations

import contextlib
import os
import time
import uuid

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from msk.constants import IMAGE_TENSOR, MURA_ENSEMBLE_MODEL
from server.grpc_guard import MAX_MESSAGE_BYTES, GrpcGuard

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def _request(shape=(8, 8), raws=1, names=(IMAGE_TENSOR,), data_bytes=None, **parameters):
    request = service_pb2.ModelInferRequest(model_name=MURA_ENSEMBLE_MODEL)
    for name in names:
        tensor = request.inputs.add(name=name, datatype="UINT8")
        tensor.shape.extend(shape)
    for _ in range(raws):
        request.raw_input_contents.append(bytes(int(np.prod(shape)) if data_bytes is None
                                                else data_bytes))
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
    (_request(data_bytes=65), "shape [8, 8] of UINT8 is 64 bytes; the request carries 65"),
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


SHM_REGISTER = "/inference.GRPCInferenceService/SystemSharedMemoryRegister"


@contextlib.contextmanager
def _region(size: int):
    """A real POSIX shared-memory object of `size` bytes, owner-only, removed afterwards."""
    key = f"msk_test_{uuid.uuid4().hex[:8]}"
    descriptor = os.open(f"/dev/shm/{key}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(descriptor, size)
        yield key
    finally:
        os.close(descriptor)
        os.unlink(f"/dev/shm/{key}")


def test_bad_shared_memory_keys_are_the_clients_mistake(tiny_triton):
    """Triton 2.51 answers these with INTERNAL; they are INVALID_ARGUMENT naming the key."""
    with GrpcGuard(tiny_triton.grpc_url, "127.0.0.1", 0, client_shm=True) as guard, \
            grpc.insecure_channel(guard.url) as channel, _region(4096) as key:
        register = channel.unary_unary(SHM_REGISTER)
        for (name, region, offset, size), message in (
                (("a", "/msk_no_such_region_1", 0, 64), "does not exist"),
                (("b", f"/{key}", 0, 8192), "outside the region's 4096 bytes"),
                (("c", f"/{key}", 4090, 64), "outside the region's 4096 bytes"),
                (("d", "../etc/passwd", 0, 64), "is not a POSIX shared-memory name")):
            with pytest.raises(grpc.RpcError) as caught:
                register(service_pb2.SystemSharedMemoryRegisterRequest(
                    name=name, key=region, offset=offset, byte_size=size).SerializeToString(),
                    timeout=30)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, region
            assert message in caught.value.details() and region in caught.value.details()
        register(service_pb2.SystemSharedMemoryRegisterRequest(          # the good one passes
            name="ok", key=f"/{key}", offset=0, byte_size=4096).SerializeToString(), timeout=30)
        channel.unary_unary("/inference.GRPCInferenceService/SystemSharedMemoryUnregister")(
            service_pb2.SystemSharedMemoryUnregisterRequest(name="ok").SerializeToString(),
            timeout=30)


def _rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


def test_refused_large_requests_leave_memory_where_it_was(tiny_msk_serve):
    """Before: a refused 128 MiB request left tritonserver and `msk serve` ~270 MB larger."""
    channel = grpc.insecure_channel(tiny_msk_serve.grpc_url, options=[
        ("grpc.max_send_message_length", -1)])
    call = channel.unary_unary(METHOD)
    serve_pid, triton_pid = tiny_msk_serve.proc.pid, tiny_msk_serve.triton_pid
    too_long = _request(shape=(128 * 1024 * 1024,), data_bytes=128 * 1024 * 1024)
    serve_before, triton_before = _rss(serve_pid), _rss(triton_pid)
    with pytest.raises(grpc.RpcError) as caught:          # refused from its length prefix
        call(too_long, timeout=60)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(MAX_MESSAGE_BYTES) in caught.value.details()
    del too_long
    assert _rss(serve_pid) - serve_before < 32 * 2**20        # far below the 128 MiB body
    # Just under the limit, but not what its shape says: read once, refused before Triton.
    mismatched = _request(shape=(100, 100), data_bytes=MAX_MESSAGE_BYTES - 2**20)
    sizes = []
    for _ in range(6):
        with pytest.raises(grpc.RpcError) as caught:
            call(mismatched, timeout=60)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is 10000 bytes; the request carries" in caught.value.details()
        time.sleep(0.5)                                   # the guard frees it shortly after
        sizes.append(_rss(serve_pid))
    assert sizes[-1] - sizes[0] < 48 * 2**20, [s // 2**20 for s in sizes]  # no growth per request
    assert _rss(triton_pid) - triton_before < 16 * 2**20, "Triton never saw them"
    channel.close()
    assert tiny_msk_serve.triton_alive()
