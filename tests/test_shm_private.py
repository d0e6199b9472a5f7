"""Shared memory is private (issue "Close the side doors", item 2, the rest of it), against the
real `msk serve`, tritonserver 2.51 and `msk score` processes.

* The python backend's own regions hold every image the server sees (the issue read a 1000-byte
  slice of the last image as user `nobody`). After a real request through the front door, every
  /dev/shm file that tritonserver and its stubs map is mode 0600 and `nobody` cannot open it;
  the image is in one of them (so the refusal is what protects it). Triton itself `fchmod`s
  them to 0644: server/guard.py stops that.
* A SIGKILLed `msk score --shared-memory` cannot remove its regions (4 MiB of RAM each, for
  good). The next `msk score` removes them, and so does `msk serve`'s janitor, also when they
  are not registered with it; a live client's regions (a stopped run) are never touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image

from msk.constants import MURA_ENSEMBLE_MODEL, SCORE_SHM_PREFIX
from msk.process import SHM_ROOT, pid_alive
from tests.plugins.msk_serve import REPO_ROOT, ServeProcess, running_msk_serve
from tests.test_serve_heal import _wait

MSK = str(Path(sys.executable).with_name("msk"))
KILLED_CLIENTS = 3
_SCORE_FILE = re.compile(rf"^{re.escape(SCORE_SHM_PREFIX)}(\d+)_")


def nobody_reads(path: Path) -> subprocess.CompletedProcess:
    """Read the first bytes of `path` as user `nobody` (uid/gid 65534, no groups)."""
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           "head", "-c", "16", str(path)], capture_output=True, timeout=30)


def assert_private(path: Path) -> None:
    """`path` is ours, mode 0600, and `nobody` is refused when opening it."""
    info = path.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o600, os.geteuid()), (
        f"{path} is mode {stat.S_IMODE(info.st_mode):o}, uid {info.st_uid}")
    nobody = nobody_reads(path)
    assert nobody.returncode != 0 and b"Permission denied" in nobody.stderr, (
        f"user nobody read {path}: rc {nobody.returncode}, {nobody.stderr!r}")


def mapped_shm_files(pids: list[int]) -> set[Path]:
    """Every /dev/shm file mapped by processes `pids` (their /proc/<pid>/maps)."""
    files = set()
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].startswith(f"{SHM_ROOT}/"):
                    files.add(Path(fields[5].removesuffix(" (deleted)")))
    return files


def test_the_servers_own_regions_are_0600_and_nobody_cannot_read_them(tiny_repository) -> None:
    image = np.random.default_rng(25).integers(0, 256, (640, 480), dtype=np.uint8)
    with running_msk_serve("serve", "--repository", str(tiny_repository)) as serve:
        client = grpcclient.InferenceServerClient(serve.grpc_url)
        try:
            inp = grpcclient.InferInput("IMAGE", list(image.shape), "UINT8")
            inp.set_data_from_numpy(image)
            client.infer(MURA_ENSEMBLE_MODEL, [inp], client_timeout=60)
        finally:
            client.close()
        triton = psutil.Process(serve.triton_pid)
        server_pids = [triton.pid, *(p.pid for p in triton.children(recursive=True))]
        regions = mapped_shm_files(server_pids)
        named = set(SHM_ROOT.glob(f"msk_{serve.proc.pid}_*"))
        assert named and named <= regions, "the python backend's regions, mapped by the server"
        slice_ = image.tobytes()[:1000]
        assert any(slice_ in path.read_bytes() for path in regions), (
            "the request's image is in none of the server's regions: this test no longer "
            "shows what user nobody would read")
        for path in sorted(regions):
            assert_private(path)
        assert serve.triton_alive()


# -- killed msk score --shared-memory clients --------------------------------------------------

def _images(folder: Path, count: int) -> list[str]:
    rng = np.random.default_rng(11)
    paths = []
    for i in range(count):
        path = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (1200, 1000), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _score(url: str, images: list[str]) -> subprocess.Popen:
    """A real `msk score --shared-memory` run in its own process group (as a shell starts it)."""
    return subprocess.Popen(
        [MSK, "score", *images, "--url", url, "--shared-memory", "--concurrency", "4",
         "--no-progress"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True)


def _stopped_mid_run(proc: subprocess.Popen, rows: int = 2) -> subprocess.Popen:
    """Stop `proc`'s process group (SIGSTOP) once it printed `rows` rows: its regions exist
    and are registered; stopped, it can neither finish nor clean up, but it is alive."""
    for _ in range(rows):
        assert proc.stdout.readline(), "msk score ended before the test could stop it"
    os.killpg(proc.pid, signal.SIGSTOP)
    return proc


def _kill(procs: list[subprocess.Popen]) -> list[int]:
    """SIGKILL each run's whole process group (as a container stop does); their pids."""
    for proc in procs:
        os.killpg(proc.pid, signal.SIGKILL)
    for proc in procs:
        proc.wait(30)
    return [proc.pid for proc in procs]


def _owner(path: Path) -> int | None:
    match = _SCORE_FILE.match(path.name)
    return int(match.group(1)) if match else None


def _files_of(pids: list[int]) -> list[Path]:
    return sorted(p for p in SHM_ROOT.iterdir() if _owner(p) in pids)


def _dead_owners_files() -> list[Path]:
    """This user's `msk score` region files whose owner pid is dead now (any worker's)."""
    uid = os.geteuid()
    return [p for p in SHM_ROOT.iterdir() if (pid := _owner(p)) is not None
            and not pid_alive(pid) and p.lstat().st_uid == uid]


