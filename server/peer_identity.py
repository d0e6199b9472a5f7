"""Which local user is on the other end of a loopback gRPC connection.

Why: client shared memory is a same-host feature, and a region is a file with an owner. The
gRPC guard lets a client register only a region file its own user owns, and unregister only
regions its own user registered (issue "close the side doors", item 2), so one local user cannot
point Triton at another user's pixels or remove another client's regions. gRPC says only
`ipv4:127.0.0.1:54321`; the kernel's socket table (/proc/net/tcp, tcp6) says which uid owns
the socket with that local address. A peer outside this network namespace (another container
publishing to this one) is not in the table: its identity is its address instead.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from pathlib import Path

TCP_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))


@dataclass(frozen=True)
class Peer:
    """A gRPC caller: its uid where the kernel says, else only its host address."""

    host: str
    uid: int | None

    def __str__(self) -> str:
        return f"uid {self.uid}" if self.uid is not None else f"host {self.host}"


def parse_peer(peer: str) -> tuple[str, int] | None:
    """("127.0.0.1", 54321) from gRPC's `ipv4:127.0.0.1:54321` / `ipv6:[::1]:54321`."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), int(port)


def _hex_address(host: str, port: int) -> str:
    """An address as /proc/net/tcp* spells it (host byte order words, upper-case hex)."""
    packed = ipaddress.ip_address(host).packed
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


def socket_uid(host: str, port: int) -> int | None:
    """The uid owning the local TCP socket `host:port` in this network namespace, or None."""
    wanted = {_hex_address(host, port)}
    mapped = ipaddress.ip_address(host)
    if mapped.version == 4:                          # a v4 client of a v6 listener
        wanted.add(_hex_address(f"::ffff:{host}", port))
    for table in TCP_TABLES:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 7 and fields[1] in wanted:
                return int(fields[7])
    return None


def identify(peer: str) -> Peer:
    """The `Peer` behind gRPC's peer string."""
    parsed = parse_peer(peer)
    if parsed is None:
        return Peer(peer, None)
    host, port = parsed
    loopback = ipaddress.ip_address(host).is_loopback or host == "::ffff:127.0.0.1"
    return Peer(host, socket_uid(host, port) if loopback else None)
