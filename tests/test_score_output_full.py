"""`msk score` when its output cannot grow (issue "Close the side doors", item 6): past
`ulimit -f` (EFBIG, as a full disk gives ENOSPC) it prints one line naming the file and the error,
exits 4 without a traceback, and `--resume` then finishes the run with every image once. Against
the real tritonserver, as a user runs the command."""

from __future__ import annotations

import json
import resource
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from msk.samples import radiograph
from tests.msk_process import MSK


def _limit_file_size(limit: int):
    def apply() -> None:            # Python ignores SIGXFSZ: the write fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_output_is_one_clear_line_and_resume_finishes(tiny_triton, tmp_path: Path):
    images = []
    for i in range(6):
        images.append(tmp_path / f"img{i}.png")
        Image.fromarray((radiograph(300 + 9 * i, 260, i) * 255).astype(np.uint8)).save(images[-1])
    out = tmp_path / "scores.jsonl"
    command = [str(MSK), "score", *map(str, images), "--url", tiny_triton.grpc_url, "--out",
               str(out), "--no-stdout", "--concurrency", "1"]
    full = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          preexec_fn=_limit_file_size(1500))
    assert full.returncode == 4, full.stderr[-2000:]
    assert "Traceback" not in full.stderr
    lines = [line for line in full.stderr.splitlines() if "cannot write" in line]
    assert len(lines) == 1 and str(out) in lines[0] and "File too large" in lines[0], lines
    assert "--resume" in lines[0]
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    assert sorted(row["input"] for row in rows) == sorted(map(str, images))
