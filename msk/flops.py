"""How fast this host can compute, and how much computing one image costs a served graph.

Why: a throughput number says little without the host's own ceiling beside it. The ceiling is
what numpy's BLAS reaches on a square FP32 matrix product on every core; an exported graph's
cost is counted from its Conv/Gemm/MatMul nodes. `bench/bench_mura.py` and `msk bench` read
every images/s against these two, measured in the same run. numpy only (onnx inside the
function that reads a graph), so the shared layer stays light.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

PEAK_SIZE = 2048
"""The matrix side of the peak measurement (bench/README.md's figures are at 2048^3)."""
SHORT_PEAK_SIZE = 1024
"""A quicker peak (`msk bench --short`): a little below the 2048^3 figure on most hosts."""


def matmul_peak_gflops(n: int = PEAK_SIZE, repeats: int = 10) -> float:
    """The FP32 peak this machine reaches on the most favourable kernel: a square matrix
    product in numpy's BLAS on every core (best of `repeats`). Measure it before PyTorch or
    ONNX Runtime run in this process: their spinning threads lower it (FACTS: ~95 vs ~150)."""
    rng = np.random.default_rng(0)
    a, b = (rng.random((n, n), dtype=np.float32) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def graph_gflop(path: Path) -> float:
    """GFLOP of one image through an exported graph (batch 1): 2 x multiply-adds of every Conv,
    Gemm and MatMul, from ONNX shape inference. Everything else is a rounding error here."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path))
    for tensor in (*model.graph.input, *model.graph.output):
        dims = tensor.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].dim_value = 1
    model = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*model.graph.value_info, *model.graph.input, *model.graph.output)}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    macs = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0])
        if not out:
            continue
        if node.op_type == "Conv":
            _, cin_per_group, *kernel = shapes[node.input[1]]
            macs += int(np.prod(out)) * cin_per_group * int(np.prod(kernel))
        elif node.op_type in ("Gemm", "MatMul"):
            a = shapes[node.input[0]]
            transposed = node.op_type == "Gemm" and any(
                att.name == "transA" and att.i for att in node.attribute)
            macs += int(np.prod(out)) * (a[0] if transposed else a[-1])
    return 2 * macs / 1e9
