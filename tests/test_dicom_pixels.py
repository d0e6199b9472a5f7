"""DICOM -> uint8 grayscale: each display-pipeline step against hand-computed pixels.

Files are built with pydicom (and compressed with pydicom's encoders or dcmtk's, as a modality's
software would); expected values are worked out from PS3.3 C.11 by hand in the comments.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from clients.dicom_pixels import DicomPixelError, dataset_to_grayscale, load_dicom_grayscale

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def make_ds(pixels: np.ndarray, bits_stored: int, signed: bool = False,
            photometric: str = "MONOCHROME2", **attrs) -> Dataset:
    """A minimal single-frame CR instance holding `pixels` uncompressed."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if pixels.dtype.itemsize == 1 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = pixels.tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def test_8bit_without_voi_is_min_max_scaled() -> None:
    pixels = np.array([[10, 20], [30, 60]], np.uint8)
    # (x - 10) * 255 / 50: 0, 51, 102, 255
    out = dataset_to_grayscale(make_ds(pixels, 8))
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 51], [102, 255]]


def test_rescale_then_linear_window() -> None:
    # 12-bit stored values; modality values = 2 * x - 1000; window C=1048, W=1024 (LINEAR):
    # below C - 0.5 - (W-1)/2 = 536 -> 0, above C - 0.5 + (W-1)/2 = 1559 -> 255,
    # else ((v - 1047.5) / 1023 + 0.5) * 255.
    stored = np.array([[700, 768], [1024, 1400]], np.uint16)
    # modality: 400, 536, 1048, 1800 -> 0, 0, round((0.5/1023 + 0.5) * 255) = 128, 255
    ds = make_ds(stored, 12, RescaleSlope="2", RescaleIntercept="-1000",
                 WindowCenter="1048", WindowWidth="1024")
    assert dataset_to_grayscale(ds).tolist() == [[0, 0], [128, 255]]


def test_linear_window_interior_values() -> None:
    stored = np.array([[600, 800, 1000, 1200]], np.uint16)
    ds = make_ds(stored, 12, WindowCenter="900", WindowWidth="801")
    # ((x - 899.5) / 800 + 0.5) * 255 -> 600: 32.03, 800: 95.78, 1000: 159.53, 1200: 223.28
    assert dataset_to_grayscale(ds).tolist() == [[32, 96, 160, 223]]


def test_multivalued_window_uses_first_and_sigmoid_function() -> None:
    stored = np.array([[400, 500, 600]], np.uint16)
    ds = make_ds(stored, 12, WindowCenter=["500", "2000"], WindowWidth=["400", "10"],
                 VOILUTFunction="SIGMOID")
    # 255 / (1 + exp(-4 (x - 500) / 400)): 400 -> 68.5, 500 -> 127.5, 600 -> 186.5
    assert dataset_to_grayscale(ds).tolist() == [[69, 128, 186]]


def test_monochrome1_is_inverted_after_voi() -> None:
    stored = np.array([[700, 768], [1024, 1400]], np.uint16)
    attrs = dict(RescaleSlope="2", RescaleIntercept="-1000", WindowCenter="1048",
                 WindowWidth="1024")
    mono2 = dataset_to_grayscale(make_ds(stored, 12, **attrs))
    mono1 = dataset_to_grayscale(make_ds(stored, 12, photometric="MONOCHROME1", **attrs))
    assert mono1.tolist() == [[255, 255], [127, 0]]
    assert (mono1.astype(int) + mono2.astype(int) == 255).all()


def test_voi_lut_sequence_is_preferred_and_scaled_from_its_depth() -> None:
    stored = np.array([[50, 100, 101], [300, 355, 4000]], np.uint16)
    lut = Dataset()
    lut.LUTDescriptor = [256, 100, 12]   # 256 entries, first mapped value 100, 12-bit output
    lut.LUTData = [i * 16 for i in range(256)]   # 0 .. 4080
    ds = make_ds(stored, 12, WindowCenter="0", WindowWidth="1")   # the window must be ignored
    ds.VOILUTSequence = [lut]
    # index = clip(x - 100, 0, 255); value * 255 / 4095:
    # 50 -> 0, 100 -> 0, 101 -> 16 -> 1.0, 300 -> 3200 -> 199.3, 355 and 4000 -> 4080 -> 254.1
    assert dataset_to_grayscale(ds).tolist() == [[0, 0, 1], [199, 254, 254]]


