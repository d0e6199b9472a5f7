"""The out-of-distribution gate (issue 21): statistics fitted at export, score in the same pass.

What must hold: the served OOD_SCORE is the stored statistics' score (the ONNX graph and the
float64 numpy definition agree); the statistics are a versioned, checksummed artifact named in
the manifest and in PROVENANCE; the same reference set gives no new version, another reference
or percentile does; cross-fitted thresholds flag about the stated share of new images like the
reference set and most images that are not.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from clients.mura import MuraClient
from export.manifest import load_manifest, sha256_file
from export.ood_reference import GIVEN_KIND, reference_from_files
from export.ood_stats import OodReferenceError, Reference, fit_reference
from export.repository import build_repository, latest_version
from msk.constants import (
    MURA_BODY_PARTS,
    MURA_ENSEMBLE_MODEL,
    MURA_MEAN_MODEL,
    MURA_MEMBERS,
    OOD_REFERENCE_FILE,
)
from msk.samples import radiograph
from tests.reference import ReferencePipeline


def _gaussian_features(rng, n: int, dim: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes in a correlated 64-d space (low-rank structure plus isotropic noise)."""
    basis = np.random.default_rng(7).normal(size=(8, dim))
    labels = rng.integers(0, 2, n)
    latent = rng.normal(size=(n, 8)) * np.linspace(3, 1, 8)
    x = latent @ basis + rng.normal(scale=0.3, size=(n, dim)) + labels[:, None] * 2.0
    # The shift alternates in sign: away from both class means (a shift along (1, ..., 1) would
    # only turn normal images into abnormal-looking ones).
    return x + shift * (-1.0) ** np.arange(dim), labels


def test_cross_fitted_threshold_flags_the_stated_share_and_shifted_images():
    features, labels = {}, None
    fresh, shifted = {}, {}
    for k, member in enumerate(("a", "b")):
        member_rng = np.random.default_rng(k)
        x, labels = _gaussian_features(member_rng, 600, 64)
        features[member] = x
    # Fresh in-distribution and shifted images: the same draw for both "members" (same images).
    for k, member in enumerate(("a", "b")):
        fresh[member], _ = _gaussian_features(np.random.default_rng(100 + k), 4000, 64)
        shifted[member], _ = _gaussian_features(np.random.default_rng(200 + k), 500, 64,
                                                shift=1.5)
    stats = fit_reference(features, list(labels), [None] * 600, components=8)
    threshold = stats.threshold(99.0)
    flagged = float(np.mean(stats.score(fresh) > threshold))
    assert 0.002 <= flagged <= 0.03, flagged            # stated: 1 %
    assert float(np.mean(stats.score(shifted) > threshold)) >= 0.95
    assert np.median(stats.score(fresh)) == pytest.approx(1.0, abs=0.25)   # scaled per member


def test_too_small_a_reference_set_is_refused():
    x = np.zeros((5, 4))
    with pytest.raises(OodReferenceError, match="at least"):
        fit_reference({"a": x}, [None] * 5, [None] * 5)


def test_statistics_round_trip_with_the_same_bytes():
    rng = np.random.default_rng(1)
    x, y = _gaussian_features(rng, 60, 16)
    stats = fit_reference({"a": x}, list(y), ["wrist"] * 60, components=4)
    data = stats.to_bytes()
    again = Reference.from_bytes(data)
    assert again.to_bytes() == data
    np.testing.assert_allclose(again.score({"a": x[:5]}), stats.score({"a": x[:5]}))


def test_served_graph_equals_the_numpy_definition(tiny_repository):
    pipeline = ReferencePipeline(tiny_repository)
    for seed, image in enumerate([(radiograph(300, 260, 5) * 255).astype(np.uint8),
                                  np.full((200, 180), 17, np.uint8),
                                  np.random.default_rng(3).integers(0, 256, (256, 256),
                                                                    dtype=np.uint8)]):
        out = pipeline.run(image)
        expected = pipeline.numpy_ood_score(out["FEATURES"])
        assert float(out["OOD_SCORE"][0]) == pytest.approx(expected, rel=1e-4, abs=1e-4), seed
        probs = out["MEMBER_PROBABILITIES"]
        assert float(out["MEMBER_SPREAD"][0]) == pytest.approx(float(probs.max() - probs.min()),
                                                                abs=1e-7)


