"""Shared memory is private (issue "Close the side doors", item 2, in part): client shared memory
is off unless `msk serve --allow-client-shm`; when on, a client cannot register the server's own
python-backend memory nor unregister everyone's regions at once; `msk score`'s regions are mode
0600, so user `nobody` cannot read the pixels in them. Against the real `msk serve`.
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
