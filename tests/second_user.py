"""Run a probe as a second, unprivileged local user (`nobody`), the way an attacker on the host
would: for the tests of what another user can read or reach (issue "close the side doors")."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


def run_as_nobody(code: str, *args: str, timeout: float = 60, site: bool = False) -> dict:
    """Run the Python `code` as user nobody (standard library only, unless `site`: then with
    this environment's packages); it prints one JSON object, returned here. Skips where this
    process cannot change user (not root)."""
    if os.geteuid() != 0:
        pytest.skip("acting as a second local user needs root (setpriv)")
    result = subprocess.run([*NOBODY, sys.executable, *(() if site else ("-S",)), "-c", code,
                             *args],
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
