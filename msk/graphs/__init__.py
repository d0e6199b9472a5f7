"""ONNX graphs shared by training and serving (onnx only, no torch).

Why here and not in `export/`: training runs the very graphs that serving runs
(`training.mura_preprocess`, the wrist parity tests), and the data path runs one way (training never
imports export), so the graphs live in the shared layer both may import.
"""

from __future__ import annotations

import onnx
from onnx import helper

from msk.constants import ONNX_IR_VERSION, ONNX_OPSET


def onnx_model(graph: onnx.GraphProto) -> onnx.ModelProto:
    """Wrap a graph built with `onnx.helper` as a model of our one opset and IR version."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="msk-triton")
    model.ir_version = ONNX_IR_VERSION
    return model
