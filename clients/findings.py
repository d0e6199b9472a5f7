"""What a scored study IS, apart from how it is written: the images' findings, the models that
produced them and the study's call.

Why a module of its own: these types used to live in the DICOM writer (`clients.sr`), so anything
that scored a study had to import the SR builder to say what it found, and `StudyResult` carried
a second study rule (`abnormal` = probability >= its own `threshold`) that agreed with
`clients.study` only because the gateway patched the threshold afterwards. Now a `StudyResult`
is made by `StudyResult.of`, which calls the one study rule (`clients.study.study_call`) once and
keeps its `StudyCall`; every study-level number (probability, operating point, call) is read
from that call, by the SR and the gateway's audit alike.

`ModelProvenance` holds only what Triton returned: a model's version and, for a model served
from a file, that file's SHA-256 (64 hex digits). There is no placeholder ("latest", "", "?"):
the constructor refuses one, so a missing value fails where it is found, not in a PACS.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from clients.study import ScoredImage, StudyCall, member_means, study_call
from clients.wrist import Detection
from msk.constants import MURA_DEFAULT_THRESHOLD

Structure = Detection
"""A detected wrist structure in source-image pixel coordinates (the wrist client's type)."""

PLACEHOLDER_VERSIONS = frozenset({"", "?", "latest", "unknown", "None"})
"""Spellings of "no version" that clients and old code used; never a served version."""
SHA256 = re.compile(r"[0-9a-f]{64}")


class ProvenanceError(ValueError):
    """A model's version or SHA-256 is missing or is not a real value."""


@dataclass(frozen=True)
class ModelProvenance:
    """One served model as Triton reported it: name, version and the SHA-256 of its artifact.

    `sha256` is None only where the server has no digest to give: a Triton ensemble (a
    composition of other models, no file of its own) or a model whose provenance the export
    did not record. It is never an empty or made-up string.
    """

    name: str
    version: str
    sha256: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ProvenanceError("a model without a name")
        if str(self.version).strip() in PLACEHOLDER_VERSIONS:
            raise ProvenanceError(f"{self.name}: no version reported (got {self.version!r})")
        if self.sha256 is not None and not SHA256.fullmatch(self.sha256):
            raise ProvenanceError(f"{self.name}: {self.sha256!r} is not a SHA-256")


@dataclass
class ImageFinding:
    """One source instance of the study and what the models said about it."""

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    body_part: str | None
    probability: float | None = None
    members: dict[str, float] = field(default_factory=dict)
    abnormal: bool | None = None
    error: str | None = None
    structures: list[Structure] = field(default_factory=list)
    threshold: float | None = None
    """The body part's operating point the call was made against (None: the study's)."""
    ood_score: float | None = None
    ood_threshold: float | None = None
    in_distribution: bool | None = None
    member_spread: float | None = None
    refused: bool = False
    """Refused by the OOD gate: not assessed (no probability, no call)."""

    def as_scored_image(self) -> ScoredImage:
        """What the study rule needs of this image."""
        return ScoredImage(self.probability, self.body_part, self.threshold,
                           in_distribution=self.in_distribution, refused=self.refused)


@dataclass(frozen=True)
class NotScored:
    """A received instance that was not scored (not an image, not routed, unreadable file)."""

    sop_instance_uid: str
    reason: str


@dataclass(frozen=True)
class StudyResult:
    """Everything the SR says about one study; build it with `StudyResult.of`."""

    images: tuple[ImageFinding, ...]
    models: tuple[ModelProvenance, ...]
    call: StudyCall
    """The one study rule's result (`clients.study.study_call`), computed once."""
    default_threshold: float
    """The model's default operating point (provenance): used for mixed body parts."""
    skipped: tuple[NotScored, ...] = ()

    @classmethod
    def of(cls, images: Iterable[ImageFinding], models: Iterable[ModelProvenance],
           default_threshold: float = MURA_DEFAULT_THRESHOLD,
           skipped: Iterable[NotScored] = ()) -> StudyResult:
        """The result of `images`, called by the one study rule."""
        found = tuple(images)
        call = study_call((i.as_scored_image() for i in found), default_threshold)
        return cls(found, tuple(models), call, float(default_threshold), tuple(skipped))

    @property
    def scored(self) -> list[ImageFinding]:
        return [i for i in self.images if i.probability is not None]

    @property
    def probability(self) -> float | None:
        return self.call.probability

    @property
    def abnormal(self) -> bool | None:
        return self.call.abnormal

    @property
    def threshold(self) -> float:
        """The operating point the study was called against; with no call (every image
        refused) the model's default one, which is only reported."""
        return self.default_threshold if self.call.threshold is None else self.call.threshold

    @property
    def members(self) -> dict[str, float]:
        """Per member: mean over scored images (`clients.study.member_means`)."""
        return member_means(image.members for image in self.scored)

    def model(self, name: str) -> ModelProvenance:
        """The provenance of `name`; a result that reports a model's output without it is a
        programming or deployment error, never filled in."""
        for m in self.models:
            if m.name == name:
                return m
        raise ProvenanceError(f"no provenance for {name} (models: "
                              f"{', '.join(m.name for m in self.models) or 'none'})")


def digests(models: Sequence[ModelProvenance]) -> list[str]:
    """The SHA-256s the server reported (ensembles have none)."""
    return [m.sha256 for m in models if m.sha256]
