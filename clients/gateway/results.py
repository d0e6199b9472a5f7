"""The gateway's "build the DICOM objects" step: a `ScoredStudy` -> the encoded SR (and, opt-in,
heatmap objects) and the study's audit summary.

Every study-level number in both (probability, call, operating point, mixed body parts,
refused, out of distribution) is read from the one study call the scoring made
(`StudyResult.call`, `clients.study.study_call`); the models are the versions and SHA-256s the
server returned (`clients.gateway.steps.collect_provenance`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid

from clients.gateway.phi import uid_tag
from clients.gateway.steps import ScoredStudy
from clients.heatmap_seg import build_heatmap
from clients.rows import trust_fields
from clients.sr import build_sr


@dataclass(frozen=True)
class ResultObjects:
    """What goes to the outbox: file name -> encoded DICOM object, and the audit summary."""

    files: dict[str, bytes]
    summary: dict[str, Any]


def encode(ds: Dataset) -> bytes:
    """A DICOM object as a Part 10 file."""
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def build_objects(scored: ScoredStudy, batch: str, *, heatmaps: bool,
                  destination: str) -> ResultObjects:
    """The SR of `scored`, its heatmaps when wanted, and the summary the audit records."""
    sr = build_sr(scored.source, scored.result)
    files = {"sr.dcm": encode(sr)}
    heatmap_uids: list[str] = []
    if heatmaps:
        series = generate_uid()
        for index, (sop, heatmap) in enumerate(sorted(scored.heatmaps.items())):
            seg = build_heatmap(scored.sources[sop], heatmap, scored.result.models,
                                series_uid=series, instance_number=index + 1)
            files[f"seg-{index:03d}.dcm"] = encode(seg)
            heatmap_uids.append(str(seg.SOPInstanceUID))
    res = scored.result
    call = res.call
    summary = {
        "batch": batch, "study": uid_tag(scored.source.StudyInstanceUID),
        "instances": scored.received, "images_scored": call.scored,
        "skipped": len(res.skipped) + call.images - call.scored,
        "probability": None if call.probability is None else round(call.probability, 6),
        "abnormal": call.abnormal, "threshold": res.threshold,
        "mixed_body_parts": call.mixed_body_parts,
        "refused": call.refused, "out_of_distribution": call.out_of_distribution,
        "images": [{"sop": uid_tag(i.sop_instance_uid),
                    **trust_fields(i.ood_score, i.in_distribution, i.ood_threshold,
                                   i.member_spread)} for i in res.images],
        "models": [{"name": m.name, "version": m.version, "sha256": m.sha256}
                   for m in res.models],
        "result_uids": {"sr_sop_instance_uid": str(sr.SOPInstanceUID),
                        "sr_series_instance_uid": str(sr.SeriesInstanceUID),
                        "heatmap_sop_instance_uids": heatmap_uids},
        "destination": destination,
    }
    return ResultObjects(files, summary)
