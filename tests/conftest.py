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
    for pattern in ("export/*.py", "export/python_models/*.py", "training/mura_models.py",
                    "msk/constants.py", "msk/__init__.py", "msk/python_step.py",
                    "msk/graphs/*.py"):
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


_SESSION_SERVERS: list = []


def _serve(repository: Path) -> Iterator:
    """A session server. Leaving it raises `ServerCrashed` if it died on its own (teardown)."""
    from server.launcher import TritonServer

    with TritonServer(repository) as server:
        _SESSION_SERVERS.append(server)
        yield server


@pytest.fixture(autouse=True)
def _no_server_crash(request) -> Iterator[None]:
    """A tritonserver that exits during a test without being asked to fails that test.

    Tests that stop or kill a server on purpose do it through `TritonServer.stop()`/`kill()`,
    which say so. tritonserver 2.51's python backend was seen to segfault after clients were
    killed mid-request (Triton's own cancellation bugs of that era); that is a red build, with
    the server's log tail. A crashed session server is started again only after the failure is
    recorded, so that the tests after it still say something.
    """
    from server.launcher import TritonServer

    yield
    crashed = [s for s in list(TritonServer.instances)
               if s.exited_unexpectedly and not getattr(s, "crash_reported", False)]
    for server in crashed:
        server.crash_reported = True
    if crashed:
        report = "\n\n".join(
            f"tritonserver for {s.repository.name} exited unexpectedly "
            f"({s.exit_description()}) during {request.node.nodeid}. Log tail:\n"
            f"{s.log_tail(40)}" for s in crashed)
        for server in crashed:
            if server in _SESSION_SERVERS:
                server.start()
                server.crash_reported = False
        pytest.fail(report, pytrace=False)


@pytest.fixture(scope="session")
def _triton_session(demo_repository: Path) -> Iterator:
    yield from _serve(demo_repository)


@pytest.fixture()
def triton(_triton_session):
    """The real tritonserver serving the demo repository (one process for the session)."""
    return _triton_session


@pytest.fixture(scope="session")
def _tiny_triton_session(tiny_repository: Path) -> Iterator:
    yield from _serve(tiny_repository)


@pytest.fixture()
def tiny_triton(_tiny_triton_session):
    """The real tritonserver serving the tiny stand-in repository (fast client tests)."""
    return _tiny_triton_session


@pytest.fixture()
def repository_copy(tmp_path: Path, tiny_repository: Path) -> Path:
    """A writable copy of the tiny repository for tests that add versions or break models."""
    target = tmp_path / "repository"
    shutil.copytree(tiny_repository, target, ignore=shutil.ignore_patterns(".complete"))
    return target
