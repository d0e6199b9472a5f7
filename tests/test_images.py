"""The one radiograph reader (`msk.imaging`): formats, bit depths, colour, and clear errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from msk.imaging import RadiographError, from_array, load_grayscale


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def test_8bit_gray_is_returned_unchanged():
    array = np.arange(1024).reshape(32, 32).astype(np.uint8)
    np.testing.assert_array_equal(load_grayscale(_png(array)), array)


def test_16bit_is_windowed_from_its_own_range():
    array = np.linspace(1000, 3000, 32 * 40, dtype=np.uint16).reshape(32, 40)
    out = load_grayscale(_png(array))
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    expected = np.round((array.astype(float) - 1000) * 255 / 2000).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_rgb_uses_luma_and_jpeg_decodes():
    rgb = np.zeros((40, 48, 3), np.uint8)
    rgb[..., 0] = 200
    assert load_grayscale(_png(rgb))[0, 0] == round(200 * 299 / 1000)
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 60), 128, np.uint8)).save(buf, format="JPEG")
    out = load_grayscale(buf.getvalue())
    assert out.shape == (40, 60) and abs(int(out.mean()) - 128) <= 2


@pytest.mark.parametrize(
    ("payload", "message"),
    [(b"", "empty"), (b"GIF89a-not-really", "not a readable image"),
     (b"%PDF-1.4 hello", "not a readable image")],
)
def test_bad_bytes_raise_clear_errors(payload, message):
    with pytest.raises(RadiographError, match=message):
        load_grayscale(payload, name="upload.png")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(RadiographError, match="nope.png"):
        load_grayscale(tmp_path / "nope.png")


def test_arrays_follow_the_file_rules():
    """In-memory arrays are windowed like files (one rule), and refused like them."""
    wide = np.linspace(0.0, 2.0, 32 * 32, dtype=np.float32).reshape(32, 32)
    out = from_array(wide)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    with pytest.raises(RadiographError, match="2-D"):
        from_array(np.zeros((40, 40, 2), np.uint8))
    with pytest.raises(RadiographError, match="at least 32") as info:
        from_array(np.zeros((0, 40), np.uint8))
    assert info.value.reason == "image_too_small"


def test_dicom_is_recognised_by_content_and_uses_the_display_pipeline(tmp_path):
    from msk.samples import write_dicom_sample

    pixels = np.tile(np.arange(0, 1024, 16, dtype=np.uint16), (32, 1))
    path = write_dicom_sample(tmp_path / "no_suffix", pixels, photometric="MONOCHROME1")
    out = load_grayscale(path)
    assert out.shape == pixels.shape
    # MONOCHROME1: high values are dark, so the row must now decrease.
    assert out[0, 0] == 255 and out[0, -1] == 0


def test_bad_bytes_stay_a_clear_error_when_ultralytics_patched_pil():
    """Ultralytics replaces PIL.Image.open with one that imports an optional HEIF plugin."""
    from training.wrist_train import ultralytics_offline

    ultralytics_offline()
    import ultralytics.utils.patches  # noqa: F401 - applies the patch

    with pytest.raises(RadiographError, match="not a readable image"):
        load_grayscale(b"GIF89a-not-really", name="upload.gif")
