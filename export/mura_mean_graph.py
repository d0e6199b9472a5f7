"""The ensemble's averaging step as an ONNX graph (`mura_mean`).

Inputs: each member's PROBABILITY [1, 1] and CAM [1, h, w] (the backbones' per-request outputs).
Outputs: PROBABILITY [1] (mean of members), MEMBER_PROBABILITIES [n] (MURA_MEMBERS order),
HEATMAP uint8 [S, S] = 255 * sigmoid(mean_m((CAM_m + b_m) / T_m)) upsampled bilinearly, and
PROVENANCE [1] (a JSON string constant: member versions, artifact SHA-256, operating points).
With reference statistics (`export.ood_stats.Reference`, every served version has them) it also
takes each member's FEATURES [1, D] and gives OOD_SCORE [1] (the mean over members of their
scaled Mahalanobis distances, the numbers `Reference.score` computes) and MEMBER_SPREAD [1]
(max - min of the member probabilities): the out-of-distribution gate costs no second pass.

The members' head biases and temperatures are baked in as constants at export time, so the graph
always matches the backbone versions it was exported with; provenance travels in the same response
as the probabilities, which is what lets every result name the exact models that produced it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.ood_stats import MemberGaussians, Reference
from msk.constants import (
    HEATMAP_TENSOR,
    MEMBER_PROBABILITIES_TENSOR,
    MEMBER_SPREAD_TENSOR,
    MURA_IMAGE_SIZE,
    OOD_SCORE_TENSOR,
    PROBABILITY_TENSOR,
    PROVENANCE_TENSOR,
    member_cam_tensor,
    member_features_tensor,
    member_probability_tensor,
)
from msk.graphs import onnx_model


def build_mean_graph(members: list[str], biases: list[float], temperatures: list[float],
                     cam_size: int, provenance_json: str,
                     image_size: int = MURA_IMAGE_SIZE,
                     ood: Reference | None = None) -> onnx.ModelProto:
    """Build the checked averaging graph for the given members (order = output order).

    `ood=None` leaves out the features and the OOD outputs (the INT8 accuracy gate's copy, which
    compares probabilities only)."""
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
    if ood is not None:
        for index, member in enumerate(members):
            n_inits, n_nodes = _member_distance(member, ood.members[member], f"ood{index}")
            inits += n_inits
            nodes += n_nodes
            dim = ood.members[member].means.shape[1]
            inputs.append(helper.make_tensor_value_info(member_features_tensor(member),
                                                        TensorProto.FLOAT, [1, dim]))
        nodes += [
            helper.make_node("Concat", [f"ood{i}_d" for i in range(n)], ["ood_all"], axis=0),
            helper.make_node("ReduceMean", ["ood_all", "axis0"], [OOD_SCORE_TENSOR],
                             keepdims=1),
            helper.make_node("ReduceMax", [MEMBER_PROBABILITIES_TENSOR], ["p_max"], keepdims=1),
            helper.make_node("ReduceMin", [MEMBER_PROBABILITIES_TENSOR], ["p_min"], keepdims=1),
            helper.make_node("Sub", ["p_max", "p_min"], [MEMBER_SPREAD_TENSOR]),
        ]
        outputs += [helper.make_tensor_value_info(OOD_SCORE_TENSOR, TensorProto.FLOAT, [1]),
                    helper.make_tensor_value_info(MEMBER_SPREAD_TENSOR, TensorProto.FLOAT, [1])]
    graph = helper.make_graph(nodes, "mura_mean", inputs, outputs, initializer=inits)
    model = onnx_model(graph)
    onnx.checker.check_model(model, full_check=True)
    return model


def _member_distance(member: str, g: MemberGaussians, prefix: str
                     ) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]]:
    """Nodes computing `MemberGaussians.distance` of FEATURES [1, D] into `<prefix>_d` [1].

    diff [C, D] = features - means; proj = diff @ U; resid = diff - proj @ U^T;
    d = min over classes of (sum(proj^2 / var) + sum(resid^2) / residual_var) / scale.
    The residual is formed explicitly (not |diff|^2 - |proj|^2) because float32 would cancel."""
    def const(name: str, value) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value, np.float32), f"{prefix}_{name}")

    inits = [const("means", g.means), const("u", g.components), const("ut", g.components.T),
             const("inv_var", 1.0 / g.variances), const("inv_res", 1.0 / g.residual_variance),
             const("inv_scale", [1.0 / g.scale]),
             numpy_helper.from_array(np.array([1], np.int64), f"{prefix}_axis1")]
    p = prefix
    nodes = [
        helper.make_node("Sub", [member_features_tensor(member), f"{p}_means"], [f"{p}_diff"]),
        helper.make_node("MatMul", [f"{p}_diff", f"{p}_u"], [f"{p}_proj"]),
        helper.make_node("MatMul", [f"{p}_proj", f"{p}_ut"], [f"{p}_back"]),
        helper.make_node("Sub", [f"{p}_diff", f"{p}_back"], [f"{p}_resid"]),
        helper.make_node("Mul", [f"{p}_proj", f"{p}_proj"], [f"{p}_proj2"]),
        helper.make_node("Mul", [f"{p}_proj2", f"{p}_inv_var"], [f"{p}_white"]),
        helper.make_node("ReduceSum", [f"{p}_white", f"{p}_axis1"], [f"{p}_in"], keepdims=0),
        helper.make_node("ReduceSumSquare", [f"{p}_resid", f"{p}_axis1"], [f"{p}_off2"],
                         keepdims=0),
        helper.make_node("Mul", [f"{p}_off2", f"{p}_inv_res"], [f"{p}_off"]),
        helper.make_node("Add", [f"{p}_in", f"{p}_off"], [f"{p}_per_class"]),
        helper.make_node("ReduceMin", [f"{p}_per_class"], [f"{p}_min"], keepdims=1),
        helper.make_node("Mul", [f"{p}_min", f"{p}_inv_scale"], [f"{p}_d"]),
    ]
    return inits, nodes
