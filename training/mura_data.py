"""Labelled radiograph records: the MURA-v1.1 reader, a generic folder/CSV reader, merging and a
seeded patient-level split, plus the torch dataset that feeds training and evaluation.

Why records first: every later step (split, class weights, study-level evaluation, fingerprints)
needs the patient, study and body part of each image, so they are parsed once here from the
MURA path convention `.../XR_<PART>/patient<id>/study<n>_<positive|negative>/image<k>.png`.
"""

from __future__ import annotations

import csv
import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np

from msk.constants import IMAGE_SUFFIXES, MURA_BODY_PARTS
from msk.mura_layout import LAYOUT, mura_study

MURA_DIRNAME = "MURA-v1.1"
MURA_SPLITS = ("train", "valid")

# Folder names that generic labelled sets (e.g. the Bone Fracture Multi-Region X-ray set) use.
POSITIVE_NAMES = frozenset({"abnormal", "positive", "fractured", "fracture", "1"})
NEGATIVE_NAMES = frozenset({"normal", "negative", "not fractured", "not_fractured",
                            "notfractured", "0"})
UNKNOWN_PART = "unknown"
"""Body part of records from sets that do not say (they count in 'overall' only)."""


class DatasetError(ValueError):
    """A data set file or folder is malformed; the message names the file and what was wrong."""


@dataclass(frozen=True)
class Record:
    """One labelled image. `patient` and `study` are unique across merged sources."""

    path: Path
    label: int  # 1 = abnormal
    body_part: str
    patient: str
    study: str
    source: str = "mura"


# --------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------
def _mura_base(root: Path) -> Path:
    """Accept either the folder holding `MURA-v1.1/` or `MURA-v1.1/` itself."""
    root = Path(root)
    if (root / MURA_DIRNAME).is_dir():
        return root / MURA_DIRNAME
    if root.name == MURA_DIRNAME and root.is_dir():
        return root
    raise DatasetError(f"{root}: no {MURA_DIRNAME}/ folder here (expected the extracted MURA "
                       "archive: MURA-v1.1/train_image_paths.csv, ...)")


def read_mura(root: Path, split: str, body_parts: Iterable[str] | None = None) -> list[Record]:
    """Read one MURA-v1.1 split from its CSVs, optionally keeping only some body parts.

    Labels come from `<split>_labeled_studies.csv`; the folder suffix must agree with it (a
    disagreement means a corrupted copy and is reported, naming the line). Missing image files
    are reported with their CSV line, not skipped silently.
    """
    if split not in MURA_SPLITS:
        raise DatasetError(f"split must be one of {MURA_SPLITS}, got {split!r}")
    base = _mura_base(root)
    parent = base.parent
    wanted = _check_parts(body_parts)
    studies_csv = base / f"{split}_labeled_studies.csv"
    images_csv = base / f"{split}_image_paths.csv"
    for f in (studies_csv, images_csv):
        if not f.is_file():
            raise DatasetError(f"{f}: missing (part of the MURA-v1.1 archive)")
    study_labels: dict[str, int] = {}
    with open(studies_csv, newline="") as f:
        for line_no, row in enumerate(csv.reader(f), 1):
            if not row:
                continue
            if len(row) != 2 or row[1].strip() not in ("0", "1"):
                raise DatasetError(f"{studies_csv}:{line_no}: expected '<study path>,<0|1>', "
                                   f"got {','.join(row)!r}")
            study_labels[row[0].strip().rstrip("/")] = int(row[1])
    records: list[Record] = []
    with open(images_csv, newline="") as f:
        for line_no, row in enumerate(csv.reader(f), 1):
            if not row:
                continue
            rel = row[0].strip()
            match = mura_study(PurePosixPath(rel))
            if match is None:
                raise DatasetError(f"{images_csv}:{line_no}: {rel!r} does not follow {LAYOUT}")
            part = match.body_part
            if wanted is not None and part not in wanted:
                continue
            study_key = str(match.study_folder)
            if study_key not in study_labels:
                raise DatasetError(f"{images_csv}:{line_no}: study {study_key!r} is not in "
                                   f"{studies_csv.name}")
            label = study_labels[study_key]
            if label != match.label:
                raise DatasetError(f"{images_csv}:{line_no}: folder says label {match.label} "
                                   f"but {studies_csv.name} says {label}")
            path = parent / rel
            if not path.is_file():
                raise DatasetError(f"{images_csv}:{line_no}: image file missing: {path}")
            patient = f"mura/{match.patient}"
            records.append(Record(path=path, label=label, body_part=part, patient=patient,
                                  study=f"mura/{part}/{match.patient}/{match.study}"))
    if not records:
        raise DatasetError(f"{images_csv}: no images (body parts {sorted(wanted or [])})")
    return records


def _label_from_name(name: str) -> int | None:
    key = name.strip().lower()
    if key in POSITIVE_NAMES:
        return 1
    if key in NEGATIVE_NAMES:
        return 0
    return None