def test_statistics_are_a_checksummed_artifact_of_the_version(tiny_repository):
    version = latest_version(tiny_repository)
    path = tiny_repository / MURA_MEAN_MODEL / str(version) / OOD_REFERENCE_FILE
    manifest = load_manifest(tiny_repository)
    (record,) = [r for r in manifest["artifacts"] if r["path"].endswith(OOD_REFERENCE_FILE)]
    assert record["sha256"] == sha256_file(path)
    ood = manifest["versions"][f"{MURA_ENSEMBLE_MODEL}/{version}"]["ood"]
    assert ood["statistics"]["sha256"] == record["sha256"]
    assert ood["reference"]["kind"] == "demo-synthetic"       # the demo says so
    assert set(ood["thresholds"]) == set(MURA_BODY_PARTS)
    stats = Reference.from_bytes(path.read_bytes())
    assert ood["default_threshold"] == pytest.approx(stats.threshold(99.0))
    assert set(stats.members) == set(MURA_MEMBERS)


def test_same_reference_no_new_version_other_reference_or_percentile_new(repository_copy,
                                                                         tmp_path):
    before = latest_version(repository_copy)
    assert build_repository(repository_copy, tiny=True) == before
    wrist = build_repository(repository_copy, tiny=True, ood_percentiles={"wrist": 95.0})
    assert wrist == before + 1
    ood = load_manifest(repository_copy)["versions"][f"{MURA_ENSEMBLE_MODEL}/{wrist}"]["ood"]
    assert ood["percentiles"]["wrist"] == 95.0 and ood["percentiles"]["hand"] == 99.0
    assert ood["thresholds"]["wrist"] < ood["thresholds"]["hand"]
    folder = tmp_path / "ref"
    folder.mkdir()
    from PIL import Image
    entries = []
    for seed in range(12):
        path = folder / f"{seed}.png"
        Image.fromarray((radiograph(200, 180, seed) * 255).astype(np.uint8)).save(path)
        entries.append((str(path), None, None))
    given = reference_from_files(entries, GIVEN_KIND, str(folder))
    other = build_repository(repository_copy, tiny=True, reference=given)
    assert other == wrist + 1
    ood = load_manifest(repository_copy)["versions"][f"{MURA_ENSEMBLE_MODEL}/{other}"]["ood"]
    assert ood["reference"]["kind"] == GIVEN_KIND and ood["reference"]["images"] == 12
    # The same images again, listed in another order: the same fingerprint, no new version.
    again = reference_from_files(entries[::-1], GIVEN_KIND, "elsewhere")
    assert build_repository(repository_copy, tiny=True, reference=again) == other


def test_percentile_for_an_unknown_body_part_is_refused(repository_copy):
    with pytest.raises(ValueError, match="unknown body part 'knee'"):
        build_repository(repository_copy, tiny=True, ood_percentiles={"knee": 95.0})


def test_server_returns_the_ood_score_in_the_same_response(tiny_triton, tiny_repository):
    image = (radiograph(320, 280, 9) * 255).astype(np.uint8)
    with MuraClient(tiny_triton.grpc_url) as client:
        (result,) = client.score([image], body_parts=["wrist"])
    expected = ReferencePipeline(tiny_repository).run(image)
    assert result.error is None
    assert result.ood_score == pytest.approx(float(expected["OOD_SCORE"][0]), rel=1e-5)
    assert result.member_spread == pytest.approx(
        max(result.members.values()) - min(result.members.values()), abs=1e-6)
    ood = json.loads(json.dumps(expected["PROVENANCE"]["ood"]))
    assert result.ood_threshold == pytest.approx(ood["thresholds"]["wrist"])
    assert result.in_distribution == (result.ood_score <= result.ood_threshold)
