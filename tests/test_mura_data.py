"""MURA-v1.1 reader, generic labelled sets, merging, patient split, augmentation, preprocessing."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msk.constants import MURA_BODY_PARTS
from training import mura_data
from training.mura_synthetic import SyntheticSpec, generate, render_image


@pytest.fixture(scope="module")
def mura_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_mura")
    generate(root, SyntheticSpec(train_patients=40, valid_patients=10, seed=3))
    return root


def test_generator_writes_the_real_layout_and_csvs(mura_root: Path) -> None:
    base = mura_root / "MURA-v1.1"
    for name in ("train_image_paths.csv", "train_labeled_studies.csv", "valid_image_paths.csv",
                 "valid_labeled_studies.csv"):
        assert (base / name).is_file(), name
    first = (base / "train_image_paths.csv").read_text().splitlines()[0]
    assert first.startswith("MURA-v1.1/train/XR_") and "/patient" in first
    study_row = next(csv.reader((base / "train_labeled_studies.csv").read_text().splitlines()))
    assert study_row[0].endswith("/") and study_row[1] in ("0", "1")
    assert study_row[0].rstrip("/").endswith("_positive" if study_row[1] == "1" else "_negative")
    image = np.asarray(Image.open(mura_root / first))
    assert image.dtype == np.uint8 and image.ndim == 2


def test_generator_is_deterministic(tmp_path: Path) -> None:
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    a = render_image("forearm", True, rng_a)
    assert np.array_equal(a, render_image("forearm", True, rng_b))
    assert not np.array_equal(a, render_image("forearm", True, rng_b))


def test_abnormal_shows_a_visible_lucent_line() -> None:
    """Noise aside, the fracture line is darker than any soft tissue of the normal images."""
    from PIL import ImageFilter

    def darkest(image: np.ndarray) -> float:
        return float(np.asarray(Image.fromarray(image).filter(ImageFilter.BoxBlur(2))).min())

    rng = np.random.default_rng(0)
    for part in MURA_BODY_PARTS:
        normal = [darkest(render_image(part, False, rng)) for _ in range(6)]
        abnormal = [darkest(render_image(part, True, rng)) for _ in range(6)]
        assert max(abnormal) < min(normal), (part, abnormal, normal)


def test_read_mura_counts_labels_and_studies(mura_root: Path) -> None:
    records = mura_data.read_mura(mura_root, "train")
    assert {r.body_part for r in records} <= set(MURA_BODY_PARTS)
    assert all(r.path.is_file() for r in records)
    for r in records:
        assert ("_positive" in str(r.path)) == bool(r.label)
    n_images = len((mura_root / "MURA-v1.1/train_image_paths.csv").read_text().splitlines())
    assert len(records) == n_images
    n_studies = len((mura_root / "MURA-v1.1/train_labeled_studies.csv").read_text().splitlines())
    assert len({r.study for r in records}) == n_studies
    # Reading MURA-v1.1/ itself works too.
    assert len(mura_data.read_mura(mura_root / "MURA-v1.1", "valid")) > 0


def test_body_part_filter(mura_root: Path) -> None:
    records = mura_data.read_mura(mura_root, "train")
    part = records[0].body_part
    only = mura_data.read_mura(mura_root, "train", body_parts=[part.upper()])
    assert only and {r.body_part for r in only} == {part}
    assert len(only) == sum(r.body_part == part for r in records)
    with pytest.raises(mura_data.DatasetError, match="unknown body part"):
        mura_data.read_mura(mura_root, "train", body_parts=["knee"])


def test_read_mura_reports_bad_inputs(mura_root: Path, tmp_path: Path) -> None:
    with pytest.raises(mura_data.DatasetError, match="no MURA-v1.1"):
        mura_data.read_mura(tmp_path, "train")
    # A label that disagrees with the folder name is reported with file and line.
    copy = tmp_path / "copy" / "MURA-v1.1"
    copy.mkdir(parents=True)
    for name in ("valid_image_paths.csv", "valid_labeled_studies.csv"):
        (copy / name).write_text((mura_root / "MURA-v1.1" / name).read_text())
    (copy.parent / "MURA-v1.1" / "valid").symlink_to(mura_root / "MURA-v1.1" / "valid")
    lines = (copy / "valid_labeled_studies.csv").read_text().splitlines()
    path, label = lines[0].rsplit(",", 1)
    lines[0] = f"{path},{1 - int(label)}"
    (copy / "valid_labeled_studies.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(mura_data.DatasetError, match=r"valid_image_paths.csv:\d+: folder says"):
        mura_data.read_mura(copy.parent, "valid")
    # A missing image is named.
    (copy / "valid_labeled_studies.csv").write_text(
        (mura_root / "MURA-v1.1" / "valid_labeled_studies.csv").read_text())
    with open(copy / "valid_image_paths.csv", "a") as f:
        f.write(path.split("/study")[0] + "/study9_negative/image1.png\n")
    with pytest.raises(mura_data.DatasetError, match="not in valid_labeled_studies"):
        mura_data.read_mura(copy.parent, "valid")


def _write_folder_set(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name, abnormal in (("fractured", True), ("not fractured", False)):
        (root / name / "sub").mkdir(parents=True)
        for k in range(3):
            Image.fromarray(render_image("wrist", abnormal, rng, 64, 64)).save(
                root / name / "sub" / f"img{k}.jpg")
    return root


def test_generic_folder_and_csv_sets_and_merge(mura_root: Path, tmp_path: Path) -> None:
    folder = _write_folder_set(tmp_path / "bone_fracture")
    records = mura_data.read_labelled_folder(folder, source="bfmr")
    assert len(records) == 6 and sum(r.label for r in records) == 3
    assert len({r.patient for r in records}) == 6  # no patient ids: one patient per image
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("path,label,body_part,patient\n"
                        "bone_fracture/fractured/sub/img0.jpg,1,wrist,p1\n"
                        "bone_fracture/not fractured/sub/img0.jpg,normal,wrist,p1\n")
    from_csv = mura_data.read_labelled_csv(csv_path, source="listed")
    assert [r.label for r in from_csv] == [1, 0] and from_csv[0].patient == from_csv[1].patient
    mura = mura_data.read_mura(mura_root, "valid")
    merged = mura_data.merge(mura, records)
    assert len(merged) == len(mura) + 6
    with pytest.raises(mura_data.DatasetError, match="listed twice"):
        mura_data.merge(records, from_csv)
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nbone_fracture/fractured/sub/img1.jpg,maybe\n")
    with pytest.raises(mura_data.DatasetError, match=r"bad.csv:2: label 'maybe'"):
        mura_data.read_labelled_csv(bad, source="bad")
    (tmp_path / "odd" / "unsure").mkdir(parents=True)
    with pytest.raises(mura_data.DatasetError, match="class folder name not understood"):
        mura_data.read_labelled_folder(tmp_path / "odd", source="odd")


def test_patient_split_is_disjoint_seeded_and_balanced(mura_root: Path) -> None:
    records = mura_data.read_mura(mura_root, "train")
    rest, test = mura_data.patient_split(records, 0.25, seed=1)
    assert len(rest) + len(test) == len(records)
    assert not {r.patient for r in rest} & {r.patient for r in test}
    again = mura_data.patient_split(list(reversed(records)), 0.25, seed=1)[1]
    assert {r.path for r in again} == {r.path for r in test}  # order-independent
    other = mura_data.patient_split(records, 0.25, seed=2)[1]
    assert {r.path for r in other} != {r.path for r in test}
    patients = {r.patient for r in records}
    assert abs(len({r.patient for r in test}) - 0.25 * len(patients)) <= 2
    assert 0 < sum(r.label for r in test) < len(test)


def test_load_splits_and_fingerprint(mura_root: Path) -> None:
    splits = mura_data.load_splits(mura_root, test_fraction=0.2, split_seed=0)
    valid = mura_data.read_mura(mura_root, "valid")
    assert [r.path for r in splits["valid"]] == [r.path for r in valid]
    assert not {r.patient for r in splits["train"]} & {r.patient for r in splits["test"]}
    fp = mura_data.fingerprint(splits["train"])
    assert fp == mura_data.fingerprint(list(reversed(splits["train"])))
    assert fp != mura_data.fingerprint(splits["train"][1:])


def test_duplicated_abnormal_and_class_weights(mura_root: Path) -> None:
    from training.mura_train import class_weights

    records = mura_data.read_mura(mura_root, "train")
    n_neg, n_pos = mura_data.class_counts(records)
    doubled = mura_data.with_duplicated_abnormal(records)
    assert mura_data.class_counts(doubled) == (n_neg, 2 * n_pos)
    w_neg, w_pos = class_weights(records)
    assert w_neg * n_neg == pytest.approx(w_pos * n_pos)  # each class carries half the loss
    assert w_neg * n_neg + w_pos * n_pos == pytest.approx(len(records))


def test_dataset_uses_the_server_preprocessing(mura_root: Path) -> None:
    from msk.imaging import load_grayscale
    from training.mura_preprocess import preprocess_mura

    records = mura_data.read_mura(mura_root, "valid")[:3]
    ds = mura_data.MuraImageDataset(records, image_size=64, cache=True)
    pixels, label, index = ds[1]
    assert tuple(pixels.shape) == (3, 64, 64) and index == 1 and float(label) == records[1].label
    expected = preprocess_mura(load_grayscale(records[1].path), size=64)
    assert np.array_equal(pixels.numpy(), expected)
    broken = records[0].path.parent / "broken.png"
    broken.write_bytes(b"not a png")
    bad = mura_data.MuraImageDataset([mura_data.Record(broken, 0, "wrist", "p", "s")], 64)
    with pytest.raises(mura_data.DatasetError, match="broken.png"):
        bad[0]
    broken.unlink()


def test_augmentation_is_seeded_and_within_the_study_ranges() -> None:
    import torch

    from training.mura_augment import AugmentSpec, augment_batch
    from training.recipe_schema import RecipeError, parse_recipe

    x = torch.zeros(6, 3, 32, 32)
    x[:, :, 12:20, 4:12] = 1.0  # a bright square left of centre
    spec = AugmentSpec()
    a = augment_batch(x, spec, torch.Generator().manual_seed(0))
    b = augment_batch(x, spec, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert not torch.equal(a, augment_batch(x, spec, torch.Generator().manual_seed(1)))
    # Mass is roughly preserved (zoom <= 20 %: area factor within [0.69, 1.56]).
    ratio = a.sum(dim=(1, 2, 3)) / x.sum(dim=(1, 2, 3))
    assert bool(((ratio > 0.6) & (ratio < 1.7)).all())
    # Only a flip can move the square's centre to the right half (shift <= 20 % of the side).
    identity = AugmentSpec(rotate_deg=0, shift=0, zoom=0, hflip=True)
    flipped = augment_batch(x, identity, torch.Generator().manual_seed(3))
    cols = torch.arange(32).float()
    centre = (flipped[:, 0].sum(1) * cols).sum(1) / flipped[:, 0].sum(dim=(1, 2))
    assert set(np.round(centre.numpy(), 1).tolist()) <= {7.5, 23.5}
    assert parse_recipe("mura", {"name": "n", "member": "m", "architecture": "tiny",
                                 "augment": {"enabled": False}}, "test").augment.enabled is False
    with pytest.raises(RecipeError, match=r"test: unknown key 'augment\.rotate'"):
        parse_recipe("mura", {"name": "n", "member": "m", "architecture": "tiny",
                              "augment": {"rotate": 5}}, "test")


def test_training_and_scoring_read_the_layout_alike(tmp_path: Path) -> None:
    """One reader (msk/mura_layout.py): a copy whose folder names changed case is the same
    study to `msk train` and to `msk score` (the two used to disagree)."""
    from clients.inputs import expand_inputs

    base = tmp_path / "MURA-v1.1"
    study = base / "valid" / "xr_Wrist" / "Patient00007" / "STUDY2_Positive"
    study.mkdir(parents=True)
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(study / "image1.png")
    rel = "MURA-v1.1/valid/xr_Wrist/Patient00007/STUDY2_Positive"
    (base / "valid_image_paths.csv").write_text(f"{rel}/image1.png\n")
    (base / "valid_labeled_studies.csv").write_text(f"{rel}/,1\n")
    (record,) = mura_data.read_mura(tmp_path, "valid")
    assert (record.body_part, record.label, record.study) == (
        "wrist", 1, "mura/wrist/Patient00007/STUDY2")
    (item,) = expand_inputs([str(study / "image1.png")])
    assert (item.body_part, item.label, item.study) == ("wrist", 1, str(study))
