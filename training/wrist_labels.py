"""Wrist labels: import LabelImg/CVAT exports, split by patient, build Ultralytics datasets.

Sources: a folder of radiographs (PNG/JPEG/TIFF, 8 or 16 bit, DICOM: read by the one radiograph
reader, `msk.imaging`, exactly as the clients read them) with, per image, `<stem>.txt` (YOLO:
`class cx cy w h`, normalised, class indices into `classes.txt` next to the labels, else
`WRIST_CLASSES`) or `<stem>.xml` (Pascal VOC: `object/name`,
`bndbox/xmin..ymax`; the coordinates are taken as pixel edges, which is what both LabelImg and
CVAT write). Boxes are kept in original pixels until a dataset is built.

Datasets (the study's three kinds): `joints` (radcar, capnlun, mna), `bones` (mul, nav, lunate), or
any single structure (lines of other classes dropped, the class remapped to 0). Every image goes
through the study preprocessing (`training.wrist_preprocess`), its boxes through the same geometry
(`msk.wrist_geometry.StudyLetterbox.forward`). The split is by patient: a patient's images all
land in one split, decided by a hash of the patient id (stable when images are added).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from msk.constants import IMAGE_SUFFIXES, WRIST_BONE_CLASSES, WRIST_CLASSES, WRIST_JOINT_CLASSES

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
MIN_BOX_PX = 2.0


class LabelError(ValueError):
    """A label file or image could not be used; the message names the file and the problem."""


@dataclass
class Box:
    cls: str
    x1: float
    y1: float
    x2: float
    y2: float

    def xyxy(self) -> tuple[float, float, float, float]:
        return self.x1, self.y1, self.x2, self.y2


@dataclass
class LabeledImage:
    path: Path
    patient: str
    boxes: list[Box] = field(default_factory=list)


def classes_for(target: str) -> tuple[str, ...]:
    """Class names of a dataset kind: 'joints', 'bones' or one structure name."""
    if target == "joints":
        return WRIST_JOINT_CLASSES
    if target == "bones":
        return WRIST_BONE_CLASSES
    if target in WRIST_CLASSES:
        return (target,)
    raise ValueError(f"unknown wrist target {target!r}: use joints, bones or one of "
                     f"{', '.join(WRIST_CLASSES)}")


def read_image(path: Path) -> np.ndarray:
    """uint8 [H, W] grayscale through the one radiograph reader (the pixels the served pipeline
    gets from the clients); a file it refuses is a `LabelError` with the reader's message."""
    from msk.imaging import RadiographError, load_grayscale

    try:
        return load_grayscale(path)
    except RadiographError as exc:
        raise LabelError(str(exc)) from exc


def read_yolo_txt(path: Path, width: int, height: int, names: Sequence[str]) -> list[Box]:
    boxes = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 5:
            raise LabelError(f"{path}:{n}: expected 'class cx cy w h', got {line!r}")
        try:
            k = int(float(parts[0]))
            cx, cy, bw, bh = (float(v) for v in parts[1:5])
        except ValueError as exc:
            raise LabelError(f"{path}:{n}: not numbers: {line!r}") from exc
        if not 0 <= k < len(names):
            raise LabelError(f"{path}:{n}: class index {k} outside the {len(names)} classes")
        boxes.append(Box(names[k], (cx - bw / 2) * width, (cy - bh / 2) * height,
                         (cx + bw / 2) * width, (cy + bh / 2) * height))
    return boxes


