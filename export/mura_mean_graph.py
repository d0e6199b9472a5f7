"""The ensemble's averaging step as an ONNX graph (`mura_mean`).

Inputs: each member's PROBABILITY [1, 1] and CAM [1, h, w] (the backbones' per-request outputs).
Outputs: PROBABILITY [1] (mean of members), MEMBER_PROBABILITIES [n] (MURA_MEMBERS order),
HEATMAP uint8 [S, S] = 255 * sigmoid(mean_m((CAM_m + b_m) / T_m)) upsampled bilinearly, and
PROVENANCE [1] (a JSON string constant: member versions, artifact SHA-256, operating points).

The members' head biases and temperatures are baked in as constants at export time, so the graph
always matches the backbone versions it was exported with; provenance travels in the same response
as the probabilities, which is what lets every result name the exact models that produced it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from msk.constants import (
    HEATMAP_TENSOR,
    MEMBER_PROBABILITIES_TENSOR,
    MURA_IMAGE_SIZE,
    PROBABILITY_TENSOR,
    PROVENANCE_TENSOR,
    member_cam_tensor,
    member_probability_tensor,
)
from msk.graphs import onnx_model


def build_mean_graph(members: list[str], biases: list[float], temperatures: list[float],
                     cam_size: int, provenance_json: str,
                     image_size: int = MURA_IMAGE_SIZE) -> onnx.ModelProto:
    """Build the checked averaging graph for the given members (order = output order)."""
    n = len(members)
    inits = [
        numpy_helper.from_array(np.array(biases, np.float32).reshape(n, 1, 1), "biases"),
        numpy_helper.from_array(np.array(temperatures, np.float32).reshape(n, 1, 1), "temps"),
        numpy_helper.from_array(np.array([n], np.int64), "n_shape"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(np.array([1, 1, image_size, image_size], np.int64), "heat_size"),
        numpy_helper.from_array(np.array([image_size, image_size], np.int64), "heat_shape"),
        numpy_helper.from_array(np.array(255.0, np.float32), "c255"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        helper.make_tensor(PROVENANCE_TENSOR + "_const", TensorProto.STRING, [1],
                           [provenance_json.encode()]),
    ]
    nodes = [
        helper.make_node("Concat", [member_probability_tensor(m) for m in members], ["probs_n1"],
                         axis=0),
        helper.make_node("Reshape", ["probs_n1", "n_shape"], [MEMBER_PROBABILITIES_TENSOR]),
        helper.make_node("ReduceMean", [MEMBER_PROBABILITIES_TENSOR, "axis0"],
                         [PROBABILITY_TENSOR], keepdims=1),
        helper.make_node("Concat", [member_cam_tensor(m) for m in members], ["cams"], axis=0),
        helper.make_node("Add", ["cams", "biases"], ["cams_b"]),
        helper.make_node("Div", ["cams_b", "temps"], ["cams_t"]),
        helper.make_node("ReduceMean", ["cams_t", "axis0"], ["cam_mean"], keepdims=1),
        helper.make_node("Sigmoid", ["cam_mean"], ["cam_sig"]),
        helper.make_node("Unsqueeze", ["cam_sig", "axis0"], ["cam_4d"]),
        helper.make_node("Resize", ["cam_4d", "", "", "heat_size"], ["heat_up"], mode="linear",
                         coordinate_transformation_mode="half_pixel"),
        helper.make_node("Mul", ["heat_up", "c255"], ["heat_255"]),
        helper.make_node("Add", ["heat_255", "half"], ["heat_round"]),   # round half up
        helper.make_node("Floor", ["heat_round"], ["heat_floor"]),
        helper.make_node("Reshape", ["heat_floor", "heat_shape"], ["heat_2d"]),
        helper.make_node("Cast", ["heat_2d"], [HEATMAP_TENSOR], to=TensorProto.UINT8),
        helper.make_node("Identity", [PROVENANCE_TENSOR + "_const"], [PROVENANCE_TENSOR]),
    ]
    inputs = []
    for m in members:
        inputs.append(helper.make_tensor_value_info(member_probability_tensor(m),
                                                    TensorProto.FLOAT, [1, 1]))
        inputs.append(helper.make_tensor_value_info(member_cam_tensor(m), TensorProto.FLOAT,
                                                    [1, cam_size, cam_size]))
    outputs = [
        helper.make_tensor_value_info(PROBABILITY_TENSOR, TensorProto.FLOAT, [1]),
        helper.make_tensor_value_info(MEMBER_PROBABILITIES_TENSOR, TensorProto.FLOAT, [n]),
        helper.make_tensor_value_info(HEATMAP_TENSOR, TensorProto.UINT8,
                                      [image_size, image_size]),
        helper.make_tensor_value_info(PROVENANCE_TENSOR, TensorProto.STRING, [1]),
    ]
    graph = helper.make_graph(nodes, "mura_mean", inputs, outputs, initializer=inits)
    model = onnx_model(graph)
    onnx.checker.check_model(model, full_check=True)
    return model
