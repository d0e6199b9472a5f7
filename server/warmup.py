"""Warm before ready: one full request through every pipeline before the front door opens.

Why: Triton cannot warm an ensemble (`model_warmup` is refused for ensembles, server#6326,
request #6877 still open), and its members initialise lazily (ONNX Runtime plans its first run,
the python-based backends import and allocate on their first request). Without this the first
user request pays all of that at once. `msk serve` therefore sends one synthetic radiograph
through every READY ensemble (every member of a pipeline runs in it) on Triton's loopback port,
and reports ready only after each answered. bench/bench_front_door.py measures the first request
against the steady state.
"""

from __future__ import annotations

import time

import numpy as np


def ensembles(client) -> list[str]:
    """Names of the READY ensembles (the pipelines), asked through `client`
    (tritonclient.grpc, `TritonServer.grpc_client()`)."""
    index = client.get_model_repository_index(as_json=True, client_timeout=30)
    names = sorted({m["name"] for m in index.get("models", []) if m.get("state") == "READY"})
    return [name for name in names
            if client.get_model_config(name, as_json=True, client_timeout=30)["config"]
            .get("platform") == "ensemble"]


def warm_up(client, timeout_s: float = 600.0) -> dict[str, float]:
    """One request per pipeline with a synthetic radiograph through `client`; seconds each
    took. Raises (tritonclient's InferenceServerException) when a pipeline cannot answer."""
    import tritonclient.grpc as grpcclient

    from msk.constants import IMAGE_TENSOR, WARMUP_PARAMETER
    from msk.samples import radiograph

    image = (radiograph(512, 400, 0) * 255).astype(np.uint8)
    took: dict[str, float] = {}
    for name in ensembles(client):
        pixels = grpcclient.InferInput(IMAGE_TENSOR, list(image.shape), "UINT8")
        pixels.set_data_from_numpy(image)
        start = time.perf_counter()
        client.infer(name, [pixels], client_timeout=timeout_s,
                     parameters={WARMUP_PARAMETER: True})
        took[name] = time.perf_counter() - start
    return took
