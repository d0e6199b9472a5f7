"""The one radiograph reader: every client, the gateway, the web app and training read images here.

    from msk.imaging import read_radiograph, load_grayscale, RadiographError
    rad = read_radiograph("elbow.dcm")     # path, bytes, open binary file or numpy array
    rad.pixels                             # uint8 [H, W]: what every pipeline sends to Triton

PNG/JPEG/TIFF/BMP/PGM (8/16-bit, float, gray/RGB/palette) and DICOM (recognised by content,
with or without preamble; Modality LUT, VOI LUT/window, MONOCHROME1, compressed transfer syntaxes
through the pylibjpeg plugins) become one array type, uint8 [H, W]; every failure is one error
type, `RadiographError` (`.source`, `.reason` from `REASONS`, `.detail`). The limits
(`MAX_IMAGE_BYTES`, `MAX_IMAGE_PIXELS`, `MIN_IMAGE_SIDE`) come from `msk.constants` and are
checked before decoding, and before inflating: compressed content is held to them by its declared
size, and a Deflated DICOM data set is inflated with a cap ("expands beyond the limit"). It
lives in `msk` (imports numpy, Pillow and pydicom, never torch) because both `clients` and
`training` use it and neither may import the other.
"""

from msk.imaging.dicom import (
    check_scorable,
    dataset_to_grayscale,
    display_grayscale,
    inflate,
    read_dataset,
)
from msk.imaging.errors import REASONS, RadiographError, format_bytes
from msk.imaging.reader import (
    Radiograph,
    check_file_size,
    check_pixels,
    describe,
    from_array,
    load_grayscale,
    read_dicom,
    read_radiograph,
    sniff,
    stat_input,
)
from msk.imaging.window import to_uint8

__all__ = [
    "REASONS", "Radiograph", "RadiographError", "check_file_size", "check_pixels",
    "check_scorable", "dataset_to_grayscale", "describe", "display_grayscale", "format_bytes",
    "from_array", "inflate", "load_grayscale", "read_dataset", "read_dicom", "read_radiograph",
    "sniff", "stat_input", "to_uint8",
]
