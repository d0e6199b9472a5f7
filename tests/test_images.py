"""Loading client images: formats, bit depths, colour, and clear errors (issue #2)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from clients.images import ImageLoadError, load_grayscale, validate_image


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def test_8bit_gray_is_returned_unchanged():
    array = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(load_grayscale(_png(array)), array)


def test_16bit_is_windowed_from_its_own_range():
    array = np.linspace(1000, 3000, 64, dtype=np.uint16).reshape(8, 8)
    out = load_grayscale(_png(array))
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    expected = np.round((array.astype(float) - 1000) * 255 / 2000).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_rgb_uses_luma_and_jpeg_decodes():
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0] = 200
    assert load_grayscale(_png(rgb))[0, 0] == round(200 * 299 / 1000)
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 30), 128, np.uint8)).save(buf, format="JPEG")
    out = load_grayscale(buf.getvalue())
    assert out.shape == (20, 30) and abs(int(out.mean()) - 128) <= 2


@pytest.mark.parametrize(
    ("payload", "message"),
    [(b"", "empty"), (b"GIF89a-not-really", "not a readable image"),
     (b"%PDF-1.4 hello", "not a readable image")],
)
def test_bad_bytes_raise_clear_errors(payload, message):
    with pytest.raises(ImageLoadError, match=message):
        load_grayscale(payload, name="upload.png")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ImageLoadError, match="nope.png"):
        load_grayscale(tmp_path / "nope.png")


def test_validate_image_rejects_wrong_arrays():
    with pytest.raises(ImageLoadError, match="uint8"):
        validate_image(np.zeros((4, 4), np.float32))
    with pytest.raises(ImageLoadError, match="2-D"):
        validate_image(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ImageLoadError, match="no pixels"):
        validate_image(np.zeros((0, 4), np.uint8))


def test_dicom_is_recognised_by_content_and_uses_the_display_pipeline(tmp_path):
    from msk.samples import write_dicom_sample

    pixels = np.tile(np.arange(0, 1024, 16, dtype=np.uint16), (8, 1))
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

    with pytest.raises(ImageLoadError, match="not a readable image"):
        load_grayscale(b"GIF89a-not-really", name="upload.gif")
