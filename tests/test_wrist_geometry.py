"""The wrist preprocessing geometry: exact box transforms, 16-bit windowing, Ultralytics parity."""

from __future__ import annotations

import numpy as np
import pytest

from msk.constants import WRIST_HEIGHT, WRIST_WIDTH
from msk.imaging import to_uint8
from msk.wrist_geometry import (
    StudyLetterbox,
    crop_top_rows,
    decode_detections,
    detector_letterbox,
    export_size,
    study_letterbox,
)
from training.wrist_preprocess import letterbox_canvas, preprocess_wrist

SIZES = [(2000, 1500), (1200, 300), (701, 2400), (3000, 3000), (15, 9), (1400, 760)]


def test_the_crop_is_the_studys_top_three_sevenths() -> None:
    """The one crop rule (msk.constants' ratio, integer arithmetic) is what the letterbox uses."""
    for h in (2, 6, 7, 8, 700, 701, 2048, 4999):
        assert crop_top_rows(h) == (3 * h) // 7
        assert study_letterbox(h, 500).crop_top == crop_top_rows(h)


@pytest.mark.parametrize("size", SIZES)
def test_boxes_round_trip_within_half_pixel(size: tuple[int, int]) -> None:
    h, w = size
    geo = study_letterbox(h, w)
    assert geo.new_h == WRIST_HEIGHT or geo.new_w == WRIST_WIDTH
    assert geo.new_h <= WRIST_HEIGHT and geo.new_w <= WRIST_WIDTH
    rng = np.random.default_rng(h * w)
    x = rng.uniform(0, w, (50, 2))
    y = rng.uniform(geo.crop_top, h, (50, 2))
    boxes = np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], 1)
    back = geo.inverse(geo.forward(boxes))
    assert np.abs(back - boxes).max() <= 0.5
    assert StudyLetterbox.from_vector(geo.as_vector()) == geo


def test_forward_matches_the_pixels() -> None:
    """A bright rectangle drawn in the original lands where `forward` says (to a pixel)."""
    h, w = 1900, 1300
    img = np.zeros((h, w), np.uint8)
    box = np.array([[300, 1200, 700, 1500]], float)
    img[1200:1500, 300:700] = 255
    canvas, geo = letterbox_canvas(img)
    ys, xs = np.nonzero(canvas > 127)
    found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)
    assert np.abs(found - geo.forward(box)[0]).max() <= 1.0


def test_sixteen_bit_is_windowed_to_the_same_image() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (400, 300)).astype(np.uint8)
    base[0, 0], base[0, 1] = 0, 255
    wide = base.astype(np.uint16) * 16 + 1000           # 12 significant bits with an offset
    assert np.array_equal(to_uint8(wide), base)
    a, _ = preprocess_wrist(base)
    b, _ = preprocess_wrist(wide)
    assert a.dtype == np.float32 and a.shape == (WRIST_HEIGHT, WRIST_WIDTH)
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert np.array_equal(a, b)
    assert not to_uint8(np.full((5, 5), 7, np.uint16)).any()
    with pytest.raises(ValueError, match="2-D"):
        to_uint8(np.zeros((2, 3, 5, 1), np.uint8))


def test_too_small_image_is_rejected_with_its_size() -> None:
    with pytest.raises(ValueError, match="1x5"):
        study_letterbox(1, 5)


def test_detector_letterbox_matches_ultralytics() -> None:
    from training.wrist_train import ultralytics_offline

    ultralytics_offline()
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils.ops import scale_boxes

    for imgsz in (160, 320, 1400):
        in_h, in_w = export_size(imgsz)
        assert in_h % 32 == 0 and in_w % 32 == 0
        box = detector_letterbox(in_h, in_w)
        canvas = np.zeros((WRIST_HEIGHT, WRIST_WIDTH, 3), np.uint8)
        out = LetterBox((in_h, in_w), auto=False)(image=canvas)
        assert out.shape[:2] == (in_h, in_w)
        top, _, left, _ = box.pads
        assert (out[top, left] == 0).all() and (out[0, 0] == 114).all() or left == 0
        boxes = np.array([[10.0, 20.0, 100.0, 300.0], [0.0, 0.0, 50.0, 60.0]])
        import torch

        ref = scale_boxes((in_h, in_w), torch.tensor(boxes), (WRIST_HEIGHT, WRIST_WIDTH))
        assert np.allclose(box.inverse(boxes), ref.numpy(), atol=1e-4)
    assert export_size(1400) == (1408, 768)


def test_decode_detections_is_class_aware_nms() -> None:
    raw = np.zeros((4 + 3, 4), np.float32)
    raw[:4, 0] = [50, 50, 20, 20]
    raw[4, 0] = 0.9
    raw[:4, 1] = [51, 51, 20, 20]   # same class, overlapping -> suppressed
    raw[4, 1] = 0.8
    raw[:4, 2] = [51, 51, 20, 20]   # other class, overlapping -> kept
    raw[6, 2] = 0.7
    raw[:4, 3] = [10, 10, 4, 4]     # below the score threshold
    raw[5, 3] = 0.1
    boxes, scores, classes = decode_detections(raw)
    assert classes.tolist() == [0, 2]
    assert np.allclose(scores, [0.9, 0.7])
    assert np.allclose(boxes[0], [40, 40, 60, 60])
