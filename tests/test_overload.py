"""Overload and abandoned work (issue 11, item 2), against the real tritonserver on loopback.

Every composing model has a bounded queue with a timeout policy (export/configs.py
`queue_policy`), and our backend drops requests whose client is gone. So when a crowd of clients
floods the server and is then SIGKILLed, the backlog they leave is bounded: a fresh request is
served within its own (generous) timeout instead of waiting behind minutes of dead work, and
while the flood lasts the excess is answered UNAVAILABLE at once rather than queued.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

import numpy as np
import pytest

from clients.mura import MuraClient
from export.configs import QUEUE_MAX_SIZE
from server.launcher import TritonServer

FLOODERS = 6
REQUESTS_EACH = 128
FLOOD_IMAGE = (2000, 1600)
"""Large enough that preprocessing dominates: the backlog of 768 such requests is minutes of work
on these cores, far beyond the fresh request's timeout, unless queues are bounded."""

_FLOODER = textwrap.dedent("""
    import asyncio, sys
    import numpy as np
    import tritonclient.grpc as g
    import tritonclient.grpc.aio as ga

    async def main(url, n, h, w):
        client = ga.InferenceServerClient(url)
        image = np.random.default_rng(0).integers(0, 255, (h, w), dtype=np.uint8)
        async def one():
            inp = g.InferInput("IMAGE", [h, w], "UINT8")
            inp.set_data_from_numpy(image)
            try:
                await client.infer("mura_ensemble", [inp])
                return "ok"
            except Exception as exc:
                return "unavailable" if "UNAVAILABLE" in str(exc) else "error"
        tasks = [asyncio.ensure_future(one()) for _ in range(n)]
        print("sent", flush=True)
        for done in asyncio.as_completed(tasks):
            print(await done, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
""")


def _metric(url: str, name: str, model: str | None = None) -> float:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and (model is None or f'model="{model}"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _outcomes(folder) -> list[str]:
    return re.findall(r"^(ok|unavailable|error)$", "".join(
        p.read_text() for p in sorted(folder.glob("flooder*.log"))), re.M)


@pytest.fixture()
def flood_server(tiny_repository):
    with TritonServer(tiny_repository) as server:
        yield server
        assert server.running, f"tritonserver crashed under the flood:\n{server.log_tail(30)}"


def test_flood_then_killed_clients_leave_a_bounded_backlog(flood_server, tmp_path):
    url = flood_server.grpc_url
    flooders = []
    logs = []
    for i in range(FLOODERS):
        log = (tmp_path / f"flooder{i}.log").open("w")
        logs.append(log)
        flooders.append(subprocess.Popen(
            [sys.executable, "-c", _FLOODER, url, str(REQUESTS_EACH), *map(str, FLOOD_IMAGE)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    try:
        # Wait until answers come back to the flooders and the server holds a backlog.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            answered = len(_outcomes(tmp_path))
            if answered >= FLOODERS * 4 and _metric(flood_server.metrics_url,
                                                    "nv_inference_pending_request_count") > 0:
                break
            time.sleep(0.5)
        pending_before_kill = _metric(flood_server.metrics_url,
                                      "nv_inference_pending_request_count", "mura_preprocess")
    finally:
        for proc in flooders:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        for log in logs:
            log.close()
    outcomes = _outcomes(tmp_path)
    # Bounded queue: the excess was refused with UNAVAILABLE while the flood lasted.
    assert outcomes.count("unavailable") > 0, outcomes[:20]
    assert pending_before_kill <= QUEUE_MAX_SIZE + 1

    # A fresh request after the kill is served within its timeout (the dead backlog is bounded).
    image = np.random.default_rng(1).integers(0, 255, (512, 512), dtype=np.uint8)
    with MuraClient(url, timeout_s=30) as client:
        (result,) = client.score([image])
    assert result.error is None, result.error
    assert flood_server.is_ready()
