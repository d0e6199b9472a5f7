"""The MURA folder layout, read in one place for training and scoring.

`.../XR_<BODY PART>/patient<N>/study<K>_<positive|negative>/image<J>.png`: the folders carry the
body part, the patient, the study and its label. Why one reader: the training data loader and
the batch scorer parsed it separately, one case-sensitively and one not, so `xr_wrist/` was a
study to `msk score` and an error to `msk train`. Names are matched without regard to case
(copies of the dataset made on case-insensitive file systems exist); the body part is returned
lower case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath

_PART = re.compile(r"^XR_([A-Z]+)$", re.IGNORECASE)
_PATIENT = re.compile(r"^patient\d+$", re.IGNORECASE)
_STUDY = re.compile(r"^(study\d+)_(positive|negative)$", re.IGNORECASE)
LAYOUT = "XR_<PART>/patient<id>/study<n>_<positive|negative>/"


@dataclass(frozen=True)
class MuraStudyPath:
    """Where an image sits in the MURA layout."""

    body_part: str
    """lower case, as written in the folder (`wrist`, `elbow`, ...)"""
    patient: str
    """the patient folder, e.g. `patient11185`"""
    study: str
    """the study folder less its label, e.g. `study1`"""
    label: int
    """1 = positive (abnormal), 0 = negative"""
    study_folder: PurePath
    """the path up to and including the study folder, as given"""


def mura_study(path: str | PurePath) -> MuraStudyPath | None:
    """The MURA fields of `path` (the innermost match), or None when it does not follow the
    layout."""
    parts = PurePath(path).parts
    for i in range(len(parts) - 1, 1, -1):
        study = _STUDY.match(parts[i])
        part = _PART.match(parts[i - 2])
        if study and part and _PATIENT.match(parts[i - 1]):
            return MuraStudyPath(body_part=part.group(1).lower(), patient=parts[i - 1],
                                 study=study.group(1),
                                 label=int(study.group(2).lower() == "positive"),
                                 study_folder=PurePath(*parts[: i + 1]))
    return None
