"""Which tritonserver bugs `msk serve` works around, and for which releases: the one table.

Why a table: the serving stack carries workarounds for Triton 2.51 (the release of the
nvidia-pytriton wheel on CPU hosts), and NVIDIA fixed those bugs in later releases. Each row
names the bug, the upstream fix and the first NGC release that carries it; `msk serve` reads the
running server's version (`GET /v2`, `server.serve`) and turns a workaround on only where the
release still needs it. What is policy, not a workaround, stays on for every release and is not
listed here: the shape and size limits of the front door, TLS, the restricted APIs, HTTP
inference off unless asked, the DICOM AE allow-lists.

Triton versions of NGC releases, as read in the server repository's release notes (see
../shared/FACTS.md): 24.10 = 2.51, 25.01 = 2.54, 25.04 = 2.57, 25.05 = 2.58, 26.09 = 2.73. A fix
first released in a month not in that list is decided at the first listed release known to carry
it (26.09 = 2.73, the release the server image pins), so a workaround is never dropped early; it
may stay on a few releases longer than strictly needed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Workaround:
    """One workaround of the serving stack and the upstream bug it exists for."""

    name: str
    does: str
    bug: str
    fix: str
    fixed_release: str
    """First NGC container release (YY.MM) with the fix."""
    fixed_version: tuple[int, int]
    """Triton version used for the decision: that release's, or a later listed one (module)."""

    def needed(self, version: tuple[int, int]) -> bool:
        return version < self.fixed_version


WORKAROUNDS: tuple[Workaround, ...] = (
    Workaround(
        "grpc-no-cancel",
        "the gRPC guard never cancels an upstream call (a client that leaves has its call run "
        "to the end and the answer dropped) and never hands Triton a deadline or a per-request "
        "`timeout`: it enforces a client's deadline and `timeout` parameter itself",
        "segfaults on gRPC client cancellation and deadlines (server#7368, #7877, #8034); "
        "per-request timeouts also left 2.51 with stuck models and ensemble requests "
        "(tests/test_deadline_stress.py)",
        "server#7840 (25.01), server#8078 (25.04), server#8220 (25.06) for the segfaults; the "
        "stuck requests are not traced to one upstream fix (on below 2.73 = 26.09, where the "
        "stress test runs on the forwarding path)",
        "25.06", (2, 73)),
    Workaround(
        "stub-watch",
        "StubWatch restarts tritonserver when a python-backend stub died while Triton still "
        "answers ready",
        "/v2/health/ready answers 200 while a python stub is dead (core#473)",
        "core#473", "26.04", (2, 73)),
)
"""Every workaround that depends on the Triton release (the policy parts are not here)."""

_VERSION = re.compile(r"^(\d+)\.(\d+)")


def parse_version(text: str) -> tuple[int, int]:
    """'2.51.0' -> (2, 51). Raises ValueError on anything else."""
    match = _VERSION.match(text.strip())
    if not match:
        raise ValueError(f"not a Triton version: {text!r}")
    return int(match.group(1)), int(match.group(2))


def needed(version: tuple[int, int]) -> frozenset[str]:
    """Names of the workarounds the release `version` still needs."""
    return frozenset(w.name for w in WORKAROUNDS if w.needed(version))


def describe(version: tuple[int, int]) -> str:
    """One line for the ready message: which workarounds are on, and why."""
    on = [w for w in WORKAROUNDS if w.needed(version)]
    release = f"tritonserver {version[0]}.{version[1]}"
    if not on:
        return f"{release}: no release workarounds needed"
    return f"{release}: workarounds on: " + "; ".join(
        f"{w.name} (until {w.fixed_release})" for w in on)


def markdown_table() -> str:
    """The table for the docs (README, docs/scale-out.md), generated from `WORKAROUNDS`."""
    rows = ["| workaround | what it does | bug | upstream fix | first fixed release | on below |",
            "|---|---|---|---|---|---|"]
    rows += [f"| `{w.name}` | {w.does} | {w.bug} | {w.fix} | {w.fixed_release} | Triton "
             f"{w.fixed_version[0]}.{w.fixed_version[1]} |" for w in WORKAROUNDS]
    return "\n".join(rows)