def read_labelled_folder(root: Path, source: str, body_part: str = UNKNOWN_PART) -> list[Record]:
    """Read `<root>/<class folder>/**/<image>` where class folders are named like
    `fractured`/`not fractured`, `abnormal`/`normal`, `positive`/`negative` or `1`/`0`.

    Such sets carry no patient identifiers, so each image is its own patient and study: the
    patient-level split then degrades to an image-level split, which is documented, not hidden.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    records: list[Record] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        label = _label_from_name(class_dir.name)
        if label is None:
            raise DatasetError(f"{class_dir}: class folder name not understood (expected one of "
                               f"{sorted(POSITIVE_NAMES | NEGATIVE_NAMES)})")
        for path in sorted(class_dir.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                key = f"{source}/{path.relative_to(root).as_posix()}"
                records.append(Record(path=path, label=label, body_part=body_part,
                                      patient=key, study=key, source=source))
    if not records:
        raise DatasetError(f"{root}: no images under class folders")
    return records


def read_labelled_csv(csv_path: Path, source: str) -> list[Record]:
    """Read a CSV with a header: `path,label` and optional `body_part,patient,study`.

    Paths are relative to the CSV's folder. Labels are 0/1 or the class names above. Without a
    patient column each image is its own patient (see `read_labelled_folder`).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: not a file")
    records: list[Record] = []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
            raise DatasetError(f"{csv_path}: header must contain 'path' and 'label', got "
                               f"{reader.fieldnames}")
        for line_no, row in enumerate(reader, 2):
            label = _label_from_name(row["label"] or "")
            if label is None:
                raise DatasetError(f"{csv_path}:{line_no}: label {row['label']!r} not understood")
            path = csv_path.parent / row["path"]
            if not path.is_file():
                raise DatasetError(f"{csv_path}:{line_no}: image file missing: {path}")
            part = (row.get("body_part") or UNKNOWN_PART).strip().lower()
            if part not in (*MURA_BODY_PARTS, UNKNOWN_PART):
                raise DatasetError(f"{csv_path}:{line_no}: unknown body part {part!r}")
            patient = f"{source}/{row.get('patient') or row['path']}"
            study = f"{source}/{row.get('study') or row.get('patient') or row['path']}"
            records.append(Record(path=path, label=label, body_part=part, patient=patient,
                                  study=study, source=source))
    if not records:
        raise DatasetError(f"{csv_path}: no rows")
    return records


def _check_parts(body_parts: Iterable[str] | None) -> set[str] | None:
    if body_parts is None:
        return None
    wanted = {p.strip().lower() for p in body_parts if p.strip()}
    unknown = sorted(wanted - set(MURA_BODY_PARTS))
    if unknown:
        raise DatasetError(f"unknown body part(s) {unknown}; expected some of "
                           f"{', '.join(MURA_BODY_PARTS)}")
    return wanted or None


def filter_body_parts(records: Sequence[Record], body_parts: Iterable[str] | None) -> list[Record]:
    """Keep only records of the given body parts (None = all)."""
    wanted = _check_parts(body_parts)
    return list(records) if wanted is None else [r for r in records if r.body_part in wanted]


def merge(*datasets: Sequence[Record]) -> list[Record]:
    """Concatenate data sets; patient/study keys are already prefixed by source, so they stay
    distinct. The same file appearing twice is an error (it would leak across splits)."""
    merged: list[Record] = []
    seen: dict[Path, str] = {}
    for records in datasets:
        for r in records:
            resolved = r.path.resolve()
            if resolved in seen:
                raise DatasetError(f"{r.path}: listed twice (sources {seen[resolved]!r} and "
                                   f"{r.source!r})")
            seen[resolved] = r.source
            merged.append(r)
    return merged


# --------------------------------------------------------------------------------------------
# split and summaries
# --------------------------------------------------------------------------------------------
def patient_split(records: Sequence[Record], test_fraction: float, seed: int = 0,
                  ) -> tuple[list[Record], list[Record]]:
    """Split into (rest, test) so that no patient is in both; seeded and order-independent.

    Patients with any abnormal study and patients without are shuffled separately and the same
    fraction of each goes to test, so both splits keep roughly the class balance.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    by_patient: dict[str, int] = {}
    for r in records:
        by_patient[r.patient] = max(by_patient.get(r.patient, 0), r.label)
    rng = random.Random(seed)
    test_patients: set[str] = set()
    for group in (1, 0):
        patients = sorted(p for p, has_pos in by_patient.items() if has_pos == group)
        rng.shuffle(patients)
        n_test = round(len(patients) * test_fraction)
        test_patients.update(patients[:n_test])
    rest = [r for r in records if r.patient not in test_patients]
    test = [r for r in records if r.patient in test_patients]
    return rest, test


def class_counts(records: Sequence[Record]) -> tuple[int, int]:
    """(normal images, abnormal images)."""
    positives = sum(r.label for r in records)
    return len(records) - positives, positives


def fingerprint(records: Sequence[Record]) -> str:
    """SHA-256 over the sorted (study, file name, label, file size) of every record.

    Why not file contents: hashing 40k MURA images takes minutes; names, labels and sizes
    identify a copy of the data set and any relabelling well enough for provenance.
    """
    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: (r.study, r.path.name)):
        h.update(f"{r.study}|{r.path.name}|{r.label}|{r.path.stat().st_size}\n".encode())
    return h.hexdigest()


def write_reference_csv(records: Sequence[Record], path: Path) -> Path:
    """The training images as the OOD reference list `msk export` reads
    (`msk.constants.OOD_REFERENCE_CSV`: path,label,body_part; absolute paths, so the list does
    not depend on the folder export runs from)."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "label", "body_part"])
        for r in records:
            writer.writerow([Path(r.path).absolute().as_posix(), r.label,
                             "" if r.body_part == UNKNOWN_PART else r.body_part])
    return path


