"""`clients.inputs`: what `msk score` accepts expands to the right images, keys and studies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from clients.inputs import expand_inputs, mura_fields


def _png(path: Path, size: tuple[int, int] = (24, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, 128, np.uint8)).save(path)
    return path


def _mura_tree(root: Path) -> list[Path]:
    base = root / "MURA-v1.1" / "valid"
    return [
        _png(base / "XR_WRIST" / "patient00001" / "study1_positive" / "image1.png"),
        _png(base / "XR_WRIST" / "patient00001" / "study1_positive" / "image2.png"),
        _png(base / "XR_ELBOW" / "patient00002" / "study1_negative" / "image1.png"),
    ]


def test_mura_layout_gives_study_body_part_and_label(tmp_path):
    images = _mura_tree(tmp_path)
    study, body, label = mura_fields(str(images[0]))
    assert study == str(images[0].parent)
    assert (body, label) == ("wrist", 1)
    assert mura_fields(str(images[2]))[1:] == ("elbow", 0)
    assert mura_fields(str(tmp_path / "a" / "b.png")) == (None, None, None)


def test_folder_glob_and_file_mixed_without_repeats(tmp_path):
    images = _mura_tree(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    loose = _png(tmp_path / "loose" / "x.jpg")
    items = expand_inputs([str(tmp_path / "MURA-v1.1"), str(tmp_path / "loose" / "*.jpg"),
                           str(images[0])])
    assert [i.path for i in items] == sorted(str(p) for p in images) + [str(loose)]
    assert all(i.error is None for i in items)
    studies = {i.study for i in items if i.study}
    assert len(studies) == 2


def test_missing_inputs_become_error_items_not_exceptions(tmp_path):
    (tmp_path / "empty").mkdir()
    items = expand_inputs([str(tmp_path / "nope.png"), str(tmp_path / "*.dcm"),
                           str(tmp_path / "empty")])
    assert len(items) == 3
    assert "no such file" in items[0].error and "nope.png" in items[0].error
    assert "matches no images" in items[1].error
    assert "holds no images" in items[2].error


def test_csv_manifest_with_header_relative_paths_and_bad_label(tmp_path):
    a = _png(tmp_path / "imgs" / "a.png")
    b = _png(tmp_path / "imgs" / "b.png")
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,study,body_part,label\n"
                        "imgs/a.png,s1,hand,1\n"
                        f"{b},s1,hand,0\n"
                        "imgs/a.png,s2,hand,maybe\n")
    items = expand_inputs([str(manifest)])
    assert [i.path for i in items[:2]] == [str(a), str(b)]
    assert (items[0].study, items[0].body_part, items[0].label) == ("s1", "hand", 1)
    assert items[1].label == 0
    assert "list.csv:4" in items[2].error and "maybe" in items[2].error


def test_mura_headerless_csvs(tmp_path):
    images = _mura_tree(tmp_path)
    root = tmp_path / "MURA-v1.1"
    paths_csv = root / "valid_image_paths.csv"
    paths_csv.write_text("".join(f"{p.relative_to(tmp_path)}\n" for p in images))
    studies_csv = root / "valid_labeled_studies.csv"
    studies_csv.write_text(
        f"{images[0].parent.relative_to(tmp_path)}/,1\n{images[2].parent.relative_to(tmp_path)}/,0\n")
    by_paths = expand_inputs([str(paths_csv)])
    by_studies = expand_inputs([str(studies_csv)])
    assert [i.path for i in by_paths] == [str(p) for p in images]
    assert sorted(i.path for i in by_studies) == sorted(str(p) for p in images)
    assert {i.label for i in by_studies if "ELBOW" in i.path} == {0}
    assert all(i.study and i.error is None for i in by_paths + by_studies)
