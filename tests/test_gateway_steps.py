"""The gateway's typed scoring steps (`clients.gateway.steps`), one at a time: selection on real
DICOM files, provenance from real Triton answers (checked against the export's manifest, the
independent record of what was deployed) and from answers that lack it, and the composed
`StudyScorer.score` on the real tritonserver, whose SR says what the server said.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from clients.errors import Reason, TransientError
from clients.findings import ModelProvenance
from clients.gateway.scoring import StudyScorer
from clients.gateway.steps import (
    PermanentError,
    call_study,
    collect_provenance,
    score_images,
    select_images,
)
from clients.mura import MuraClient, MuraResult
from clients.routing import Router
from clients.sr import build_sr, summarize
from clients.study import study_call
from clients.wrist import WristResult
from export.manifest import load_manifest
from msk.constants import MURA_ENSEMBLE_MODEL, MURA_MEMBERS
from tests.plugins.pacs import SyntheticPatient, make_study, make_text_sr

PATIENT = SyntheticPatient("Steps^Test", "STEPS-0001")


def _study(tmp_path: Path) -> list[Path]:
    files = make_study(tmp_path, PATIENT, ["WRIST", "CHEST", "WRIST"])
    note = make_text_sr(tmp_path, PATIENT, dcmread(files[0]).StudyInstanceUID)
    corrupt = tmp_path / "corrupt.dcm"
    corrupt.write_bytes(b"")
    return [note, corrupt, *reversed(files)]


def test_select_images_routes_and_says_why_the_rest_is_not_scored(tmp_path: Path) -> None:
    files = _study(tmp_path)
    selection = select_images(files, Router.from_file(None))
    assert selection.received == 5
    # reading order (instance number), whatever order the files came in
    first, _, third = sorted(files[2:])                   # img00 WRIST, img01 CHEST, img02 WRIST
    assert [c.sop_instance_uid for c in selection.candidates] == [
        str(dcmread(f).SOPInstanceUID) for f in (first, third)]
    assert {c.body_part for c in selection.candidates} == {"wrist"}
    reasons = " | ".join(s.reason for s in selection.skipped)
    assert "unreadable DICOM file" in reasons and "not routed" in reasons
    assert "not an image (SOP class Basic Text SR" in reasons
    assert selection.wrists == ()              # the router has no wrist detector here
    assert selection.unreadable == ()


def test_select_images_fails_permanently_when_nothing_can_be_read(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.dcm"
    corrupt.write_bytes(b"")
    with pytest.raises(PermanentError, match="no readable DICOM"):
        select_images([corrupt], Router.from_file(None))
    (multi,) = make_study(tmp_path / "multi", PATIENT, ["WRIST"])
    ds = dcmread(multi)
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(multi)
    with pytest.raises(PermanentError, match="multi-frame"):
        select_images([multi], Router.from_file(None))
    # nothing routed is not an error: an empty selection
    chest = make_study(tmp_path / "chest", PATIENT, ["CHEST"])
    assert select_images(chest, Router.from_file(None)).candidates == ()


def _served_manifest(repository: Path, version: str) -> dict[str, str]:
    """Model -> SHA-256 of its artifact in `version`, from the export's manifest."""
    return {r["model"]: r["sha256"] for r in load_manifest(repository)["artifacts"]
            if str(r["version"]) == version and r["path"].endswith("model.onnx")}


def test_provenance_is_what_triton_returned(tiny_triton, tiny_repository, tmp_path) -> None:
    selection = select_images(_study(tmp_path), Router.from_file(None))
    with MuraClient(tiny_triton.grpc_url) as client:
        mura = score_images(client, selection.candidates)
    models = {m.name: m for m in collect_provenance(mura, [])}
    version = models[MURA_ENSEMBLE_MODEL].version
    assert models[MURA_ENSEMBLE_MODEL].sha256 is None      # an ensemble: no artifact
    manifest = _served_manifest(tiny_repository, version)
    for member in MURA_MEMBERS:
        assert models[member] == ModelProvenance(member, version, manifest[member])

    scored = call_study(selection, mura, {}, tuple(models.values()))
    # the study's call is the one study rule over the findings, nothing else
    assert scored.result.call == study_call(i.as_scored_image() for i in scored.result.images)
    summary = summarize(build_sr(scored.source, scored.result))
    by_name = {a["name"]: a for a in summary["algorithms"]}
    assert by_name[MURA_ENSEMBLE_MODEL] == {"name": MURA_ENSEMBLE_MODEL, "version": version,
                                            "sha256": None}
    for member in MURA_MEMBERS:
        assert by_name[member]["sha256"] == manifest[member]


def test_the_scorer_chains_the_steps(tiny_triton, tmp_path: Path) -> None:
    scorer = StudyScorer(tiny_triton.grpc_url, Router.from_file(None), wrist="off",
                         ood_policy="flag")    # the tiny stand-in finds real radiographs OOD
    try:
        scored = scorer.score(_study(tmp_path))
        assert scorer.score(make_study(tmp_path / "chest", PATIENT, ["CHEST"])) is None
    finally:
        scorer.close()
    assert scored is not None and scored.received == 5
    assert scored.result.call.scored == 2 and len(scored.result.skipped) == 3
    assert {m.name for m in scored.result.models} == {MURA_ENSEMBLE_MODEL, *MURA_MEMBERS}
    assert set(scored.images) == set(scored.sources) == {
        i.sop_instance_uid for i in scored.result.images}


def _answer(**changes) -> MuraResult:
    """An ensemble answer as the client parses it (`MuraClient.parse_result`), then changed."""
    fields = {"source": "x", "probability": 0.5, "members": {"densenet169_a": 0.5},
              "versions": {"pipeline": "3", "densenet169_a": "3"},
              "artifacts": {"densenet169_a": "a" * 64}, "threshold": 0.5, "abnormal": True}
    return MuraResult(**{**fields, **changes})


def test_provenance_missing_from_an_answer_fails_clearly() -> None:
    assert {m.name: m.sha256 for m in collect_provenance([_answer()], [])} == {
        MURA_ENSEMBLE_MODEL: None, "densenet169_a": "a" * 64}
    for broken, why in ((_answer(versions={}), "no provenance"),
                        (_answer(artifacts={}), "densenet169_a: the response carried no SHA"),
                        (_answer(versions={"pipeline": "?", "densenet169_a": "3"}),
                         "no version")):
        with pytest.raises(PermanentError, match=why) as failure:
            collect_provenance([broken], [])
        assert failure.value.reason == Reason.BAD_RESPONSE
    # a detector must name its weights; the post-processing code's digest is optional
    detector = WristResult(versions={"wrist_joints": "2", "wrist_postprocess": "2"},
                           provenance={"detectors": {"wrist_joints": {"version": "2"}}})
    with pytest.raises(PermanentError, match="wrist_joints"):
        collect_provenance([_answer()], [detector])
    detector.provenance["detectors"]["wrist_joints"]["sha256"] = "b" * 64
    models = {m.name: m for m in collect_provenance([_answer()], [detector])}
    assert models["wrist_joints"].sha256 == "b" * 64
    assert models["wrist_postprocess"] == ModelProvenance("wrist_postprocess", "2", None)
    with pytest.raises(PermanentError, match="wrist_detect: the response carried no"):
        collect_provenance([_answer()], [WristResult()])


def test_replicas_with_different_versions_are_retried_later() -> None:
    newer = _answer(versions={"pipeline": "4", "densenet169_a": "4"})
    with pytest.raises(TransientError, match="rollout"):
        collect_provenance([_answer(), newer], [])
