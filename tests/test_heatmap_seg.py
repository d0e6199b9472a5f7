"""The heatmap Segmentation (issue 21, item 6): BINARY, one segment per stated activation level,
on a real radiograph; checked by dciodvfy (dicom3tools) and read back by highdicom and pydicom.

Why BINARY: OHIF does not display FRACTIONAL segmentations (OHIF/Viewers#1346), see
clients/heatmap_seg.py and docs/pacs.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from clients.findings import ModelProvenance
from clients.heatmap_seg import (
    HEATMAP_LEVELS,
    build_heatmap,
    level_label,
    level_masks,
    read_heatmap,
    read_heatmap_levels,
)
from clients.sr import (
    HEATMAP_SERIES_DESCRIPTION,
    SEGMENTATION_STORAGE,
    device_uid,
)
from tests.plugins.pacs import dciodvfy, real_radiograph

MODELS = [ModelProvenance("mura_ensemble", "1"),
          ModelProvenance("densenet169_a", "1", "a" * 64)]


def _heat() -> np.ndarray:
    """A 10 x 10 map with every band: 0, 0.6, 0.8, 0.95 and 1 (scaled to 0..255)."""
    heat = np.zeros((10, 10), np.uint8)
    heat[:, 2:4] = round(0.6 * 255)
    heat[:, 4:6] = round(0.8 * 255)
    heat[:, 6:8] = round(0.95 * 255)
    heat[:, 8:] = 255
    return heat


def test_binary_heatmap_round_trips_on_a_real_radiograph(tmp_path: Path) -> None:
    source = dcmread(real_radiograph())               # CR, 1760 x 1760, no frame of reference
    heat = _heat()
    seg = build_heatmap(source, heat, MODELS)
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    assert dciodvfy(path) == []                       # no error, no warning

    back = dcmread(path)                              # pydicom: what a viewer reads
    assert back.SOPClassUID == SEGMENTATION_STORAGE
    assert back.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in back.SegmentSequence] == [level_label(v)
                                                              for v in HEATMAP_LEVELS]
    assert all(s.RecommendedDisplayCIELabValue for s in back.SegmentSequence)
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.SeriesDescription == HEATMAP_SERIES_DESCRIPTION
    assert back.DeviceUID == device_uid(["a" * 64])
    assert (back.Rows, back.Columns) == (source.Rows, source.Columns)

    # highdicom: each segment's mask equals the resized heatmap thresholded at its stated level
    source_uid, masks = read_heatmap_levels(back)
    assert source_uid == source.SOPInstanceUID
    assert sorted(masks) == list(HEATMAP_LEVELS)
    from PIL import Image

    activation = np.asarray(Image.fromarray(heat).resize(
        (source.Columns, source.Rows), Image.BILINEAR), np.float32) / 255.0
    expected = level_masks(activation)
    for index, level in enumerate(HEATMAP_LEVELS):
        assert np.array_equal(masks[level], expected[..., index]), level
        assert masks[level].any()
    # nested bands: a pixel at >= 0.9 is also at >= 0.75 and >= 0.5
    assert not (masks[0.9] & ~masks[0.75]).any() and not (masks[0.75] & ~masks[0.5]).any()
    _, banded = read_heatmap(back)
    row = source.Rows // 2
    assert banded[row, 0] == 0.0
    assert banded[row, source.Columns - 1] == pytest.approx(max(HEATMAP_LEVELS))
    assert np.unique(banded).tolist() == pytest.approx([0.0, *HEATMAP_LEVELS])


def test_binary_heatmap_with_no_activation_is_valid(tmp_path: Path) -> None:
    """A flat (all-zero) map still gives every stated segment, empty, and a valid object."""
    source = dcmread(real_radiograph())
    path = tmp_path / "seg.dcm"
    build_heatmap(source, np.zeros((7, 7), np.uint8), MODELS).save_as(
        path, enforce_file_format=True)
    assert dciodvfy(path) == []
    _, masks = read_heatmap_levels(dcmread(path))
    assert sorted(masks) == list(HEATMAP_LEVELS)
    assert not any(m.any() for m in masks.values())
