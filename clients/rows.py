"""The one schema of the fields every result row shares, whichever command wrote it.

Why: `msk score` rows named the input `path` (and `input`), `msk detect` rows `source`, the web
API `filename`, the gateway audit had `reason` for the error text and no latency; a script
reading two of them had to know each spelling. Every output now starts from `common_fields`:

| field          | meaning                                                                  |
|----------------|--------------------------------------------------------------------------|
| `input`        | what was scored: a path as given, an upload's file name, a study's tag    |
| `error`        | null, or one line naming the input and what was wrong                    |
| `error_reason` | null, or a code: `msk.imaging.REASONS` (the input) or `clients.errors.Reason` |
| `versions`     | model name -> version that produced the result (null when none ran)       |
| `latency_s`    | seconds the request(s) took, as the client measured them (null if none)  |
| `notice`       | the research-use notice; in every row, success or error                  |

Command-specific fields (probability, boxes, study, attempts...) come after these. Every MURA
result (`msk score`, the web API, the gateway's audit) then says how far it can be trusted, with
the fields of `trust_fields` (issue 21), spelt the same way everywhere:

| field             | meaning                                                              |
|-------------------|----------------------------------------------------------------------|
| `ood_score`       | features' distance to the model's reference set (~1 typical; null: none ran) |
| `in_distribution` | `ood_score` <= `ood_threshold` (the body part's, from the provenance) |
| `ood_threshold`   | the stated percentile of the reference set's scores (default 99th)    |
| `member_spread`   | max - min of the four members' probabilities (their disagreement)     |

Documented for users in docs/outputs.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict

from msk import RESEARCH_USE_NOTICE

SHARED_FIELDS: tuple[str, ...] = ("input", "error", "error_reason", "versions", "latency_s",
                                  "notice")
"""The shared fields, in the order they are written."""

TRUST_FIELDS: tuple[str, ...] = ("ood_score", "in_distribution", "ood_threshold",
                                 "member_spread")
"""What every MURA row says of how far it can be trusted (module docstring)."""


class CommonFields(TypedDict):
    """The shared part of every row (see the module docstring)."""

    input: str
    error: str | None
    error_reason: str | None
    versions: dict[str, str] | None
    latency_s: float | None
    notice: str


def common_fields(input: str, *, error: str | None = None, error_reason: str | None = None,
                  versions: Mapping[str, str] | None = None,
                  latency_s: float | None = None) -> CommonFields:
    """The shared fields of one row; an error without a reason is a programming error."""
    if error is not None and not error_reason:
        raise ValueError(f"row for {input!r}: an error needs an error_reason")
    return {
        "input": str(input), "error": error, "error_reason": error_reason if error else None,
        "versions": dict(versions) if versions else None,
        "latency_s": None if latency_s is None else round(float(latency_s), 4),
        "notice": RESEARCH_USE_NOTICE,
    }


class TrustFields(TypedDict):
    """The trust part of every MURA row (see the module docstring)."""

    ood_score: float | None
    in_distribution: bool | None
    ood_threshold: float | None
    member_spread: float | None


def trust_fields(ood_score: float | None = None, in_distribution: bool | None = None,
                 ood_threshold: float | None = None,
                 member_spread: float | None = None) -> TrustFields:
    """The trust fields of one MURA row; all null when no model ran."""
    def rounded(value: float | None) -> float | None:
        return None if value is None else round(float(value), 6)

    return {"ood_score": rounded(ood_score), "in_distribution": in_distribution,
            "ood_threshold": rounded(ood_threshold), "member_spread": rounded(member_spread)}
