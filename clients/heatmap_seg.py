"""The ensemble's class-activation heatmap as a DICOM Segmentation viewers display (issue 21, 6).

Why BINARY at stated levels and not FRACTIONAL: OHIF, the most used open web viewer, refuses
FRACTIONAL segmentations ("Fractional segmentations are not supported", OHIF/Viewers#1346, open
since 2020), and dcmqi, which 3D Slicer reads SEG with, has an open request for them
(QIICR/dcmqi#356); BINARY SEG is what every viewer with SEG support overlays (docs/pacs.md).
So the activation is thresholded at a few stated levels (`HEATMAP_LEVELS`), one segment per
level, nested (>= 0.9 inside >= 0.75 inside >= 0.5), each level in the segment's label and
description and each with its own display colour: a viewer shows contour-like bands of the
heatmap, and a reader can still tell which band a pixel is in.
The levels are activation levels of the CAM scaled to 0..1, not probabilities of abnormality.

The Segmentation sits on the source image's pixel grid and references it (no frame of reference:
a projection radiograph has none), in its own series (`HEATMAP_SERIES_NUMBER`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from clients.findings import ModelProvenance
from clients.sr import (
    ABNORMAL,
    HEATMAP_SERIES_DESCRIPTION,
    HEATMAP_SERIES_NUMBER,
    MANUFACTURER,
    MODEL_NAME,
    MORPHOLOGICALLY_ABNORMAL,
    _equipment,
    device_uid,
    software_versions,
)

HEATMAP_LEVELS: tuple[float, ...] = (0.5, 0.75, 0.9)
"""Activation levels (CAM scaled to 0..1) at which the heatmap is thresholded: one BINARY
segment each, in this order (segment 1 = the lowest level)."""

LEVEL_COLOURS: tuple[tuple[int, int, int], ...] = ((255, 255, 0), (255, 128, 0), (255, 0, 0))
"""Display colour (RGB) of each level's segment: yellow, orange, red."""

_LABEL = "Activation >= {level:.2f}"
_LABEL_PATTERN = re.compile(r"Activation >= ([0-9.]+)")


def level_label(level: float) -> str:
    """The segment label stating a level (read back by `read_heatmap_levels`)."""
    return _LABEL.format(level=level)


def _activation(source: Dataset, heatmap: np.ndarray) -> np.ndarray:
    """The uint8 heatmap (any size) resized to the source's grid, as activation 0..1."""
    from PIL import Image

    rows, columns = int(source.Rows), int(source.Columns)
    return np.asarray(Image.fromarray(np.asarray(heatmap, dtype=np.uint8)).resize(
        (columns, rows), Image.BILINEAR), dtype=np.float32) / 255.0


def level_masks(activation: np.ndarray, levels: Sequence[float] = HEATMAP_LEVELS) -> np.ndarray:
    """[rows, columns, len(levels)] booleans: activation >= each level."""
    return np.stack([np.asarray(activation) >= level for level in levels], axis=-1)


def build_heatmap(source: Dataset, heatmap: np.ndarray, models: Sequence[ModelProvenance], *,
                  series_uid: str | None = None, instance_number: int = 1,
                  now: dt.datetime | None = None) -> hd.seg.Segmentation:
    """BINARY Segmentation of the ensemble's class activation on `source`, one segment per
    `HEATMAP_LEVELS` level (module docstring).

    `heatmap` is the ensemble's uint8 map (any size, 0..255 = activation 0..1), resized here to
    the source's rows and columns so that a viewer overlays it pixel for pixel."""
    from msk.constants import MURA_ENSEMBLE_MODEL

    now = (now or dt.datetime.now(dt.UTC)).astimezone()
    masks = level_masks(_activation(source, heatmap))
    ensemble = next((m for m in models if m.name == MURA_ENSEMBLE_MODEL), None)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=MURA_ENSEMBLE_MODEL, family=codes.DCM.ArtificialIntelligence,
        version=(ensemble.version if ensemble else "") or "unknown")
    segments = [hd.seg.SegmentDescription(
        segment_number=index + 1, segment_label=level_label(level),
        segmented_property_category=MORPHOLOGICALLY_ABNORMAL, segmented_property_type=ABNORMAL,
        algorithm_type="AUTOMATIC", algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor.from_rgb(*LEVEL_COLOURS[index]))
        for index, level in enumerate(HEATMAP_LEVELS)]
    for segment, level in zip(segments, HEATMAP_LEVELS, strict=True):
        segment.SegmentDescription = (f"Class-activation heatmap of {MURA_ENSEMBLE_MODEL} at or "
                                      f"above {level:.2f} of its maximum scale (0..1); not a "
                                      "probability; research use only")
    uid = device_uid(m.sha256 for m in models)
    seg = hd.seg.Segmentation(
        source_images=[source], pixel_array=masks[np.newaxis], segmentation_type="BINARY",
        segment_descriptions=segments, series_instance_uid=series_uid or generate_uid(),
        series_number=HEATMAP_SERIES_NUMBER, sop_instance_uid=generate_uid(),
        instance_number=instance_number, manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME, software_versions=software_versions(models),
        device_serial_number=uid[-16:], content_label="CAM",
        content_description="Abnormality heatmap; research use only",
        series_description=HEATMAP_SERIES_DESCRIPTION, omit_empty_frames=False,
        contributing_equipment=[_equipment(models, now)])
    # Type 2C in General Image when there is no frame of reference (a radiograph): copy it
    seg.PatientOrientation = source.get("PatientOrientation", "") or ""
    seg.DeviceUID = uid
    return seg


def read_heatmap_levels(ds: Dataset) -> tuple[str, dict[float, np.ndarray]]:
    """(source SOP Instance UID, {stated level: boolean mask rows x columns}), via highdicom;
    the levels are read from the segment labels, not assumed."""
    seg = hd.seg.Segmentation.from_dataset(ds)
    ((_, _, source_uid),) = seg.get_source_image_uids()
    numbers = list(seg.segment_numbers)
    pixels = seg.get_pixels_by_source_instance([source_uid], segment_numbers=numbers)
    out = {}
    for index, number in enumerate(numbers):
        found = _LABEL_PATTERN.fullmatch(seg.get_segment_description(number).segment_label)
        if found is None:
            raise ValueError(f"segment {number} states no activation level")
        out[float(found.group(1))] = np.asarray(pixels[0, :, :, index], dtype=bool)
    return source_uid, out


def read_heatmap(ds: Dataset) -> tuple[str, np.ndarray]:
    """(source SOP Instance UID, float32 rows x columns: the highest stated level each pixel
    reaches, 0 where none)."""
    source_uid, masks = read_heatmap_levels(ds)
    banded = np.zeros(next(iter(masks.values())).shape, np.float32)
    for level in sorted(masks):
        banded[masks[level]] = level
    return source_uid, banded
