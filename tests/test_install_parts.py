"""The project installs in parts (README "Install a part"), each from its lock file.

The client part is installed the way the client image installs its parts - its lock with
--no-deps, then the project with --no-deps - into a fresh virtual environment, offline, from the
wheels `make setup-test` downloaded into .cache/wheelhouse. That environment holds no torch,
torchvision, Ultralytics or ONNX Runtime; its `msk score` scores an image against the real
tritonserver serving the tiny repository; a command of another part says which part to install.

Every part's lock is checked against pyproject.toml's extras by resolving each extra over the
metadata of the development environment (which holds every part): a lock holds exactly its part's
dependency closure, at the versions of requirements.lock, so no lock can fall behind an extra.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from importlib import metadata
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image

from msk import RESEARCH_USE_NOTICE

ROOT = Path(__file__).resolve().parents[1]
WHEELHOUSE = ROOT / ".cache" / "wheelhouse"
# What the client image copies in besides the locks (deploy/Dockerfile).
PROJECT_FILES = ("pyproject.toml", "README.md", "msk", "clients", "server", "export", "training")
HEAVY = ("torch", "torchvision", "ultralytics", "onnxruntime")
LIGHT_PARTS = ("client", "gateway", "web")

pytestmark = pytest.mark.timeout(1200)


def _lock_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock_script", ROOT / "scripts" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOCK = _lock_script()


def _lock_pins(path: Path) -> dict[str, str]:
    """{name: version} of the lines of a lock that apply to this Python."""
    pins = {}
    for line in LOCK.pins(path):
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate():
            (spec,) = req.specifier
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def _closure(part: str) -> set[str]:
    """Every distribution `pip install msk-triton[part]` installs on this Python, from
    pyproject.toml for the project and the installed metadata for everything else."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    own = canonicalize_name(project["name"])
    extras = project["optional-dependencies"]
    todo = [Requirement(r) for r in project["dependencies"] + extras[part]]
    seen: dict[str, set[str]] = {}          # distribution: the extras already followed
    env = default_environment()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name == own:
            todo += [Requirement(r) for extra in req.extras for r in extras[extra]]
            continue
        if name in LOCK.NOT_EMITTED:
            continue
        new = {"", *req.extras} - seen.get(name, set())
        if not new:
            continue
        seen.setdefault(name, set()).update(new)
        for line in metadata.requires(req.name) or []:
            dep = Requirement(line)
            if dep.marker is None or any(dep.marker.evaluate({**env, "extra": extra})
                                         for extra in new):
                todo.append(dep)
    return set(seen)


def test_every_part_lock_holds_its_closure_at_the_project_versions() -> None:
    project = _lock_pins(LOCK.MAIN_LOCK)
    assert LOCK.parts() == ["client", "gateway", "web", "serve", "train", "export"]
    for part in LOCK.parts():
        path = LOCK.part_lock(part)
        assert path.read_text().splitlines()[0].endswith(LOCK.GENERATED), path
        pins, closure = _lock_pins(path), _closure(part)
        assert (part, closure - set(pins), set(pins) - closure) == (part, set(), set()), \
            "the lock differs from its extra's closure (not in the lock, only in the lock): " \
            "run `make lock`"
        assert {n: v for n, v in pins.items() if project.get(n) != v} == {}, part
    assert set(project) == _closure(LOCK.ALL_PART)
    for part in LIGHT_PARTS:
        assert set(HEAVY).isdisjoint(_lock_pins(LOCK.part_lock(part))), part
    for part in ("train", "export"):
        assert {"torch", "torchvision", "ultralytics"} <= set(_lock_pins(LOCK.part_lock(part)))


def _run(*cmd: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _pip(venv: Path, *args: str | Path) -> subprocess.CompletedProcess:
    return _run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", *args,
                cwd=venv.parent)


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    """A fresh venv with only the client part, installed offline as the client image does."""
    assert (WHEELHOUSE / ".stamp").exists(), "no .cache/wheelhouse: run `make setup-test`"
    home = tmp_path_factory.mktemp("client-part")
    source = home / "src"
    source.mkdir()
    for name in PROJECT_FILES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, source / name)
    venv = home / "venv"
    start = time.monotonic()
    made = _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=home)
    assert made.returncode == 0, made.stderr
    # The development environment's pip installs into the new venv (`--python`); the build
    # tools go in with the lock, as in the client image's base (python:3.11-slim).
    build_tools = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    offline = ("--no-index", "--find-links", WHEELHOUSE, "--no-deps", "--no-compile", "-q")
    for what in (("-r", LOCK.part_lock("client"), *build_tools),
                 ("--no-build-isolation", source)):
        installed = _pip(venv, "install", *offline, *what)
        assert installed.returncode == 0, installed.stdout + installed.stderr
    print(f"client part installed in a fresh venv in {time.monotonic() - start:.0f} s")
    return venv


def test_the_client_part_alone_has_no_torch_and_is_complete(client_venv: Path) -> None:
    probe = ("import importlib.util, json; "
             f"print(json.dumps([m for m in {HEAVY!r} if importlib.util.find_spec(m)]))")
    found = _run(client_venv / "bin" / "python", "-c", probe, cwd=client_venv)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout) == []
    # The lock is closed: every installed distribution's requirements are installed too.
    check = _pip(client_venv, "check")
    assert check.returncode == 0, check.stdout
    helped = _run(client_venv / "bin" / "msk", "--help", cwd=client_venv)
    assert helped.returncode == 0, helped.stderr
    assert "locks/PART.lock" in helped.stdout and "gateway" in helped.stdout


def test_the_client_part_scores_against_tritonserver(client_venv: Path, tiny_triton,
                                                     tmp_path: Path) -> None:
    from msk.samples import radiograph

    Image.fromarray((radiograph(320, 260, 3) * 255).astype(np.uint8)).save(tmp_path / "hand.png")
    scored = _run(client_venv / "bin" / "msk", "score", "hand.png", "--url", tiny_triton.grpc_url,
                  "--no-progress", cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr[-3000:]
    (row,) = [json.loads(line) for line in scored.stdout.splitlines() if line.startswith("{")]
    assert row["input"] == "hand.png" and row["error"] is None, row
    assert 0.0 <= row["probability"] <= 1.0 and row["notice"] == RESEARCH_USE_NOTICE


@pytest.mark.parametrize(("command", "part"), [(("web", "--port", "0"), "web"),
                                               (("export",), "export")])
def test_a_command_of_another_part_names_the_part_to_install(
        client_venv: Path, tmp_path: Path, command: tuple[str, ...], part: str) -> None:
    res = _run(client_venv / "bin" / "msk", *command, cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "No module named" in res.stderr and f"msk-triton[{part}]" in res.stderr, res.stderr
    assert f"locks/{part}.lock" in res.stderr and "Traceback" not in res.stderr


def test_doctor_without_the_serve_part_names_it(client_venv: Path, tmp_path: Path) -> None:
    """The client part has no tritonserver: `msk doctor` says which part brings it, in one
    line, instead of a traceback."""
    res = _run(client_venv / "bin" / "msk", "doctor", cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr[-3000:]
    assert "no usable tritonserver here" in res.stderr and "msk-triton[serve]" in res.stderr
    assert "locks/serve.lock" in res.stderr and "Traceback" not in res.stderr, res.stderr
