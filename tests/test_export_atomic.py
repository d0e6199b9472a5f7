"""Exports are all or nothing: a failure or a kill leaves the repository, its manifest and what
Triton serves exactly as they were; an inconsistent repository is refused and reported.

Each export runs as a user runs it (`.venv/bin/msk export` from a working directory, relative
paths); the interrupted-commit case kills a real process in the middle of moving a version in.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from msk.constants import MURA_MEMBERS, MURA_TINY_ARCHITECTURE
from server.launcher import TritonServer
from tests.msk_process import MskProcess, run_msk
from training.mura_models import build_backbone


def _digest(folder: Path) -> dict[str, str]:
    """Every file of the repository (hidden ones included) -> its SHA-256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".msk-export.lock"}


def _checkpoints(folder: Path, broken: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, member in enumerate(MURA_MEMBERS):
        path = folder / f"{member}.pt"
        if member == broken:
            path.write_bytes(b"this is not a checkpoint")
            continue
        model = build_backbone(MURA_TINY_ARCHITECTURE, seed=70 + i)
        torch.save({"member": member, "architecture": MURA_TINY_ARCHITECTURE,
                    "state_dict": model.state_dict(), "image_size": 320,
                    "recipe": {"name": f"atomic-{member}"}, "temperature": 1.0}, path)
    return folder


def _served_versions(repository: Path) -> dict[str, list[str]]:
    import tritonclient.grpc as grpcclient

    with TritonServer(repository) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        index = client.get_model_repository_index(as_json=True)["models"]
    versions: dict[str, list[str]] = {}
    for model in index:
        if model.get("state") == "READY":
            versions.setdefault(model["name"], []).append(model["version"])
    return {name: sorted(v) for name, v in versions.items()}


@pytest.fixture()
def work(tmp_path: Path, repository_copy: Path) -> Path:
    """A working directory holding `repo/` (a served tiny repository, version 1)."""
    repository_copy.rename(tmp_path / "repo")
    return tmp_path


def test_a_failed_export_leaves_everything_as_it_was(work: Path) -> None:
    before = _digest(work / "repo")
    _checkpoints(work / "ckpt", broken=MURA_MEMBERS[1])        # fails after the first member
    res = run_msk("export", "--checkpoints", "ckpt", "--repository", "repo", cwd=work)
    assert res.returncode == 1
    assert "exported densenet169_a v2" in res.stderr            # the first member was done
    assert "repo was left as it was" in res.stderr
    assert _digest(work / "repo") == before
    assert not list(work.glob(".repo.export-staging-*")), "staging folder left behind"
    assert all(v == ["1"] for v in _served_versions(work / "repo").values())


def test_a_killed_export_leaves_everything_as_it_was(work: Path) -> None:
    before = _digest(work / "repo")
    _checkpoints(work / "ckpt")
    with MskProcess("export", "--checkpoints", "ckpt", "--repository", "repo",
                    cwd=work) as export:
        export.wait_for(r"exported densenet169_a v2")
        export.stop(signal.SIGKILL)
    assert _digest(work / "repo") == before
    doctor = run_msk("doctor", "--repository", "repo", cwd=work)
    assert doctor.returncode == 0 and "repository: repo ok (MURA versions [1]" in doctor.stdout
    again = run_msk("export", "--checkpoints", "ckpt", "--repository", "repo", cwd=work)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout) == {"repository": "repo", "version": 2}
    assert not list(work.glob(".repo.export-staging-*")), "the killed export's stage remains"
    served = _served_versions(work / "repo")
    assert served["mura_ensemble"] == ["2"]                   # the ensemble serves the newest
    assert all(served[m] == ["1", "2"] for m in MURA_MEMBERS)


_KILL_MID_COMMIT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from export.repository import build_repository

    real_replace, moved = os.replace, []

    def replace_then_die(src, dst):      # the process dies after moving the second folder in
        real_replace(src, dst)
        moved.append(dst)
        if len(moved) == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace_then_die
    build_repository(Path(sys.argv[1]), tiny=True, force=True)
""")


def test_a_kill_while_moving_the_version_in_is_rolled_back(work: Path) -> None:
    before = _digest(work / "repo")
    proc = subprocess.run([sys.executable, "-c", _KILL_MID_COMMIT, "repo"], cwd=work,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert _digest(work / "repo") != before                    # half a version was moved in
    doctor = run_msk("doctor", "--repository", "repo", cwd=work)
    assert doctor.returncode == 1
    assert "an export was interrupted while moving its version in" in doctor.stdout
    serve = run_msk("serve", "--repository", "repo", cwd=work, timeout=120)
    assert serve.returncode == 1 and "inconsistent, not serving it" in serve.stderr
    repaired = run_msk("doctor", "--repository", "repo", "--repair", cwd=work)
    assert repaired.returncode == 0, repaired.stdout
    assert "repair: rolled back" in repaired.stdout
    assert _digest(work / "repo") == before


def test_an_inconsistent_repository_is_refused_and_reported(work: Path) -> None:
    orphan = work / "repo" / "densenet169_a" / "5"             # what the old export bug left
    orphan.mkdir()
    (orphan / "model.onnx").write_bytes(b"half written")
    before = _digest(work / "repo")
    export = run_msk("export", "--tiny", "--force", "--repository", "repo", cwd=work)
    assert export.returncode == 2
    assert "repo is inconsistent, refusing to export into it" in export.stderr
    assert "densenet169_a: 1, 5" in export.stderr
    assert _digest(work / "repo") == before
    doctor = run_msk("doctor", "--repository", "repo", cwd=work)
    assert doctor.returncode == 1
    assert "densenet169_a/5 is not described by manifest.json" in doctor.stdout
