"""The ONNX preprocessing model against the OpenCV reference (CLAHE parity, geometry, input).

Training data are written through the reference, the server runs the graph: this is what keeps
them the same pixels. On the AVX2 host (2026-12-03) they were identical on every pixel; the
tolerance (±1 grey level on 0.1 % of pixels, 3 at most) is for float32 rounding in the CLAHE
blend where ONNX Runtime picks other kernels (FMA on AVX-512), and is what docs/wrist.md says."""

from __future__ import annotations

import numpy as np
import pytest

from msk.graphs.wrist_preprocess import build_preprocess_graph
from msk.imaging import to_uint8
from msk.wrist_geometry import detector_letterbox, study_letterbox
from training.wrist_preprocess import detector_input, preprocess_wrist_uint8
from training.wrist_synthetic import make_wrist


def _real_image() -> np.ndarray:
    """A real 16-bit medical image bundled with pydicom (never downloaded)."""
    import pydicom
    from pydicom.data import get_testdata_file

    return pydicom.dcmread(get_testdata_file("MR_small.dcm", download=False)).pixel_array


def _images() -> list[tuple[str, np.ndarray]]:
    out = [(f"synthetic{i}", make_wrist(3, i).image) for i in range(3)]
    out.append(("synthetic16", make_wrist(4, 0, sixteen_bit=True).image))
    out.append(("width_limited", make_wrist(5, 0, size=(700, 1600)).image))
    rng = np.random.default_rng(0)
    out.append(("noise", rng.integers(0, 256, (999, 777)).astype(np.uint8)))
    out.append(("pydicom_mr", _real_image()))
    return out


@pytest.fixture(scope="module")
def session():
    import onnxruntime as ort

    model = build_preprocess_graph(320, 192, debug=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name,image", _images(), ids=lambda v: v if isinstance(v, str) else "")
def test_graph_matches_opencv(session, name: str, image: np.ndarray) -> None:
    img8 = to_uint8(image)
    pixels, geometry, canvas = session.run(None, {"IMAGE": img8})
    ref, geo = preprocess_wrist_uint8(image)
    assert geometry.tolist() == study_letterbox(*img8.shape).as_vector().tolist() == \
        geo.as_vector().tolist()
    diff = np.abs(canvas.astype(int) - ref.astype(int))
    assert (diff <= 1).mean() >= 0.999, f"{name}: CLAHE parity {(diff <= 1).mean():.5f}"
    assert diff.max() <= 3, name
    expected = detector_input(ref, detector_letterbox(320, 192))
    assert pixels.shape == (1, 3, 320, 192)
    exact = np.abs(pixels[0] - expected) <= 1e-6
    assert exact.mean() >= 0.999, f"{name}: detector input parity {exact.mean():.5f}"


def test_serving_size_graph_runs_at_1408x768() -> None:
    import onnxruntime as ort

    model = build_preprocess_graph(1408, 768)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    img = make_wrist(9, 0).image
    pixels, geometry = sess.run(None, {"IMAGE": img})
    assert pixels.shape == (1, 3, 1408, 768)
    assert np.allclose(pixels[0, :, :, :2], 114 / 255)     # Ultralytics' grey side padding
    ref, _ = preprocess_wrist_uint8(img)
    exact = np.abs(pixels[0] - detector_input(ref, detector_letterbox(1408, 768))) <= 1e-6
    assert exact.mean() >= 0.999


def _edge_images() -> list[tuple[str, np.ndarray]]:
    """Inputs that stress the histogram: one grey level everywhere (every tile clipped to the
    limit, all excess redistributed), both extremes of the range, hard steps between tiles, a
    tiny image blown up to the canvas and a canvas-sized one (no letterbox padding)."""
    rng = np.random.default_rng(7)
    steps = np.repeat(np.repeat(rng.integers(0, 256, (9, 5)), 160, axis=0), 170, axis=1)
    return [("black", np.zeros((600, 400), np.uint8)),
            ("white", np.full((500, 900), 255, np.uint8)),
            ("extremes", (rng.random((800, 640)) < 0.5).astype(np.uint8) * 255),
            ("steps", steps.astype(np.uint8)),
            ("tiny", rng.integers(0, 256, (9, 7)).astype(np.uint8)),
            ("canvas_sized", rng.integers(0, 256, (1400 * 7 // 4, 760)).astype(np.uint8))]


@pytest.fixture(scope="module")
def one_hot_session():
    """The graph as served before (one-hot/MatMul histograms, four LUT gathers): the reference
    the served scatter construction must reproduce exactly."""
    import onnxruntime as ort

    model = build_preprocess_graph(320, 192, debug=True, clahe="one_hot")
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name,image", _images() + _edge_images(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_scatter_construction_equals_the_one_hot_one(session, one_hot_session, name: str,
                                                           image: np.ndarray) -> None:
    """Same canvas, detector input and geometry, bit for bit, as the graph served before."""
    img8 = to_uint8(image)
    new = session.run(None, {"IMAGE": img8})
    old = one_hot_session.run(None, {"IMAGE": img8})
    for got, want in zip(new, old, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert np.array_equal(got, want), f"{name}: {np.count_nonzero(got != want)} differ"


def test_served_graph_histograms_by_scatter_add() -> None:
    """The served graph builds its histograms with one scatter-add, not the one-hot MatMul."""
    ops = [n for n in build_preprocess_graph(1408, 768).graph.node]
    scatters = [n for n in ops if n.op_type == "ScatterElements"]
    assert len(scatters) == 1
    assert {a.name: a for a in scatters[0].attribute}["reduction"].s == b"add"
    assert not [n for n in ops if n.op_type == "MatMul"]
