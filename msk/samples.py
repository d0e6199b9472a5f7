"""Synthetic radiograph-like sample images for the demo and the tests (no patient data, no
downloads): a bright bone-like bar on soft tissue with noise, in the file formats clients meet —
8-bit and 16-bit grayscale PNG, RGB PNG and JPEG, at different sizes and aspect ratios.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def radiograph(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A float image in [0, 1]: soft-tissue ellipse, a bone shaft with cortex, and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = height / 2, width / 2
    tissue = np.exp(-(((yy - cy) / (0.45 * height)) ** 2 + ((xx - cx) / (0.3 * width)) ** 2))
    angle = rng.uniform(-0.3, 0.3)
    dist = np.abs((xx - cx) * np.cos(angle) - (yy - cy) * np.sin(angle))
    half = 0.07 * width
    bone = np.clip(1 - dist / half, 0, 1) ** 0.3 * (dist < half)
    image = 0.15 + 0.35 * tissue + 0.45 * bone + rng.normal(0, 0.02, (height, width))
    return np.clip(image, 0, 1)


def write_samples(folder: Path) -> list[Path]:
    """Write the demo's sample set and return the paths (sorted)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    specs = [("elbow_8bit.png", 512, 420, "L"), ("wrist_16bit.png", 640, 480, "I;16"),
             ("hand_rgb.png", 300, 360, "RGB"), ("forearm.jpg", 700, 320, "JPEG")]
    for seed, (name, h, w, mode) in enumerate(specs):
        img = radiograph(h, w, seed)
        path = folder / name
        if mode == "I;16":
            Image.fromarray((img * 4095).astype(np.uint16)).save(path)
        elif mode == "RGB":
            Image.fromarray((img * 255).astype(np.uint8)).convert("RGB").save(path)
        elif mode == "JPEG":
            Image.fromarray((img * 255).astype(np.uint8)).save(path, quality=92)
        else:
            Image.fromarray((img * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return sorted(paths)


def write_dicom_sample(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2") -> Path:
    """Write a minimal CR DICOM file with synthetic identifiers (no real patient data)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    cr_image_storage = "1.2.840.10008.5.1.4.1.1.1"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = cr_image_storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = cr_image_storage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "CR", "Synthetic^Sample", "SYNTH-0"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
