"""What `msk serve` accepts at its boundary, against the real server.

* A gRPC request whose declared shape overflows Triton 2.51's element count ([2**62+4, 4] with 16
  bytes) used to kill the `mura_preprocess` stub for good; it now gets INVALID_ARGUMENT from the
  guard and the same tritonserver keeps serving.
* A shape larger than `MAX_IMAGE_PIXELS` is refused before any allocation on gRPC; HTTP answers
  health and metadata only, so the 90-byte HTTP request that made Triton allocate ~10 GB is
  refused (403) and the server's memory does not move; with `--http-inference` the HTTP guard
  refuses it (400) before Triton parses it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from msk.constants import MAX_IMAGE_PIXELS, MURA_ENSEMBLE_MODEL

ISSUE_BODY = (b'{"inputs":[{"name":"IMAGE","shape":[100000,100000],"datatype":"UINT8",'
                b'"data":[1,2,3]}]}')
"""The issue's "90-byte" request body, as filed."""
RSS_JUMP = 256 * 1024 * 1024
"""Far below the ~10 GB the unguarded request allocated, far above normal fluctuation."""


def _image_input(shape: list[int], data: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("IMAGE", list(data.shape), "UINT8")
    inp.set_data_from_numpy(data)
    inp.set_shape(shape)
    return inp


def _score_ok(url: str) -> float:
    client = grpcclient.InferenceServerClient(url)
    image = np.random.default_rng(0).integers(0, 255, (96, 80), dtype=np.uint8)
    result = client.infer(MURA_ENSEMBLE_MODEL, [_image_input([96, 80], image)],
                          client_timeout=60)
    return float(result.as_numpy("PROBABILITY")[0])


def test_overflowing_shape_gets_an_error_and_nothing_else_changes(tiny_msk_serve):
    client = grpcclient.InferenceServerClient(tiny_msk_serve.grpc_url)
    before = _score_ok(tiny_msk_serve.grpc_url)
    bad = _image_input([2**62 + 4, 4], np.zeros((4, 4), np.uint8))
    with pytest.raises(InferenceServerException) as caught:
        client.infer(MURA_ENSEMBLE_MODEL, [bad], client_timeout=30)
    assert "INVALID_ARGUMENT" in str(caught.value.status())
    assert "IMAGE" in caught.value.message() and str(MAX_IMAGE_PIXELS) in caught.value.message()
    for _ in range(3):     # the ensemble still answers, with the same numbers
        assert _score_ok(tiny_msk_serve.grpc_url) == pytest.approx(before, abs=1e-6)
    assert client.is_server_ready() and client.is_model_ready("mura_preprocess")
    assert tiny_msk_serve.triton_alive()


@pytest.mark.parametrize("shape", [[100000, 100000], [MAX_IMAGE_PIXELS + 1, 1], [-1, 4]])
def test_oversized_or_negative_shapes_are_refused_on_grpc(tiny_msk_serve, shape):
    client = grpcclient.InferenceServerClient(tiny_msk_serve.grpc_url)
    rss = tiny_msk_serve.triton_rss_bytes()
    with pytest.raises(InferenceServerException) as caught:
        client.infer(MURA_ENSEMBLE_MODEL, [_image_input(shape, np.zeros((1, 3), np.uint8))],
                     client_timeout=30)
    assert "INVALID_ARGUMENT" in str(caught.value.status())
    assert tiny_msk_serve.triton_rss_bytes() - rss < RSS_JUMP
    assert tiny_msk_serve.triton_alive()


def test_http_serves_health_and_metadata_but_not_inference(tiny_msk_serve):
    http = tiny_msk_serve.http_url
    with urllib.request.urlopen(f"{http}/v2/health/ready", timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"{http}/v2/models/{MURA_ENSEMBLE_MODEL}", timeout=10) as r:
        assert json.load(r)["name"] == MURA_ENSEMBLE_MODEL
    rss = tiny_msk_serve.triton_rss_bytes()
    for path, body in ((f"/v2/models/{MURA_ENSEMBLE_MODEL}/infer", ISSUE_BODY),
                       ("/v2/repository/index", b"{}"),
                       (f"/v2/repository/models/{MURA_ENSEMBLE_MODEL}/unload", b"{}")):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(urllib.request.Request(f"{http}{path}", data=body), timeout=30)
        assert caught.value.code == 403, path
    assert tiny_msk_serve.triton_rss_bytes() - rss < RSS_JUMP
    assert tiny_msk_serve.triton_alive()


def test_http_inference_is_opt_in_and_guarded(tiny_repository):
    from tests.plugins.msk_serve import running_msk_serve

    with running_msk_serve("serve", "--repository", str(tiny_repository),
                           "--http-inference") as serve:
        infer = f"{serve.http_url}/v2/models/{MURA_ENSEMBLE_MODEL}/infer"
        body = json.dumps({"inputs": [{"name": "IMAGE", "shape": [2, 2], "datatype": "UINT8",
                                       "data": [1, 2, 3, 4]}]}).encode()
        with urllib.request.urlopen(urllib.request.Request(infer, data=body), timeout=60) as r:
            outputs = {o["name"]: o for o in json.load(r)["outputs"]}
        assert 0.0 <= outputs["PROBABILITY"]["data"][0] <= 1.0
        rss = serve.triton_rss_bytes()
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(urllib.request.Request(infer, data=ISSUE_BODY), timeout=30)
        assert caught.value.code == 400
        assert str(MAX_IMAGE_PIXELS) in json.load(caught.value)["error"]
        assert serve.triton_rss_bytes() - rss < RSS_JUMP
        with pytest.raises(urllib.error.HTTPError) as caught:      # still no model control
            urllib.request.urlopen(urllib.request.Request(
                f"{serve.http_url}/v2/repository/index", data=b"{}"), timeout=30)
        assert caught.value.code == 403
        with urllib.request.urlopen(f"{serve.http_url}/v2/health/ready", timeout=10) as r:
            assert r.status == 200
        assert serve.triton_alive()


def test_no_timeout_reaches_triton_where_the_release_needs_grpc_no_cancel():
    """2.51 (`grpc-no-cancel`): a client's `timeout` parameter is taken out of the request and
    enforced by the guard (tests/test_deadline_stress.py says why); on a fixed release the
    request is forwarded as sent."""
    from tritonclient.grpc import service_pb2

    from server.grpc_guard import EXPIRED_DEADLINE, EXPIRED_TIMEOUT, GrpcGuard, front_door_wait

    guard = GrpcGuard("127.0.0.1:1", "127.0.0.1", 0)
    request = service_pb2.ModelInferRequest(model_name=MURA_ENSEMBLE_MODEL)
    tensor = request.inputs.add(name="IMAGE", datatype="UINT8", shape=[96, 80])
    assert tensor.name == "IMAGE"
    untouched = request.SerializeToString()
    assert guard._checked("ModelInfer", untouched) == (untouched, None)
    request.parameters["timeout"].int64_param = 1000
    raw, asked = guard._checked("ModelInfer", request.SerializeToString())
    forwarded = service_pb2.ModelInferRequest.FromString(raw)
    assert asked == 0.001 and "timeout" not in forwarded.parameters
    assert list(forwarded.inputs[0].shape) == [96, 80]
    assert front_door_wait(2.5, asked) == (0.001, EXPIRED_TIMEOUT)
    assert front_door_wait(2.5, None) == (2.5, EXPIRED_DEADLINE)
    assert front_door_wait(None, None) == (None, EXPIRED_DEADLINE)
    guard.cancel_upstream = True
    sent = request.SerializeToString()
    assert guard._checked("ModelInfer", sent) == (sent, None)
