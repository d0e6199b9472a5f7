"""Notice a model that stopped serving while tritonserver still says "ready".

Why: when a python-backend stub process dies (tritonserver 2.51 lets one die on a request whose
shape overflows its byte-size check, and an OOM killer can take one), Triton keeps
`/v2/health/ready` and model-ready true while every request to that model fails with "Stub
process ... is not healthy". Each model instance runs in its own `triton_python_backend_stub`
process whose command line names the model's file (`<repo>/<model>/<version>/model.*`); so a
stub that is gone (or a zombie) means a model that cannot serve.

`StubWatch` is a health check for `server.supervisor.Supervisor`: it returns a reason when a
stub present at (re)start has died, and the supervisor restarts tritonserver (readiness is false
while it does; `msk_serve_triton_restarts_total{reason="unhealthy"}` counts it).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import psutil

STUB_NAME = "triton_python_backend_stub"


def stub_models(root_pid: int) -> Counter[tuple[str, str]]:
    """(model, version) -> number of live python-backend stubs under process `root_pid`."""
    found: Counter[tuple[str, str]] = Counter()
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return found
    for child in children:
        try:
            if child.name() != STUB_NAME or child.status() == psutil.STATUS_ZOMBIE:
                continue
            model_file = Path(child.cmdline()[1])
        except (psutil.Error, IndexError):
            continue
        found[(model_file.parent.parent.name, model_file.parent.name)] += 1
    return found


def served_models(client) -> set[tuple[str, str]]:
    """(model, version) of every READY model that runs in a stub (all but ensembles), asked
    through `client` (tritonclient.grpc, `TritonServer.grpc_client()`)."""
    index = client.get_model_repository_index(as_json=True, client_timeout=10)
    ready = {(m["name"], m.get("version", "")) for m in index.get("models", [])
             if m.get("state") == "READY"}
    return {(name, version) for name, version in ready
            if client.get_model_config(name, as_json=True, client_timeout=10)["config"]
            .get("platform") != "ensemble"}


class StubWatch:
    """Health check: None while every served model has a live stub, else a reason.

    What must be there is asked from Triton once per (re)start (its READY models), not taken from
    a snapshot, so a stub that dies just after the server became ready is noticed too."""

    def __init__(self) -> None:
        self._pid: int | None = None
        self._expected: set[tuple[str, str]] = set()

    def __call__(self, server) -> str | None:
        if server.process is None:
            return None
        if server.process.pid != self._pid:           # first look after a (re)start
            client = server.grpc_client()
            try:
                self._expected = served_models(client)
            except Exception:  # noqa: BLE001 - why: not answering yet, look again next poll
                return None
            finally:
                client.close()
            self._pid = server.process.pid
        live = stub_models(server.process.pid)
        dead = sorted(key for key in self._expected if live[key] < 1)
        if not dead:
            return None
        self._pid = None                               # the restart takes a fresh baseline
        names = ", ".join(f"{model} (version {version})" for model, version in dead)
        return f"the python-backend process of {names} died; it cannot serve until reloaded"
