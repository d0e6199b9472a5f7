"""Graceful drain: SIGTERM to one of two replicas loses nothing, doubles nothing, crashes nothing.

Two `msk serve` replicas of the tiny repository. Twelve `msk score` clients of replica A are
SIGKILLed mid-request (their calls keep running inside Triton 2.51: the `grpc-no-cancel`
workaround), while eight live `msk score` clients score their own images against both replicas
(`--url A --url B`). Replica A gets SIGTERM while they run: its readiness turns false, new
requests are answered UNAVAILABLE at the front door and go to B, calls in flight (the killed
clients' too) finish, then tritonserver stops. Every live client's every image is scored exactly
once, replica A exits 0 after saying it drained, and no server printed `Signal (11)` (2.51
segfaulted on SIGTERM with dead clients' requests still in flight before the drain existed).
Loopback only; bounded in count (20 clients, 8 x 10 images) and time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
from PIL import Image

from msk.samples import radiograph
from tests.msk_process import MSK
from tests.plugins.msk_serve import running_msk_serve

LIVE_CLIENTS = 8
KILLED_CLIENTS = 12
IMAGES_PER_CLIENT = 10


def _images(folder: Path, count: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        pixels = (radiograph(380 + 7 * i, 300 + 5 * i, seed * 100 + i) * 255).astype(np.uint8)
        paths.append(folder / f"img{i:02d}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def _score(paths: list[Path], urls: list[str], out: Path) -> subprocess.Popen:
    flags = [arg for url in urls for arg in ("--url", url)]
    return subprocess.Popen([str(MSK), "score", *map(str, paths), *flags, "--concurrency", "2",
                             "--retry-for", "120", "--no-stdout", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_sigterm_drains_one_replica_and_the_clients_lose_nothing(tiny_repository: Path,
                                                                 tmp_path: Path) -> None:
    with running_msk_serve("serve", "--repository", str(tiny_repository),
                           "--drain-timeout", "60") as a, \
            running_msk_serve("serve", "--repository", str(tiny_repository)) as b:
        doomed = [_score(_images(tmp_path / f"killed{k}", 4, 50 + k), [a.grpc_url],
                         tmp_path / f"killed{k}.jsonl") for k in range(KILLED_CLIENTS)]
        live_inputs = [_images(tmp_path / f"live{k}", IMAGES_PER_CLIENT, k)
                       for k in range(LIVE_CLIENTS)]
        live = [_score(paths, [a.grpc_url, b.grpc_url], tmp_path / f"live{k}.jsonl")
                for k, paths in enumerate(live_inputs)]
        time.sleep(2.0)                                   # the killed ones are mid-request
        for proc in doomed:
            proc.kill()
            proc.wait(30)
        time.sleep(0.5)
        os.kill(a.proc.pid, signal.SIGTERM)                # as Kubernetes does, mid-run
        assert a.proc.wait(180) == 0, "".join(a.lines[-40:])
        for k, proc in enumerate(live):
            assert proc.wait(300) == 0, proc.stderr.read()[-2000:]
            rows = [json.loads(line) for line in
                    (tmp_path / f"live{k}.jsonl").read_text().splitlines() if line.strip()]
            scored = sorted(row["input"] for row in rows)
            assert scored == sorted(map(str, live_inputs[k])), f"client {k}: {scored}"
            assert all(row.get("error") is None for row in rows), rows
        assert b.triton_alive()
        a_log = "".join(a.lines)
        assert "msk serve: draining" in a_log and "msk serve: stopped" in a_log
    for replica in (a, b):
        assert "Signal (11)" not in "".join(replica.lines)
