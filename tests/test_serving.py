"""The MURA ensemble on the real tritonserver over gRPC."""

from __future__ import annotations

import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clients.mura import MuraClient
from msk.constants import MURA_ENSEMBLE_MODEL, MURA_MEMBERS, MURA_PREPROCESS_MODEL
from msk.samples import radiograph
from tests.reference import ReferencePipeline

SIZES = [(320, 320), (512, 400), (97, 613), (1024, 768)]


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return (radiograph(h, w, seed) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def reference(demo_repository):
    return ReferencePipeline(demo_repository)


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_grpc_scores_equal_in_process_onnxruntime(triton, reference, h, w):
    image = _image(h, w, seed=h + w)
    with MuraClient(triton.grpc_url) as client:
        (result,) = client.score([image])
    expected = reference.run(image)
    assert result.error is None
    assert abs(result.probability - float(expected["PROBABILITY"][0])) <= 1e-5
    for i, member in enumerate(MURA_MEMBERS):
        assert abs(result.members[member] - float(expected["MEMBER_PROBABILITIES"][i])) <= 1e-5
    assert np.abs(result.heatmap.astype(int) - expected["HEATMAP"].astype(int)).max() <= 1
    assert result.probability == pytest.approx(np.mean(list(result.members.values())), abs=1e-6)


def test_response_names_model_versions_and_artifacts(triton, demo_repository):
    from export.manifest import load_manifest

    with MuraClient(triton.grpc_url) as client:
        (result,) = client.score([_image(200, 300, 1)], heatmaps=False)
    manifest = load_manifest(demo_repository)
    shas = {(r["model"], str(r["version"])): r["sha256"] for r in manifest["artifacts"]}
    assert set(result.versions) == {"pipeline", *MURA_MEMBERS}
    for member in MURA_MEMBERS:
        assert result.artifacts[member] == shas[(member, result.versions[member])]
    assert result.weights == "untrained-demo"
    assert result.heatmap is None


def test_served_preprocessing_is_the_training_preprocessing(triton):
    from training.mura_preprocess import preprocess_mura

    image = _image(333, 251, 7)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    inp = grpcclient.InferInput("IMAGE", list(image.shape), "UINT8")
    inp.set_data_from_numpy(image)
    served = client.infer(MURA_PREPROCESS_MODEL, [inp]).as_numpy("PIXELS")[0]
    np.testing.assert_array_equal(served, preprocess_mura(image))


def test_concurrent_requests_are_batched_by_the_backbones(triton):
    client = grpcclient.InferenceServerClient(triton.grpc_url)

    def counts() -> dict[str, tuple[int, int]]:
        stats = client.get_inference_statistics(as_json=True)["model_stats"]
        return {s["name"]: (int(s.get("inference_count", 0)), int(s.get("execution_count", 0)))
                for s in stats if s["name"] in MURA_MEMBERS}

    before = counts()
    images = [_image(256, 256, s) for s in range(16)]
    with MuraClient(triton.grpc_url, concurrency=8) as mura:
        results = mura.score(images, heatmaps=False)
    assert all(r.ok for r in results)
    after = counts()
    for member in MURA_MEMBERS:
        inferences = after[member][0] - before[member][0]
        executions = after[member][1] - before[member][1]
        assert inferences == 16
        assert executions < inferences, f"{member} did not batch: {executions} executions"


def _raw_infer(url: str, array: np.ndarray, datatype: str):
    client = grpcclient.InferenceServerClient(url)
    inp = grpcclient.InferInput("IMAGE", list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    return client.infer(MURA_ENSEMBLE_MODEL, [inp])


@pytest.mark.parametrize(
    ("array", "datatype", "expected"),
    [
        (np.zeros((64, 64), np.float32), "FP32", "FP32"),
        (np.zeros((2, 64, 64), np.uint8), "UINT8", "shape"),
        (np.zeros((0, 64), np.uint8), "UINT8", "empty"),
    ],
    ids=["wrong-dtype", "wrong-rank", "empty-image"],
)
def test_bad_requests_get_clear_errors_and_server_stays_ready(triton, array, datatype, expected):
    with pytest.raises(InferenceServerException) as info:
        _raw_infer(triton.grpc_url, array, datatype)
    assert expected.lower() in info.value.message().lower()
    assert triton.is_ready()
    assert _raw_infer(triton.grpc_url, _image(64, 64, 0), "UINT8").as_numpy("PROBABILITY") \
        is not None


def test_bad_file_is_one_error_and_the_rest_is_scored(triton, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with MuraClient(triton.grpc_url) as client:
        results = client.score([_image(100, 100, 1), bad, empty, tmp_path / "missing.png",
                                _image(120, 90, 2)], heatmaps=False)
    assert [r.ok for r in results] == [True, False, False, False, True]
    assert "notes.png" in results[1].error and "not a readable image" in results[1].error
    assert "empty" in results[2].error
    assert "missing.png" in results[3].error
    assert triton.is_ready()


def test_metrics_report_ensemble_inference_count_and_latency_quantiles(triton):
    with MuraClient(triton.grpc_url) as client:
        assert client.score([_image(128, 128, 3)])[0].ok
    text = urllib.request.urlopen(triton.metrics_url, timeout=10).read().decode()
    model = f'model="{MURA_ENSEMBLE_MODEL}"'
    counts = [line for line in text.splitlines()
              if line.startswith("nv_inference_count{") and model in line]
    assert counts and float(counts[0].rsplit(" ", 1)[1]) >= 1
    assert 'nv_inference_request_summary_us{' in text and 'quantile="0.99"' in text


def test_parallel_clients_get_consistent_results(triton):
    image = _image(300, 200, 11)
    with MuraClient(triton.grpc_url) as client:
        first = client.score([image], heatmaps=False)[0].probability
    with ThreadPoolExecutor(4) as pool:
        probs = list(pool.map(lambda _: MuraClient(triton.grpc_url).score(
            [image], heatmaps=False)[0].probability, range(4)))
    assert probs == pytest.approx([first] * 4, abs=1e-6)