def read_voc_xml(path: Path) -> list[Box]:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise LabelError(f"{path}: invalid XML ({exc})") from exc
    boxes = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        if bb is None:
            raise LabelError(f"{path}: object {name!r} has no bndbox")
        try:
            x1, y1, x2, y2 = (float(bb.findtext(t) or "nan") for t in
                              ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as exc:
            raise LabelError(f"{path}: object {name!r} has a non-numeric bndbox") from exc
        boxes.append(Box(name, x1, y1, x2, y2))
    return boxes


def write_yolo_txt(path: Path, boxes: Iterable[Box], width: int, height: int,
                   names: Sequence[str]) -> None:
    lines = []
    for b in boxes:
        cx, cy = (b.x1 + b.x2) / 2 / width, (b.y1 + b.y2) / 2 / height
        lines.append(f"{names.index(b.cls)} {cx:.6f} {cy:.6f} "
                     f"{(b.x2 - b.x1) / width:.6f} {(b.y2 - b.y1) / height:.6f}")
    path.write_text("\n".join(lines) + ("\n" if lines else ""))


def write_voc_xml(path: Path, image_name: str, boxes: Iterable[Box], width: int,
                  height: int) -> None:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = image_name
    size = ET.SubElement(root, "size")
    for tag, v in (("width", width), ("height", height), ("depth", 1)):
        ET.SubElement(size, tag).text = str(v)
    for b in boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = b.cls
        bb = ET.SubElement(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), b.xyxy(), strict=True):
            ET.SubElement(bb, tag).text = f"{v:.1f}"
    ET.ElementTree(root).write(path)


def _patients_from_csv(path: Path) -> dict[str, str]:
    with path.open() as fh:
        return {row["image"]: row["patient"] for row in csv.DictReader(fh)}


def import_folder(images: Path, labels: Path | None = None, *,
                  patient_regex: str = r"^(.+?)_", patients_csv: Path | None = None,
                  ) -> tuple[list[LabeledImage], list[str]]:
    """Read a LabelImg/CVAT export. Returns (labelled images, problems). Images without a label
    file, unreadable files and unknown classes are reported (file and reason) and skipped; the rest
    is imported. Patient: `patients_csv` (columns image, patient) or the regex's first group on
    the file stem (default: text before the first '_'), else the stem."""
    labels = labels or images
    names = list(WRIST_CLASSES)
    classes_txt = labels / "classes.txt"
    if classes_txt.exists():
        names = [n.strip() for n in classes_txt.read_text().splitlines() if n.strip()]
    mapping = _patients_from_csv(patients_csv) if patients_csv else {}
    rx = re.compile(patient_regex)
    items: list[LabeledImage] = []
    problems: list[str] = []
    for path in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        txt, xml = labels / f"{path.stem}.txt", labels / f"{path.stem}.xml"
        try:
            if xml.exists():
                boxes = read_voc_xml(xml)
            elif txt.exists():
                img = read_image(path)
                boxes = read_yolo_txt(txt, img.shape[1], img.shape[0], names)
            else:
                problems.append(f"{path}: no label file ({txt.name} or {xml.name})")
                continue
        except LabelError as exc:
            problems.append(str(exc))
            continue
        unknown = sorted({b.cls for b in boxes} - set(WRIST_CLASSES))
        if unknown:
            problems.append(f"{path}: unknown classes {unknown} ignored")
            boxes = [b for b in boxes if b.cls in WRIST_CLASSES]
        m = rx.search(path.stem)
        patient = mapping.get(path.name) or mapping.get(path.stem) or (
            m.group(1) if m and m.groups() else path.stem)
        items.append(LabeledImage(path, patient, boxes))
    return items, problems


