"""Client system shared memory at the front door: who may register, see and remove which region.

Why: Triton 2.51 lets any caller register any `/dev/shm` name (the python backend's own pool
included: its images could be read and written through it), list every client's regions, and
remove every region with one empty-name call. With `msk serve --allow-client-shm` the gRPC guard
applies this policy (off, client shared memory is refused altogether):
  * never the server's own regions (`SERVER_REGION`) and never CUDA shared memory;
  * a region must exist and hold the registered range (else INVALID_ARGUMENT naming the key;
    Triton says INTERNAL);
  * a caller whose local user the kernel names (server/peer_identity.py) registers only region
    files its own user owns, and removes or sees only the regions its own user registered; a
    caller from outside this host's network namespace is known by its address instead;
  * unregister names one region (an empty name means "everyone's").
"""

from __future__ import annotations

import os
import re
import threading

from server.peer_identity import Peer

SHM_ROOT = "/dev/shm"
SHM_METHODS = frozenset({"SystemSharedMemoryStatus", "SystemSharedMemoryRegister",
                         "SystemSharedMemoryUnregister", "CudaSharedMemoryStatus",
                         "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister"})
"""Client shared memory: off unless `msk serve --allow-client-shm` (as Triton itself defaults
from 26.0x, server#8721); when on, `ShmPolicy` applies."""
SERVER_REGION = re.compile(r"^/?msk_\d+_[0-9a-f]{8}_")
"""The python backend's own regions (server.launcher's shm prefix): never a client's."""


class ShmRefused(ValueError):
    """A shared-memory call this server does not allow; `permission`: it is somebody else's
    (PERMISSION_DENIED) rather than malformed (INVALID_ARGUMENT)."""

    def __init__(self, message: str, permission: bool = False) -> None:
        super().__init__(message)
        self.permission = permission


def region_size(key: str) -> os.stat_result:
    """The stat of an existing POSIX shared-memory object named `key`."""
    name = key.lstrip("/")
    if not name or "/" in name or name in (".", ".."):
        raise ShmRefused(f"shared-memory key {key!r} is not a POSIX shared-memory name (one "
                         "name, like /msk_score_123_0)")
    try:
        return os.stat(os.path.join(SHM_ROOT, name))
    except FileNotFoundError:
        raise ShmRefused(f"shared-memory key {key!r} does not exist on the server's host "
                         "(create it with shm_open before registering)") from None


def _same(a: Peer, b: Peer) -> bool:
    if a.uid is not None or b.uid is not None:
        return a.uid == b.uid
    return a.host == b.host


class ShmPolicy:
    """The rules of the module docstring, with the owner of every region registered through
    the front door (the guard lives as long as `msk serve`)."""

    def __init__(self) -> None:
        self._owners: dict[str, Peer] = {}
        self._lock = threading.Lock()

    def check(self, method: str, raw: bytes, peer: Peer) -> None:
        """Raise ShmRefused unless `peer` may make the call."""
        from tritonclient.grpc import service_pb2 as pb

        if method.startswith("CudaSharedMemory"):
            raise ShmRefused("CUDA shared memory is not offered by this server")
        if method == "SystemSharedMemoryRegister":
            request = pb.SystemSharedMemoryRegisterRequest.FromString(raw)
            if SERVER_REGION.match(request.key):
                raise ShmRefused(f"shared-memory key {request.key!r} is the server's own "
                                 "memory, not a client region")
            found = region_size(request.key)
            if request.byte_size <= 0 or request.offset + request.byte_size > found.st_size:
                raise ShmRefused(f"shared-memory key {request.key!r}: offset {request.offset} "
                                 f"+ byte_size {request.byte_size} is outside the region's "
                                 f"{found.st_size} bytes")
            if peer.uid not in (None, 0, found.st_uid):
                raise ShmRefused(f"shared-memory key {request.key!r} belongs to another user: "
                                 "register regions your own user created", permission=True)
        elif method == "SystemSharedMemoryUnregister":
            request = pb.SystemSharedMemoryUnregisterRequest.FromString(raw)
            if not request.name:
                raise ShmRefused("unregister names one region: an empty name would remove "
                                 "every client's regions")
            with self._lock:
                owner = self._owners.get(request.name)
            if owner is not None and not _same(owner, peer):
                raise ShmRefused(f"shared-memory region {request.name!r} was registered by "
                                 "another client; only its owner removes it", permission=True)

    def answered(self, method: str, raw: bytes, response: bytes, peer: Peer) -> bytes:
        """Record the owner of a registered region, forget an unregistered one, and show a
        status caller only its own regions; returns the response to send."""
        from tritonclient.grpc import service_pb2 as pb

        if method == "SystemSharedMemoryRegister":
            with self._lock:
                self._owners[pb.SystemSharedMemoryRegisterRequest.FromString(raw).name] = peer
        elif method == "SystemSharedMemoryUnregister":
            with self._lock:
                self._owners.pop(pb.SystemSharedMemoryUnregisterRequest.FromString(raw).name,
                                 None)
        elif method == "SystemSharedMemoryStatus":
            status = pb.SystemSharedMemoryStatusResponse.FromString(response)
            with self._lock:
                theirs = [name for name in status.regions
                          if name not in self._owners or not _same(self._owners[name], peer)]
            for name in theirs:
                del status.regions[name]
            return status.SerializeToString()
        return response
