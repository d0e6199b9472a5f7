"""The one study rule: how a study's images become the study's probability and call.

Why one function: `msk score`, the web app and the gateway each had their own copy and they
disagreed (first image's threshold with 0.0 turned into 0.5; a shared threshold else 0.5; the
mean of the images' thresholds). Now all three call `study_call`.

The rule (MURA's): the study probability is the mean over the images that were scored; images
that failed do not vote; a study with no scored image has no probability and an error. The call
(abnormal or not) compares that mean with the operating point of the study's BODY PART, taken
from the model's provenance (each image's `MuraResult.threshold` is that body part's point).

Mixed body parts in one study (e.g. a wrist and a hand view under one accession): there is no
body-part operating point for the study as a whole, so the call uses the model's DEFAULT
operating point (`default_threshold` from the provenance, else `MURA_DEFAULT_THRESHOLD`) and the
result says `mixed_body_parts: true`. Images without a body part take the study's.

Out-of-distribution images (issue 21): an image the OOD gate refused (`--ood refuse`, the
gateway's default) has no probability, so it does not vote, and the study says how many were
`refused`; a study whose every image was refused has no call and says so. Under `--ood flag`
every scored image votes and the study says how many of them were `out_of_distribution`, so a
reader sees that the call rests on images unlike the model's reference set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from msk.constants import MURA_DEFAULT_THRESHOLD

NO_IMAGE_SCORED = "no image of this study could be scored"
ALL_REFUSED = ("not assessed: every image of this study is out of distribution for this model "
               "(refused by the OOD gate)")


@dataclass(frozen=True)
class ScoredImage:
    """What the rule needs of one image: its probability (None = failed), its body part and
    the operating point the server gave for that body part (None when it failed)."""

    probability: float | None
    body_part: str | None = None
    threshold: float | None = None
    in_distribution: bool | None = None
    """The OOD gate's verdict (None when unknown: an old row, a failed request)."""
    refused: bool = False
    """Refused by the OOD gate (then `probability` is None)."""


@dataclass(frozen=True)
class StudyCall:
    """A study's result: probability and call, or `error` when no image was scored."""

    images: int
    scored: int
    refused: int
    """Images refused by the OOD gate (they do not vote)."""
    out_of_distribution: int
    """Scored images the OOD gate flagged (they vote: policy flag)."""
    probability: float | None
    threshold: float | None
    abnormal: bool | None
    body_part: str | None
    mixed_body_parts: bool
    error: str | None

    @property
    def failed(self) -> int:
        """Images that could not be scored (unreadable, a server error); refused ones apart."""
        return self.images - self.scored - self.refused

    def to_json(self) -> dict[str, Any]:
        """The study's fields, named as everywhere a study is shown (studies file, web API)."""
        return {"images": self.images, "scored": self.scored, "failed": self.failed,
                "refused": self.refused,
                "out_of_distribution": self.out_of_distribution,
                "probability": self.probability,
                "threshold": self.threshold, "abnormal": self.abnormal,
                "body_part": self.body_part, "mixed_body_parts": self.mixed_body_parts,
                "error": self.error}


def study_call(images: Iterable[ScoredImage],
               default_threshold: float = MURA_DEFAULT_THRESHOLD) -> StudyCall:
    """Apply the study rule (module docstring) to a study's images.

    `default_threshold` is the model's default operating point (the provenance's
    `default_threshold`), used when the images' body parts differ.
    """
    items = list(images)
    ok = [i for i in items if i.probability is not None]
    # Only scored images vote, on the body part too: an unreadable hand view does not make a
    # wrist study "mixed". With nothing scored, the parts named are reported as they are.
    parts = {i.body_part for i in (ok or items) if i.body_part}
    mixed = len(parts) > 1
    body_part = next(iter(parts)) if len(parts) == 1 else None
    refused = sum(1 for i in items if i.refused)
    flagged = sum(1 for i in ok if i.in_distribution is False)
    if not ok:
        error = ALL_REFUSED if items and refused == len(items) else NO_IMAGE_SCORED
        return StudyCall(len(items), 0, refused, 0, None, None, None, body_part, mixed, error)
    probability = sum(float(i.probability) for i in ok) / len(ok)  # type: ignore[arg-type]
    # The operating point comes from an image scored AS the study's body part (each carries that
    # part's point; an image without a body part carries the default one), so the order of the
    # images never matters. An explicit 0.0 is a real operating point, not "missing".
    points = [float(i.threshold) for i in ok
              if i.threshold is not None and i.body_part == body_part]
    threshold = points[0] if points and not mixed else float(default_threshold)
    return StudyCall(len(items), len(ok), refused, flagged, probability, threshold,
                     probability >= threshold, body_part, mixed, None)


def member_means(members: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Per ensemble member: its mean probability over a study's scored images (`members` holds
    each scored image's {member: probability}), the same aggregation as the study probability.
    The one place it is computed: the web API's study and the SR's study group use it."""
    per_image = list(members)
    names: list[str] = []
    for image in per_image:
        names.extend(n for n in image if n not in names)
    return {n: sum(float(i[n]) for i in per_image if n in i) / sum(1 for i in per_image if n in i)
            for n in names}
