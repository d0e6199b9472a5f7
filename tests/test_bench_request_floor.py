"""bench/bench_request_floor.py runs end to end and accounts for a request's time (issue 23
item 5). No timing is asserted: only that every part of the breakdown is there, comes from the
server's own counters, and adds up to what the client saw."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from msk.constants import (
    MURA_DRIFT_MODEL,
    MURA_ENSEMBLE_MODEL,
    MURA_MEAN_MODEL,
    MURA_MEMBERS,
    MURA_PREPROCESS_MODEL,
)

ROOT = Path(__file__).resolve().parents[1]


def test_request_floor_breaks_a_mura_request_down() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_request_floor.py"),
                           "--pipeline", "mura", "--requests", "4", "--warmup", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert "ISA:" in lines[0]
    (run,) = json.loads(lines[-1])["runs"]
    assert run["pipeline"] == "mura"
    assert [s["step"] for s in run["steps"]] == [MURA_PREPROCESS_MODEL, *MURA_MEMBERS,
                                                 MURA_MEAN_MODEL, MURA_DRIFT_MODEL]
    for step in run["steps"]:
        # Triton counted this step for the timed requests (its counters moved), and compute
        # is part of the request's time there; the ONNX steps also ran in-process (the
        # python drift step has no graph to run: "-").
        assert step["request_ms"] > 0, step
        assert (step["in_process_ms"] is None) == (step["step"] == MURA_DRIFT_MODEL), step
        assert step["in_process_ms"] is None or step["in_process_ms"] > 0, step
        assert step["compute_ms"] <= step["request_ms"] + 1e-6, step
    assert run["ensemble_request_ms"] >= run["critical_path_ms"] * 0.5
    parts = run["guard_ms"] + run["client_bare_triton_ms"]
    assert parts == pytest.approx(run["client_front_door_ms"])
    assert MURA_ENSEMBLE_MODEL not in {s["step"] for s in run["steps"]}