def describe(records: Sequence[Record]) -> dict[str, dict[str, int]]:
    """Per body part: images, abnormal images, studies and patients (for logs and reports)."""
    out: dict[str, dict[str, int]] = {}
    for part in sorted({r.body_part for r in records}):
        rs = [r for r in records if r.body_part == part]
        out[part] = {"images": len(rs), "abnormal_images": sum(r.label for r in rs),
                     "studies": len({r.study for r in rs}),
                     "patients": len({r.patient for r in rs})}
    return out


# --------------------------------------------------------------------------------------------
# torch dataset (torch imported lazily so that readers stay import-light)
# --------------------------------------------------------------------------------------------
def load_image(path: Path) -> np.ndarray:
    """uint8 [H, W] through the one radiograph reader (`msk.imaging`), so training sees what
    serving receives."""
    from msk.imaging import load_grayscale

    return load_grayscale(path)


class MuraImageDataset:
    """Images -> server-identical preprocessed tensors [3, S, S] (+ label, index).

    Preprocessing is `training.mura_preprocess.preprocess_mura`, i.e. the server's ONNX graph.
    Augmentation is applied afterwards on batches of these tensors (`training.mura_augment`), so the
    geometry the network sees at inference time is exactly the server's.
    `cache=True` keeps preprocessed tensors in memory (small sets, e.g. synthetic proofs).
    """

    def __init__(self, records: Sequence[Record], image_size: int, cache: bool = False) -> None:
        self.records = list(records)
        self.image_size = image_size
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.records)

    def pixels(self, index: int) -> np.ndarray:
        from training.mura_preprocess import preprocess_mura

        if self._cache is not None and index in self._cache:
            return self._cache[index]
        record = self.records[index]
        try:
            pixels = preprocess_mura(load_image(record.path), size=self.image_size)
        except Exception as exc:  # why: any decode/preprocess failure must name its file
            raise DatasetError(f"{record.path}: cannot be read/preprocessed: {exc}") from exc
        if self._cache is not None:
            self._cache[index] = pixels
        return pixels

    def __getitem__(self, index: int):
        import torch

        return (torch.from_numpy(self.pixels(index)),
                torch.tensor(float(self.records[index].label)), index)


def with_duplicated_abnormal(records: Sequence[Record]) -> list[Record]:
    """Variant B's oversampling: every abnormal record appears twice (augmented independently)."""
    return list(records) + [replace(r) for r in records if r.label == 1]


def load_splits(mura_root: Path | None, *, body_parts: Iterable[str] | None = None,
                extra_folders: Sequence[Path] = (), extra_csvs: Sequence[Path] = (),
                test_fraction: float = 0.1, split_seed: int = 0) -> dict[str, list[Record]]:
    """{"train", "valid", "test"}: the study's protocol on MURA-v1.1.

    The official `valid` split is the validation set (early stopping, LR schedule, temperature and
    operating points); a held-out `test` split is carved from `train` by patient. Extra labelled
    sets (folders / CSVs) join the training pool before that split, so their images can also
    land in `test`.
    """
    pool: list[list[Record]] = []
    valid: list[Record] = []
    if mura_root is not None:
        pool.append(read_mura(mura_root, "train", body_parts))
        valid = read_mura(mura_root, "valid", body_parts)
    # Folder sets have no body part ("unknown") and are kept whole; CSV sets that name body
    # parts are filtered like MURA.
    for folder in extra_folders:
        pool.append(read_labelled_folder(folder, source=Path(folder).name))
    for csv_path in extra_csvs:
        records = read_labelled_csv(csv_path, source=Path(csv_path).stem)
        wanted = _check_parts(body_parts)
        if wanted is not None:
            records = [r for r in records if r.body_part in wanted or r.body_part == UNKNOWN_PART]
        pool.append(records)
    if not pool:
        raise DatasetError("no data: give a MURA-v1.1 root and/or extra labelled sets")
    train, test = patient_split(merge(*pool), test_fraction, split_seed)
    if not valid:
        # Without MURA's official valid split, carve validation from the remaining pool too.
        train, valid = patient_split(train, test_fraction, split_seed + 1)
    return {"train": train, "valid": valid, "test": test}
