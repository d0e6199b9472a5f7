"""Where an artifact came from: the source commit, recorded by training and by export.

In the shared layer because both training (checkpoint metadata) and export (manifest, response
provenance) record it, and training must not import export. Standard library only.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def current_commit() -> str:
    """The source commit, or "unknown" outside a git checkout (recorded, never required)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10, check=False)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"
