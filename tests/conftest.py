"""Session fixtures shared by all tests; extra fixtures live in `tests/plugins/*.py`.

Repositories are built by the real export code and cached under `.cache/repositories/<key>`, where
the key hashes every source file that shapes them, so a second test run reuses them and a change
to the export path rebuilds them. Tests that modify a repository must copy it first.
"""

from __future__ import annotations

import hashlib
import os
import pkgutil
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_PLUGINS = Path(__file__).parent / "plugins"
pytest_plugins = [
    f"tests.plugins.{m.name}" for m in pkgutil.iter_modules([str(_PLUGINS)])
    if not m.name.startswith("_")
]
os.environ.setdefault("OMP_NUM_THREADS", "2")


def _source_key(kind: str) -> str:
    digest = hashlib.sha256(kind.encode())
    for pattern in ("export/*.py", "training/models.py", "msk/constants.py", "msk/__init__.py"):
        for path in sorted(ROOT.glob(pattern)):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def cached_repository(kind: str, **build_kwargs) -> Path:
    """Build (once per source state) and return a repository under .cache/repositories."""
    from export.repository import build_repository

    target = ROOT / ".cache" / "repositories" / f"{kind}-{_source_key(kind)}"
    if not (target / ".complete").exists():
        shutil.rmtree(target, ignore_errors=True)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        build_repository(tmp, **build_kwargs)
        (tmp / ".complete").touch()
        tmp.rename(target)
    return target


@pytest.fixture(scope="session")
def demo_repository() -> Path:
    """The full four-member demo repository (untrained seeded weights), read-only."""
    return cached_repository("demo")


@pytest.fixture(scope="session")
def tiny_repository() -> Path:
    """Tiny stand-in backbones, same configs and tensor contract, read-only."""
    return cached_repository("tiny", tiny=True)


def _alive(server):
    """Hand out a session server; if an earlier test crashed it, say so loudly and restart it.

    tritonserver 2.51's python backend was seen to segfault (in TRITONBACKEND_ResponseSend) after
    clients were killed mid-request. That is Triton's crash, not the next test's failure: the
    next test gets a fresh server on the same ports and the crash is reported as a warning with
    the server's log tail.
    """
    if not server.running:
        warnings.warn(f"tritonserver for {server.repository.name} had exited (code "
                      f"{server.process.returncode}); restarting it. Log tail:\n"
                      f"{server.log_tail(25)}", stacklevel=2)
        server.start()
    return server


def _serve(repository: Path) -> Iterator:
    from server.launcher import TritonServer

    with TritonServer(repository) as server:
        yield server


@pytest.fixture(scope="session")
def _triton_session(demo_repository: Path) -> Iterator:
    yield from _serve(demo_repository)


@pytest.fixture()
def triton(_triton_session):
    """The real tritonserver serving the demo repository (one process for the session)."""
    return _alive(_triton_session)


@pytest.fixture(scope="session")
def _tiny_triton_session(tiny_repository: Path) -> Iterator:
    yield from _serve(tiny_repository)


@pytest.fixture()
def tiny_triton(_tiny_triton_session):
    """The real tritonserver serving the tiny stand-in repository (fast client tests)."""
    return _alive(_tiny_triton_session)


@pytest.fixture()
def repository_copy(tmp_path: Path, tiny_repository: Path) -> Path:
    """A writable copy of the tiny repository for tests that add versions or break models."""
    target = tmp_path / "repository"
    shutil.copytree(tiny_repository, target, ignore=shutil.ignore_patterns(".complete"))
    return target