def test_bits_above_bits_stored_are_masked() -> None:
    # 10 bits stored, garbage in bit 14 (old overlay planes lived there)
    stored = np.array([[0, 1023], [512 | 0x4000, 256 | 0x4000]], np.uint16)
    ds = make_ds(stored, 10, WindowCenter="512", WindowWidth="1024", VOILUTFunction="LINEAR_EXACT")
    # LINEAR_EXACT: ((x - 512) / 1024 + 0.5) * 255:
    # 0 -> 0, 1023 -> 254.75, 512 -> 127.5, 256 -> 63.75
    assert dataset_to_grayscale(ds).tolist() == [[0, 255], [128, 64]]


def test_signed_12_bit_with_intercept() -> None:
    values = np.array([[-2048, -1], [0, 2047]], np.int16)
    ds = make_ds(values, 12, signed=True, RescaleIntercept="1024", RescaleSlope="1")
    # modality -1024, 1023, 1024, 3071; min-max over them: (v + 1024) * 255 / 4095
    assert dataset_to_grayscale(ds).tolist() == [[0, 127], [128, 255]]


def test_16_bits_stored_full_range() -> None:
    values = np.array([[0, 65535], [32768, 16384]], np.uint16)
    out = dataset_to_grayscale(make_ds(values, 16))
    assert out.tolist() == [[0, 255], [128, 64]]


@pytest.mark.parametrize("bits", [1, 4, 7])
def test_bits_stored_outside_8_to_16_is_refused(bits: int) -> None:
    ds = make_ds(np.zeros((2, 2), np.uint8), 8)
    ds.BitsStored, ds.HighBit = bits, bits - 1
    with pytest.raises(DicomPixelError, match=f"BitsStored {bits} is outside"):
        dataset_to_grayscale(ds, source="test.dcm")


def test_multi_frame_is_refused_with_reason() -> None:
    frames = np.zeros((3, 4, 4), np.uint8)
    ds = make_ds(frames[0], 8)
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    with pytest.raises(DicomPixelError, match=r"frames\.dcm: multi-frame object \(3 frames\)"):
        dataset_to_grayscale(ds, source="frames.dcm")


def test_missing_pixel_data_is_refused_with_reason() -> None:
    ds = Dataset()
    ds.SOPClassUID = BASIC_TEXT_SR
    with pytest.raises(DicomPixelError, match=r"report\.dcm: no pixel data \(SOP class Basic "
                                               r"Text SR Storage is not an image\)"):
        dataset_to_grayscale(ds, source="report.dcm")


def test_palette_color_is_refused() -> None:
    ds = make_ds(np.zeros((2, 2), np.uint8), 8, photometric="PALETTE COLOR")
    with pytest.raises(DicomPixelError, match="PALETTE COLOR"):
        dataset_to_grayscale(ds)


def test_rgb_secondary_capture_becomes_luma() -> None:
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [100, 100, 100]]], np.uint8)
    ds = make_ds(rgb[..., 0], 8, photometric="RGB")
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PixelData = rgb.tobytes()
    # 0.299 * 255 = 76.2, 0.587 * 255 = 149.7, 0.114 * 255 = 29.1, 100
    assert dataset_to_grayscale(ds).tolist() == [[76, 150], [29, 100]]


def test_unreadable_file_is_refused_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.dcm"
    bad.write_bytes(b"not dicom at all")
    with pytest.raises(DicomPixelError, match="garbage.dcm"):
        load_dicom_grayscale(bad)