def split_of(patient: str, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0) -> str:
    """Deterministic patient-level split from a hash of (seed, patient id)."""
    digest = hashlib.sha256(f"{seed}:{patient}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2 ** 64
    edge = 0.0
    for name, frac in zip(SPLITS, fractions, strict=True):
        edge += frac
        if u < edge:
            return name
    return SPLITS[-1]


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def build_datasets(items: Sequence[LabeledImage], out_dir: Path,
                   targets: Sequence[str] = ("joints", "bones"), *,
                   fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0,
                   ) -> dict[str, Path]:
    """Preprocess every image once and write one Ultralytics dataset per target.

    Layout: `out_dir/canvas/<stem>.png` (preprocessed 1400 x 760), `out_dir/<target>/images|labels/
    <split>/`, `out_dir/<target>/data.yaml`, `out_dir/split.json` (patient -> split).
    Returns {target: data.yaml path}."""
    import cv2
    import yaml

    from training.wrist_preprocess import preprocess_wrist_uint8

    out_dir = Path(out_dir).resolve()
    canvas_dir = out_dir / "canvas"
    canvas_dir.mkdir(parents=True, exist_ok=True)
    splits = {it.patient: split_of(it.patient, fractions, seed) for it in items}
    records = []
    for it in items:
        png = canvas_dir / f"{it.path.stem}.png"
        img = read_image(it.path)
        canvas, geo = preprocess_wrist_uint8(img)
        cv2.imwrite(str(png), canvas)
        boxes = []
        for b in it.boxes:
            x1, y1, x2, y2 = geo.forward(np.array(b.xyxy()))[0]
            x1, x2 = np.clip([x1, x2], geo.pad_left, geo.pad_left + geo.new_w)
            y1, y2 = np.clip([y1, y2], geo.pad_top, geo.pad_top + geo.new_h)
            if x2 - x1 >= MIN_BOX_PX and y2 - y1 >= MIN_BOX_PX:
                boxes.append(Box(b.cls, float(x1), float(y1), float(x2), float(y2)))
        records.append((png, splits[it.patient], boxes, geo.out_w, geo.out_h))
    (out_dir / "split.json").write_text(json.dumps(splits, indent=1, sort_keys=True))

    data_files = {}
    for target in targets:
        names = classes_for(target)
        root = out_dir / target
        shutil.rmtree(root, ignore_errors=True)
        for png, split, boxes, w, h in records:
            _link(png, root / "images" / split / png.name)
            lbl = root / "labels" / split / f"{png.stem}.txt"
            lbl.parent.mkdir(parents=True, exist_ok=True)
            write_yolo_txt(lbl, [b for b in boxes if b.cls in names], w, h, list(names))
        for split in SPLITS:
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        data = {"path": str(root), "train": "images/train", "val": "images/val",
                "test": "images/test", "names": dict(enumerate(names))}
        (root / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        data_files[target] = root / "data.yaml"
    return data_files


def write_synthetic_source(out_dir: Path, n: int, seed: int = 0) -> Path:
    """Raw synthetic radiographs as a labelling tool would leave them: PNG (8/16 bit), labels
    alternating YOLO txt (+ classes.txt) and Pascal VOC XML, and patients.csv."""
    import cv2

    from training.wrist_synthetic import make_wrist

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "classes.txt").write_text("\n".join(WRIST_CLASSES) + "\n")
    rows = []
    for i in range(n):
        s = make_wrist(seed, i)
        h, w = s.image.shape
        png = out_dir / f"{s.name}.png"
        cv2.imwrite(str(png), s.image)
        boxes = [Box(k, *v) for k, v in s.boxes.items()]
        if i % 2:
            write_voc_xml(out_dir / f"{s.name}.xml", png.name, boxes, w, h)
        else:
            write_yolo_txt(out_dir / f"{s.name}.txt", boxes, w, h, list(WRIST_CLASSES))
        rows.append((png.name, s.patient))
    with (out_dir / "patients.csv").open("w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["image", "patient"])
        wr.writerows(rows)
    return out_dir


def build_synthetic_datasets(out_dir: Path, n: int, seed: int = 0,
                             targets: Sequence[str] = ("joints", "bones"),
                             fractions: Sequence[float] = DEFAULT_FRACTIONS) -> dict[str, Path]:
    """Synthetic source -> import -> datasets: the same path real labels take."""
    src = write_synthetic_source(Path(out_dir) / "source", n, seed)
    items, problems = import_folder(src, patients_csv=src / "patients.csv")
    if problems:
        raise LabelError("; ".join(problems))
    return build_datasets(items, Path(out_dir) / "datasets", targets, fractions=fractions,
                          seed=seed)
