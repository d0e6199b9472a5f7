"""Shared memory is private (issue "Close the side doors", item 2): client shared memory is off
unless `msk serve --allow-client-shm`; when on, a client cannot register the server's own
python-backend memory nor unregister everyone's regions at once, and one local user can neither
register another user's region file nor see or remove the regions another user registered;
`msk score`'s regions are mode 0600, so user `nobody` cannot read the pixels in them. Against
the real `msk serve`.
The server's own regions, killed clients' leftovers and the janitor: tests/test_shm_private.py."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clients.batch import _ShmSlot
from tests.plugins.msk_serve import running_msk_serve
from tests.second_user import run_as_nobody

NOBODY_PROBE = r'''
import json, os, sys
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

url, root_key, root_name = sys.argv[1:4]
client = grpcclient.InferenceServerClient(url)
seen = {}

def attempt(label, call):
    try:
        call()
        seen[label] = "ok"
    except InferenceServerException as exc:
        seen[label] = f"{exc.status()}: {exc.message()}"

mine = f"msk_nobody_probe_{os.getpid()}"
fd = os.open(f"/dev/shm/{mine}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
os.ftruncate(fd, 4096)
try:
    attempt("register_own", lambda: client.register_system_shared_memory("nobodys", f"/{mine}",
                                                                        4096))
    attempt("register_roots_file", lambda: client.register_system_shared_memory(
        "stolen", root_key, 4096))
    attempt("unregister_roots", lambda: client.unregister_system_shared_memory(root_name))
    seen["status_names"] = sorted(client.get_system_shared_memory_status(as_json=True)
                                  .get("regions", {}))
    attempt("unregister_own", lambda: client.unregister_system_shared_memory("nobodys"))
finally:
    os.close(fd)
    os.unlink(f"/dev/shm/{mine}")
print(json.dumps(seen))
'''


def test_client_shared_memory_is_off_by_default(tiny_msk_serve) -> None:
    client = grpcclient.InferenceServerClient(tiny_msk_serve.grpc_url)
    for call in (client.get_system_shared_memory_status,
                 lambda: client.register_system_shared_memory("r", "/r", 64),
                 lambda: client.unregister_system_shared_memory("")):
        with pytest.raises(InferenceServerException, match="PERMISSION_DENIED.*allow-client-shm"):
            call()


def test_when_on_the_server_memory_and_everyones_regions_are_out_of_reach(
        tiny_repository: Path) -> None:
    with running_msk_serve("serve", "--repository", str(tiny_repository),
                           "--allow-client-shm") as serve:
        own = sorted(Path("/dev/shm").glob(f"msk_{serve.proc.pid}_*"))
        assert own, "the python backend's own regions of this msk serve"
        client = grpcclient.InferenceServerClient(serve.grpc_url)
        with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT.*server's own"):
            client.register_system_shared_memory("steal", f"/{own[0].name}", 1024)
        with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT.*names one"):
            client.unregister_system_shared_memory("")
        slot = _ShmSlot("msk_score_test_client", 0)      # a real client region, registered
        try:
            slot.ensure(4096)
            client.register_system_shared_memory(slot.name, slot.key, slot.size)
            client.unregister_system_shared_memory(slot.name)
        finally:
            slot.destroy()


def test_one_local_user_cannot_use_see_or_remove_anothers_regions(tiny_repository: Path) -> None:
    """The guard asks the kernel which user holds the caller's loopback socket
    (server/peer_identity.py): nobody registers its own region but not root's file, cannot
    remove root's registration, and its status lists its own regions only."""
    with running_msk_serve("serve", "--repository", str(tiny_repository),
                           "--allow-client-shm") as serve:
        client = grpcclient.InferenceServerClient(serve.grpc_url)
        slot = _ShmSlot("msk_score_owner_test", 0)
        try:
            slot.ensure(4096)
            client.register_system_shared_memory("roots", slot.key, 4096)
            seen = run_as_nobody(NOBODY_PROBE, serve.grpc_url, slot.key, "roots", site=True)
            assert seen["register_own"] == "ok" and seen["unregister_own"] == "ok", seen
            assert seen["register_roots_file"].startswith("StatusCode.PERMISSION_DENIED"), seen
            assert "belongs to another user" in seen["register_roots_file"]
            assert seen["unregister_roots"].startswith("StatusCode.PERMISSION_DENIED"), seen
            assert seen["status_names"] == ["nobodys"], seen
            assert "roots" in client.get_system_shared_memory_status(as_json=True)["regions"]
            client.unregister_system_shared_memory("roots")
        finally:
            slot.destroy()


def test_msk_score_regions_are_readable_by_their_owner_only() -> None:
    slot = _ShmSlot("msk_score_mode_test", 0)
    try:
        slot.ensure(1024)
        slot.write(np.full((16, 16), 200, np.uint8))
        path = Path(f"/dev/shm{slot.key}")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        nobody = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                 "head", "-c", "16", str(path)], capture_output=True, timeout=30)
        assert nobody.returncode != 0 and b"Permission denied" in nobody.stderr
    finally:
        slot.destroy()