# ---------------------------------------------------------------------------------------------
# Compressed transfer syntaxes: lossless ones decode to exactly the uncompressed result.
# ---------------------------------------------------------------------------------------------
def _radiograph(bits: int = 12, seed: int = 0) -> np.ndarray:
    """A smooth synthetic 12-bit 'radiograph' (compresses like one; random noise would not)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:96, 0:80]
    img = 1500 + 900 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + rng.normal(0, 20, (96, 80))
    return np.clip(img, 0, 2 ** bits - 1).astype(np.uint16)


def _write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture()
def uncompressed(tmp_path: Path) -> tuple[Path, np.ndarray]:
    ds = make_ds(_radiograph(), 12, photometric="MONOCHROME1", WindowCenter="1500",
                 WindowWidth="2000", RescaleSlope="1", RescaleIntercept="0")
    path = _write(ds, tmp_path / "plain.dcm")
    return path, load_dicom_grayscale(path)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_pydicom_encoded_lossless_syntaxes(uncompressed, tmp_path: Path, syntax) -> None:
    path, expected = uncompressed
    ds = dcmread(path)
    ds.compress(syntax)
    out = _write(ds, tmp_path / "c.dcm")
    assert dcmread(out).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(load_dicom_grayscale(out), expected)


def _dcmtk(tool: str, args: list[str], src: Path, dst: Path) -> Path:
    exe = shutil.which(tool)
    assert exe, f"{tool} (Debian dcmtk) is required; run scripts/install_test_packages.sh"
    subprocess.run([exe, *args, str(src), str(dst)], check=True, capture_output=True,
                   timeout=60)
    return dst


@pytest.mark.parametrize("tool,args,uid", [
    ("dcmcjpeg", ["+e1"], "1.2.840.10008.1.2.4.70"),     # JPEG lossless, first-order prediction
    ("dcmcjpeg", ["+el"], "1.2.840.10008.1.2.4.57"),     # JPEG lossless, process 14
    ("dcmcjpls", ["+el"], "1.2.840.10008.1.2.4.80"),     # JPEG-LS lossless
    ("dcmcrle", [], "1.2.840.10008.1.2.5"),              # RLE by dcmtk
])
def test_dcmtk_encoded_lossless_syntaxes(uncompressed, tmp_path: Path, tool, args, uid) -> None:
    path, expected = uncompressed
    out = _dcmtk(tool, args, path, tmp_path / "c.dcm")
    assert dcmread(out).file_meta.TransferSyntaxUID == uid
    np.testing.assert_array_equal(load_dicom_grayscale(out), expected)


def test_jpeg_baseline_8bit_is_close(tmp_path: Path) -> None:
    pixels = (_radiograph() >> 4).astype(np.uint8)
    path = _write(make_ds(pixels, 8), tmp_path / "p8.dcm")
    expected = load_dicom_grayscale(path)
    out = _dcmtk("dcmcjpeg", ["+eb", "+q", "95"], path, tmp_path / "jb.dcm")
    assert dcmread(out).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    got = load_dicom_grayscale(out).astype(int)
    assert got.shape == expected.shape
    assert np.abs(got - expected.astype(int)).mean() < 3.0   # lossy (q95 on a noisy image)
    # dcmtk's own decoder (IJG) must agree with ours up to IDCT rounding (stored values)
    reference = dcmread(_dcmtk("dcmdjpeg", [], out, tmp_path / "dj.dcm")).pixel_array
    ours = dcmread(out).pixel_array
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 1


# ---------------------------------------------------------------------------------------------
# Real radiographs (PyPI pydicom-data): the same image in several transfer syntaxes
# ---------------------------------------------------------------------------------------------
def test_real_cr_monochrome1_across_syntaxes() -> None:
    from tests.plugins.pacs import pydicom_data_file

    reference = pydicom_data_file("RG3_UNCR.dcm")         # CR extremity, 10-bit, MONOCHROME1
    ref_ds = dcmread(reference)
    assert ref_ds.PhotometricInterpretation == "MONOCHROME1" and ref_ds.BitsStored == 10
    expected = load_dicom_grayscale(reference)
    assert expected.shape == (ref_ds.Rows, ref_ds.Columns)
    assert len(np.unique(expected)) > 100
    # MONOCHROME1 really was inverted: the same file labelled MONOCHROME2 is the complement
    ref_ds.PhotometricInterpretation = "MONOCHROME2"
    assert (dataset_to_grayscale(ref_ds).astype(int) + expected.astype(int) == 255).all()
    # the same radiograph stored as JPEG 2000 lossless decodes to exactly the same image
    lossless = pydicom_data_file("RG3_J2KR.dcm")
    assert dcmread(lossless).file_meta.TransferSyntaxUID == JPEG2000Lossless
    np.testing.assert_array_equal(load_dicom_grayscale(lossless), expected)
    # ... and the lossy JPEG 2000 one closely
    lossy = load_dicom_grayscale(pydicom_data_file("RG3_J2KI.dcm")).astype(int)
    assert np.abs(lossy - expected.astype(int)).mean() < 2.0
