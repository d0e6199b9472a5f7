"""Overload and abandoned work, against the real tritonserver on loopback.

Every composing model has a bounded queue with a timeout policy (export/configs.py
`queue_policy`): past it, a request is answered UNAVAILABLE at once instead of waiting minutes.
Behind `msk serve`, a crowd of clients that floods the server and is then SIGKILLed leaves a
bounded backlog (and, through the guard, never reaches tritonserver 2.51's cancellation crash):
a fresh request is served within its own timeout and the same tritonserver keeps running.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpc_aio

from msk.constants import MURA_ENSEMBLE_MODEL
from server.launcher import TritonServer
from tests.plugins.msk_serve import running_msk_serve

FLOODERS = 6
REQUESTS_EACH = 128
FLOOD_IMAGE = (2000, 1600)
"""Large enough that preprocessing dominates: 768 such requests are minutes of work on these
cores, far beyond the fresh request's timeout, unless the backlog is bounded."""

_FLOODER = textwrap.dedent("""
    import asyncio, sys
    import numpy as np
    import tritonclient.grpc as g
    import tritonclient.grpc.aio as ga
    from tritonclient.utils import InferenceServerException
    from clients.errors import status_code

    async def main(url, n, h, w):
        client = ga.InferenceServerClient(url)
        image = np.random.default_rng(0).integers(0, 255, (h, w), dtype=np.uint8)
        async def one():
            inp = g.InferInput("IMAGE", [h, w], "UINT8")
            inp.set_data_from_numpy(image)
            try:
                await client.infer("mura_ensemble", [inp])
                return "ok"
            except InferenceServerException as exc:
                return "unavailable" if status_code(exc) == "UNAVAILABLE" else "error"
        tasks = [asyncio.ensure_future(one()) for _ in range(n)]
        for done in asyncio.as_completed(tasks):
            print(await done, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
""")


def _metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{"))


def _outcomes(folder) -> list[str]:
    return re.findall(r"^(ok|unavailable|error)$", "".join(
        p.read_text() for p in sorted(folder.glob("flooder*.log"))), re.M)


def test_excess_requests_are_answered_unavailable_not_queued(tiny_repository):
    async def flood(url: str, n: int) -> list[str]:
        client = grpc_aio.InferenceServerClient(url)
        image = np.random.default_rng(0).integers(0, 255, (1200, 1000), dtype=np.uint8)

        async def one() -> str:
            inp = grpcclient.InferInput("IMAGE", list(image.shape), "UINT8")
            inp.set_data_from_numpy(image)
            try:
                await client.infer(MURA_ENSEMBLE_MODEL, [inp])
                return "ok"
            except Exception as exc:  # noqa: BLE001 - classified below
                return str(exc)
        try:
            return await asyncio.gather(*(one() for _ in range(n)))
        finally:
            await client.close()

    with TritonServer(tiny_repository) as server:
        answers = asyncio.run(flood(server.grpc_url, 400))
        assert server.running, server.log_tail(20)
    refused = [a for a in answers if a != "ok"]
    assert refused, "every request of the flood was queued: the queue has no bound"
    assert all("UNAVAILABLE" in a and "Exceeds maximum queue size" in a for a in refused), \
        refused[:3]
    assert answers.count("ok") > 0


def test_flood_then_killed_clients_leave_a_bounded_backlog(tiny_repository, tmp_path):
    with running_msk_serve("serve", "--repository", str(tiny_repository)) as serve:
        flooders, logs = [], []
        for i in range(FLOODERS):
            log = (tmp_path / f"flooder{i}.log").open("w")
            logs.append(log)
            flooders.append(subprocess.Popen(
                [sys.executable, "-c", _FLOODER, serve.grpc_url, str(REQUESTS_EACH),
                 *map(str, FLOOD_IMAGE)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        try:
            # Kill them mid-flood: answers are arriving and the server holds a backlog.
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                if (len(_outcomes(tmp_path)) >= FLOODERS * 4
                        and _metric(serve.metrics_url, "nv_inference_pending_request_count") > 0):
                    break
                time.sleep(0.5)
        finally:
            for proc in flooders:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
            for log in logs:
                log.close()
        answered = _outcomes(tmp_path)
        assert answered and len(answered) < FLOODERS * REQUESTS_EACH, "no backlog was built"

        # A fresh `msk score` (which backs off and retries UNAVAILABLE) is served within a
        # bounded time: the dead backlog is at most the bounded queues' worth.
        from PIL import Image

        fresh = tmp_path / "fresh.png"
        Image.fromarray(np.random.default_rng(1).integers(0, 255, (512, 512), dtype=np.uint8)
                        ).save(fresh)
        score = subprocess.run(
            [sys.executable, "-m", "msk.cli", "score", str(fresh), "--url", serve.grpc_url,
             "--retry-for", "60", "--timeout", "30", "--no-progress"],
            capture_output=True, text=True, timeout=300)
        row = json.loads(score.stdout.splitlines()[0])
        assert score.returncode == 0 and not row.get("error"), (row, score.stderr[-500:])
        assert 0.0 <= float(row["probability"]) <= 1.0
        assert serve.triton_alive(), "tritonserver crashed or was restarted after the kill"
