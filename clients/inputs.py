"""Turn what a user types after `msk score` into a flat list of images to score.

Accepted inputs (mixed freely): image files, folders (searched recursively), glob patterns,
CSV manifests and the MURA layout. Why one module: the batch scorer, resume and study
aggregation all need the same stable *key* per image (its path as expanded here), and the
study it belongs to when the layout says so.

CSV manifests come in two shapes:
  * with a header holding a `path` column (optional `study`, `body_part`, `label`);
  * MURA's own header-less files: `*_image_paths.csv` (one image path per row) and
    `*_labeled_studies.csv` (study folder, label). Their paths start at the dataset's parent
    folder (`MURA-v1.1/valid/...`), so relative paths are tried against the CSV's folder and its
    parents.
MURA layout: `.../XR_<BODY PART>/patient<N>/study<K>_<positive|negative>/image<J>.png`; such
images get a study key (the study folder), the body part and the label from the folder name.

Nothing here reads pixels: a spec that matches nothing becomes an item carrying an error, so
the batch reports it as one error row and goes on.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from msk.constants import IMAGE_SUFFIXES, MURA_BODY_PARTS
from msk.mura_layout import mura_study


@dataclass(frozen=True)
class ScoreItem:
    """One image to score. `path` is the key used in outputs and by `--resume`."""

    path: str
    study: str | None = None
    body_part: str | None = None
    label: int | None = None
    error: str | None = None  # set when the input could not even be located


def normalise(path: str | os.PathLike[str]) -> str:
    """The key of an image: its path as given, normalised (no `./`, no `a/../`)."""
    return os.path.normpath(os.fspath(path))


def mura_fields(path: str) -> tuple[str | None, str | None, int | None]:
    """(study key, body part, label) when `path` follows the MURA layout
    (msk.mura_layout), else Nones."""
    found = mura_study(path)
    if found is None:
        return None, None, None
    body = found.body_part if found.body_part in MURA_BODY_PARTS else None
    return normalise(found.study_folder), body, found.label


def _image_item(path: str, **overrides: object) -> ScoreItem:
    key = normalise(path)
    study, body, label = mura_fields(key)
    fields: dict[str, object] = {"study": study, "body_part": body, "label": label}
    fields.update({k: v for k, v in overrides.items() if v not in (None, "")})
    return ScoreItem(path=key, **fields)  # type: ignore[arg-type]


def _folder_images(folder: Path) -> list[str]:
    found = [
        str(p) for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    ]
    return sorted(found)


def _resolve_relative(raw: str, csv_path: Path) -> Path:
    """MURA's CSVs hold paths from the dataset's parent folder: try the CSV folder upwards."""
    candidate = Path(raw)
    if candidate.is_absolute():
        return candidate
    for base in (csv_path.parent, *csv_path.parent.parents):
        if (base / candidate).exists():
            return base / candidate
    return csv_path.parent / candidate


def _parse_label(value: str | None) -> int | None:
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip().lower()
    if text in {"1", "1.0", "positive", "abnormal", "true"}:
        return 1
    if text in {"0", "0.0", "negative", "normal", "false"}:
        return 0
    raise ValueError(f"label {value!r} is not 0/1/positive/negative")


def _manifest_items(csv_path: Path) -> list[ScoreItem]:
    """Items of one CSV manifest (with a `path` header, or MURA's header-less files)."""
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if not rows:
        return [ScoreItem(path=normalise(csv_path), error=f"{csv_path}: manifest is empty")]
    header = [cell.strip().lower() for cell in rows[0]]
    items: list[ScoreItem] = []
    if "path" in header:
        col = {name: header.index(name) for name in header}
        for lineno, row in enumerate(rows[1:], start=2):
            def cell(name: str, row: list[str] = row) -> str | None:
                i = col.get(name)
                return row[i].strip() if i is not None and i < len(row) else None
            raw = cell("path") or ""
            where = f"{csv_path}:{lineno}"
            try:
                label = _parse_label(cell("label"))
            except ValueError as exc:
                items.append(ScoreItem(path=raw or where, error=f"{where}: {exc}"))
                continue
            if not raw:
                items.append(ScoreItem(path=where, error=f"{where}: empty path"))
                continue
            items.extend(_expand_one(str(_resolve_relative(raw, csv_path)), study=cell("study"),
                                     body_part=(cell("body_part") or None), label=label))
        return items
    # MURA header-less: image paths (1 column) or labeled studies (study folder, label)
    for lineno, row in enumerate(rows, start=1):
        raw = row[0].strip()
        where = f"{csv_path}:{lineno}"
        try:
            label = _parse_label(row[1]) if len(row) > 1 else None
        except ValueError as exc:
            items.append(ScoreItem(path=raw, error=f"{where}: {exc}"))
            continue
        items.extend(_expand_one(str(_resolve_relative(raw, csv_path)), label=label))
    return items


def _expand_one(spec: str, study: str | None = None, body_part: str | None = None,
                label: int | None = None) -> list[ScoreItem]:
    path = Path(spec)
    extra = {"study": study, "body_part": body_part, "label": label}
    if path.is_dir():
        images = _folder_images(path)
        if not images:
            return [ScoreItem(path=normalise(spec), error=f"{spec}: folder holds no images "
                              f"({', '.join(sorted(IMAGE_SUFFIXES))})")]
        return [_image_item(p, **extra) for p in images]
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return _manifest_items(path)
        return [_image_item(spec, **extra)]
    if glob.has_magic(spec):
        matches = sorted(glob.glob(spec, recursive=True))
        items: list[ScoreItem] = []
        for match in matches:
            if Path(match).is_dir():
                items.extend(_expand_one(match, **extra))
            elif Path(match).suffix.lower() in IMAGE_SUFFIXES:
                items.append(_image_item(match, **extra))
        if items:
            return items
        return [ScoreItem(path=spec, error=f"{spec}: pattern matches no images")]
    if os.path.lexists(spec):
        # A FIFO, socket, device, broken link or link loop: the reader names it as what it is.
        return [_image_item(spec, **extra)]
    return [ScoreItem(path=normalise(spec), error=f"{spec}: no such file or folder")]


def expand_inputs(specs: Iterable[str]) -> list[ScoreItem]:
    """Expand every spec, in order, dropping repeats of the same image (first one wins).

    Repeats are dropped because the output holds each image exactly once (resume relies on it).
    """
    seen: set[str] = set()
    items: list[ScoreItem] = []
    for spec in specs:
        for item in _expand_one(spec):
            if item.path in seen:
                continue
            seen.add(item.path)
            items.append(item)
    return items


def image_set(specs: Iterable[str], flag: str) -> list[ScoreItem]:
    """`expand_inputs` for an option that names a set of images every one of which must be
    there (`--calibration`, `--holdout`, `--reference`, `--ood-set`): a ValueError naming the
    option and the first missing input, or saying the set is empty."""
    items = expand_inputs(specs)
    errors = [item.error for item in items if item.error]
    if errors:
        raise ValueError(f"{flag}: {errors[0]}")
    if not items:
        raise ValueError(f"{flag}: no images")
    return items
