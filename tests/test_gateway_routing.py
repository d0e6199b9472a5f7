"""Routing: header fields and rule tables -> which pipelines score an instance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clients.routing import Router
from msk.constants import MURA_BODY_PARTS, MURA_ENSEMBLE_MODEL, WRIST_DETECT_MODEL


@pytest.mark.parametrize("value,part", [
    ("SHOULDER", "shoulder"), ("ELBOW", "elbow"), ("FINGER", "finger"), ("HAND", "hand"),
    ("HUMERUS", "humerus"), ("WRIST", "wrist"), ("FOREARM", "forearm"),
    ("UPPER_ARM", "humerus"), ("THUMB", "finger"),
])
def test_body_part_examined_defined_terms(value: str, part: str) -> None:
    route = Router().route({"BodyPartExamined": value})
    assert route.body_part == part
    assert route.pipelines == (MURA_ENSEMBLE_MODEL,)
    assert "BodyPartExamined" in route.reason


def test_all_mura_parts_are_reachable() -> None:
    parts = {Router().route({"BodyPartExamined": p.upper()}).body_part for p in MURA_BODY_PARTS}
    assert parts == set(MURA_BODY_PARTS)


def test_descriptions_are_used_when_body_part_is_missing_or_generic() -> None:
    router = Router()
    assert router.route({"SeriesDescription": "PA Wrist left"}).body_part == "wrist"
    assert router.route({"BodyPartExamined": "EXTREMITY",
                         "StudyDescription": "XR FOREARM 2 VIEWS"}).body_part == "forearm"
    # the more specific field wins over the study description
    assert router.route({"SeriesDescription": "Elbow lat",
                         "StudyDescription": "Shoulder and elbow"}).body_part == "elbow"


def test_wrist_detect_only_for_wrists_and_only_when_available() -> None:
    with_detector = Router(wrist_detect_available=True)
    assert with_detector.route({"BodyPartExamined": "WRIST"}).pipelines == (
        MURA_ENSEMBLE_MODEL, WRIST_DETECT_MODEL)
    assert with_detector.route({"BodyPartExamined": "HAND"}).pipelines == (MURA_ENSEMBLE_MODEL,)
    assert Router().route({"BodyPartExamined": "WRIST"}).pipelines == (MURA_ENSEMBLE_MODEL,)


@pytest.mark.parametrize("header", [
    {"BodyPartExamined": "CHEST"}, {"BodyPartExamined": "KNEE", "SeriesDescription": "AP"},
    {}, {"StudyDescription": "CT HEAD"}, {"BodyPartExamined": "HANDLE"},
])
def test_other_parts_are_not_scored(header: dict) -> None:
    route = Router().route(header)
    assert not route.scored and route.body_part is None and route.pipelines == ()
    assert route.reason


def test_rule_table_file_goes_first_and_can_exclude(tmp_path: Path) -> None:
    table = tmp_path / "rules.json"
    table.write_text(json.dumps({"rules": [
        {"field": "SeriesDescription", "pattern": "handgelenk|poignet", "body_part": "wrist"},
        {"field": "any", "pattern": r"\bpaediatric\b", "body_part": None},
        {"field": "BodyPartExamined", "pattern": "^EXTREMITY$", "body_part": "hand"},
    ]}))
    router = Router.from_file(table)
    assert router.route({"SeriesDescription": "Poignet face"}).body_part == "wrist"
    assert router.route({"BodyPartExamined": "ELBOW",
                         "StudyDescription": "paediatric elbow"}).scored is False
    assert router.route({"BodyPartExamined": "EXTREMITY"}).body_part == "hand"
    assert router.route({"BodyPartExamined": "SHOULDER"}).body_part == "shoulder"  # defaults


def test_rule_table_without_defaults(tmp_path: Path) -> None:
    table = tmp_path / "rules.yaml"
    table.write_text("use_defaults: false\nrules:\n  - {field: BodyPartExamined, pattern: "
                     "'^ARM$', body_part: forearm}\n")
    router = Router.from_file(table)
    assert router.route({"BodyPartExamined": "ARM"}).body_part == "forearm"
    assert router.route({"BodyPartExamined": "WRIST"}).scored is False


@pytest.mark.parametrize("rules,message", [
    ({"rules": [{"field": "PatientName", "pattern": "x", "body_part": "hand"}]}, "field"),
    ({"rules": [{"pattern": "x", "body_part": "knee"}]}, "knee"),
    ({"rules": [{"pattern": "(", "body_part": "hand"}]}, "invalid"),
    ({"rules": [{"body_part": "hand"}]}, "pattern"),
    ([], "expected an object"),
])
def test_bad_rule_tables_are_refused_with_reason(rules, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Router.from_mapping(rules)

