"""Label import (YOLO txt, Pascal VOC), datasets per target, patient-level split."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from msk.constants import WRIST_BONE_CLASSES, WRIST_CLASSES, WRIST_JOINT_CLASSES
from msk.wrist_geometry import study_letterbox
from training.wrist_labels import (
    Box,
    build_datasets,
    classes_for,
    import_folder,
    read_voc_xml,
    read_yolo_txt,
    split_of,
    write_synthetic_source,
    write_voc_xml,
    write_yolo_txt,
)


def test_yolo_and_voc_round_trip(tmp_path: Path) -> None:
    boxes = [Box("radcar", 10.5, 20.25, 300.0, 80.0), Box("lunate", 0.0, 5.0, 40.0, 45.5)]
    write_yolo_txt(tmp_path / "a.txt", boxes, 800, 1000, list(WRIST_CLASSES))
    back = read_yolo_txt(tmp_path / "a.txt", 800, 1000, WRIST_CLASSES)
    write_voc_xml(tmp_path / "a.xml", "a.png", boxes, 800, 1000)
    voc = read_voc_xml(tmp_path / "a.xml")
    for got in (back, voc):
        assert [b.cls for b in got] == ["radcar", "lunate"]
        assert np.allclose([b.xyxy() for b in got], [b.xyxy() for b in boxes], atol=0.06)


def test_import_reports_bad_files_and_keeps_the_rest(tmp_path: Path) -> None:
    img = np.full((100, 80), 50, np.uint8)
    for stem in ("p1_a", "p1_b", "p2_a", "p3_a", "p4_a"):
        cv2.imwrite(str(tmp_path / f"{stem}.png"), img)
    (tmp_path / "p1_a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    write_voc_xml(tmp_path / "p1_b.xml", "p1_b.png", [Box("nav", 1, 2, 30, 40),
                                                      Box("elbow", 1, 1, 5, 5)], 80, 100)
    (tmp_path / "p2_a.txt").write_text("0 0.5 0.5\n")            # too few fields
    (tmp_path / "p3_a.xml").write_text("<annotation><object>")  # broken XML
    items, problems = import_folder(tmp_path)
    assert [it.path.name for it in items] == ["p1_a.png", "p1_b.png"]
    assert {it.patient for it in items} == {"p1"}
    assert items[0].boxes[0].cls == WRIST_CLASSES[0]
    assert [b.cls for b in items[1].boxes] == ["nav"]
    text = "\n".join(problems)
    assert "p2_a.txt:1" in text and "p3_a.xml" in text and "p4_a.png: no label file" in text
    assert "elbow" in text


def test_datasets_per_target_with_patient_split(tmp_path: Path) -> None:
    src = write_synthetic_source(tmp_path / "src", 12, seed=1)
    items, problems = import_folder(src, patients_csv=src / "patients.csv")
    assert not problems and len(items) == 12
    data = build_datasets(items, tmp_path / "ds", ("joints", "bones", "nav"),
                          fractions=(0.5, 0.25, 0.25), seed=3)
    # patient-level: both views of a patient land in the same split
    for it in items:
        assert split_of(it.patient, (0.5, 0.25, 0.25), 3) == split_of(it.patient, (0.5, 0.25, 0.25),
                                                                    3)
    per_split: dict[str, set[str]] = {}
    for path in (tmp_path / "ds" / "joints" / "images").rglob("*.png"):
        patient = next(it.patient for it in items if it.path.stem == path.stem)
        per_split.setdefault(patient, set()).add(path.parent.name)
    assert all(len(s) == 1 for s in per_split.values())
    assert yaml.safe_load(data["joints"].read_text())["names"] == dict(enumerate(
        WRIST_JOINT_CLASSES))
    assert yaml.safe_load(data["bones"].read_text())["names"] == dict(enumerate(WRIST_BONE_CLASSES))
    assert yaml.safe_load(data["nav"].read_text())["names"] == {0: "nav"}

    item = items[0]
    img = cv2.imread(str(item.path), cv2.IMREAD_UNCHANGED)
    geo = study_letterbox(*img.shape)
    split = split_of(item.patient, (0.5, 0.25, 0.25), 3)
    joints = (tmp_path / "ds" / "joints" / "labels" / split / f"{item.path.stem}.txt"
              ).read_text().split("\n")
    nav = (tmp_path / "ds" / "nav" / "labels" / split / f"{item.path.stem}.txt").read_text()
    assert sorted(int(line.split()[0]) for line in joints if line) == [0, 1, 2]
    assert nav.split()[0] == "0" and len(nav.strip().splitlines()) == 1
    truth = next(b for b in item.boxes if b.cls == "nav")
    got = read_yolo_txt(tmp_path / "ds" / "nav" / "labels" / split / f"{item.path.stem}.txt",
                        geo.out_w, geo.out_h, ["nav"])[0]
    assert np.allclose(got.xyxy(), geo.forward(np.array(truth.xyxy()))[0], atol=0.05)
    canvas = cv2.imread(str(tmp_path / "ds" / "nav" / "images" / split / f"{item.path.stem}.png"),
                        cv2.IMREAD_UNCHANGED)
    assert canvas.shape == (1400, 760) and canvas.dtype == np.uint8


def test_unknown_target_is_named() -> None:
    with pytest.raises(ValueError, match="elbow"):
        classes_for("elbow")
