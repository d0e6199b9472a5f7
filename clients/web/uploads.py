"""One uploaded file -> the uint8 grayscale image the server expects, through the one reader.

The web app reads uploads exactly as `msk score`, `msk detect`, the gateway and training read
files (`msk.imaging.read_radiograph`: format from the content, the shared size limits checked
before decoding, one error type). This module only adds what a web page needs: the detected format
to show and the body part a DICOM header names (the gateway's routing rules read it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO

import numpy as np

from msk.imaging import check_file_size, read_radiograph


@dataclass(frozen=True)
class DecodedUpload:
    filename: str
    kind: str                       # "PNG" | "JPEG" | "TIFF" | "BMP" | "PPM" | "DICOM"
    image: np.ndarray               # uint8 [H, W]
    body_part: str | None = None    # from the DICOM header when it names a MURA body part


def decode(data: bytes | IO[bytes], filename: str, size: int | None = None) -> DecodedUpload:
    """Decode an upload (bytes or the spooled file); `size`, when the server knows it, is checked
    before anything is read. Raises `msk.imaging.RadiographError` naming `filename`."""
    if size is not None:
        check_file_size(size, filename)
    radiograph = read_radiograph(data, filename)
    body_part = None
    if radiograph.dataset is not None:
        from clients.routing import Router

        body_part = Router().route(radiograph.dataset).body_part
    return DecodedUpload(filename, radiograph.format, radiograph.pixels, body_part)