@contextlib.contextmanager
def _frozen(serve: ServeProcess) -> Iterator[None]:
    """`msk serve`'s own process (front door, supervisor, janitor) stopped, its tritonserver
    running: this serve cleans nothing up meanwhile."""
    os.kill(serve.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(serve.proc.pid, signal.SIGCONT)


def test_killed_clients_regions_are_removed_by_the_next_run_and_by_the_janitor(
        tiny_repository, tiny_triton, tmp_path) -> None:
    images = _images(tmp_path, 40)
    serve_args = ("serve", "--repository", str(tiny_repository), "--allow-client-shm")
    # The runs talk to msk serve (never SIGKILLed mid-request against a bare tritonserver 2.51:
    # it may segfault). `live` runs are stopped, never finished, and must keep their regions.
    procs: list[subprocess.Popen] = []
    try:
        with running_msk_serve(*serve_args) as first:
            live = _stopped_mid_run(_score(first.grpc_url, images), rows=1)
            procs.append(live)
            live_files = _files_of([live.pid])
            assert live_files, "the stopped run has regions"
            runs = [_stopped_mid_run(_score(first.grpc_url, images))
                    for _ in range(KILLED_CLIENTS)]
            procs += runs
            # (a) The next `msk score` run, with this serve's janitor frozen.
            with _frozen(first):
                killed = _kill(runs)
                left = _files_of(killed)
                assert {_owner(p) for p in left} == set(killed), (
                    f"every killed run left regions in {SHM_ROOT}: {left}")
                for path in left:
                    assert_private(path)               # a real run's regions, as nobody
                dead_before = _dead_owners_files()
                one = subprocess.run([MSK, "score", images[0], "--url", tiny_triton.grpc_url,
                                      "--no-progress"], cwd=REPO_ROOT, capture_output=True,
                                     text=True, timeout=300)
                assert one.returncode == 0, one.stderr
                assert "shared-memory region(s) left" in one.stderr, one.stderr
                assert _files_of(killed) == []
                assert _files_of([live.pid]) == live_files, "a live run's regions were touched"
                survivors = [p for p in dead_before if p.exists() and not pid_alive(_owner(p))]
                assert survivors == [], f"files of dead owners left by the next run: {survivors}"

            # (b) The janitor of another running msk serve: two runs killed against it (their
            # regions registered there) and `live`, killed now, registered with `first` only.
            with running_msk_serve(*serve_args) as second:
                live2 = _stopped_mid_run(_score(second.grpc_url, images), rows=1)
                procs.append(live2)
                live2_files = _files_of([live2.pid])
                runs = [_stopped_mid_run(_score(second.grpc_url, images)) for _ in range(2)]
                procs += runs
                killed = _kill(runs)
                with _frozen(first):
                    never_registered = _kill([live])[0]
                    assert _files_of([never_registered]), "the killed run's regions are there"
                    gone = [never_registered, *killed]
                    _wait(lambda: not _files_of(gone), 60,
                          "the janitor removes the dead runs' regions")
                assert _files_of([live2.pid]) == live2_files, "a live run's regions were touched"
                said = "\n".join(second.lines or [])
                assert (f"'{SCORE_SHM_PREFIX}{never_registered}_" in said
                        and "not registered, file removed" in said), said[-3000:]
                _kill([live2])
                assert second.triton_alive()
            assert first.triton_alive()
    finally:
        _kill([proc for proc in procs if proc.poll() is None])


def test_a_dead_pid_with_a_held_lock_keeps_its_region_and_a_zombie_is_dead() -> None:
    """The pid in a region's name is judged in this pid namespace only; a client in another
    container sharing /dev/shm says "alive" with its lock (`msk.process.hold_region`). And a
    zombie (killed, never reaped: PID 1 here reaps nobody) is dead."""
    from msk.process import hold_region, remove_dead_owners_regions

    zombie = subprocess.Popen(["sleep", "60"])
    prefix = f"msk_locktest_{os.getpid()}_"
    path = SHM_ROOT / f"{prefix}{zombie.pid}_0"
    try:
        zombie.send_signal(signal.SIGKILL)
        _wait(lambda: psutil.Process(zombie.pid).status() == psutil.STATUS_ZOMBIE, 30,
              "the killed child is a zombie")
        assert not pid_alive(zombie.pid)
        path.write_bytes(b"\0" * 4096)
        lock = hold_region(path)
        try:
            assert remove_dead_owners_regions(prefix) == []
            assert path.exists(), "a region whose owner holds its lock was removed"
        finally:
            os.close(lock)
        assert remove_dead_owners_regions(prefix) == [path]
        assert not path.exists()
    finally:
        zombie.wait(30)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def test_msk_score_never_puts_images_in_a_region_someone_else_created() -> None:
    """Another local user who guesses a slot's name (the first slot shows the run's prefix)
    and creates the file world-readable first must not receive the pixels: the slot refuses
    it instead of opening it."""
    from clients.batch import RequestFailed, _ShmSlot

    slot = _ShmSlot(f"{SCORE_SHM_PREFIX}{os.getpid()}_taken", 0)
    planted = Path(f"{SHM_ROOT}{slot.key}")
    planted.write_bytes(b"\0" * 4096)
    planted.chmod(0o666)
    try:
        with pytest.raises(RequestFailed, match="exists already and is not ours"):
            slot.ensure(1024)
        assert slot.handle is None and planted.read_bytes() == b"\0" * 4096
    finally:
        slot.destroy()
        planted.unlink()
