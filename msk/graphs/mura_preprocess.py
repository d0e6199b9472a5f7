"""The MURA preprocessing as an ONNX graph: the single definition used by serving and training.

any-size grayscale UINT8 [H, W]  ->  FP32 [1, 3, S, S]
  resize to S x S (bilinear, antialiased, half-pixel centres), / 255, gray replicated to 3 channels.

Why a graph and not Python: in a GPU deployment the graph runs next to the backbones on the GPU
(ONNX Runtime / TensorRT), so the only thing crossing the network is the small uint8 image. Training
runs the same graph through onnxruntime (`training.mura_preprocess`), so there is nothing to keep in
sync. The leading 1 lets this non-batching model feed the dynamically batched backbones inside the
ensemble (their per-request shape is [1, 3, S, S]).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from msk.constants import IMAGE_TENSOR, MURA_CHANNELS, MURA_IMAGE_SIZE, PIXELS_TENSOR
from msk.graphs import onnx_model


def build_preprocess_graph(image_size: int = MURA_IMAGE_SIZE) -> onnx.ModelProto:
    """Return the checked ONNX model for a given square output size."""
    consts = [
        helper.make_tensor("scale_255", TensorProto.FLOAT, [], [255.0]),
        helper.make_tensor("axes_01", TensorProto.INT64, [2], [0, 1]),
        helper.make_tensor("out_sizes", TensorProto.INT64, [4], [1, 1, image_size, image_size]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("rgb_shape", TensorProto.INT64, [4],
                           [1, MURA_CHANNELS, image_size, image_size]),
    ]
    nodes = [
        helper.make_node("Cast", [IMAGE_TENSOR], ["image_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["image_f", "axes_01"], ["image_nchw"]),
        helper.make_node(
            "Resize", ["image_nchw", "", "", "out_sizes"], ["resized"],
            mode="linear", antialias=1, coordinate_transformation_mode="half_pixel",
        ),
        helper.make_node("Div", ["resized", "scale_255"], ["scaled"]),
        # Antialiased linear filtering cannot overshoot, but float rounding can graze the bounds.
        helper.make_node("Clip", ["scaled", "zero", "one"], ["clipped"]),
        helper.make_node("Expand", ["clipped", "rgb_shape"], [PIXELS_TENSOR]),
    ]
    graph = helper.make_graph(
        nodes, "mura_preprocess",
        inputs=[helper.make_tensor_value_info(IMAGE_TENSOR, TensorProto.UINT8,
                                              ["height", "width"])],
        outputs=[helper.make_tensor_value_info(
            PIXELS_TENSOR, TensorProto.FLOAT, [1, MURA_CHANNELS, image_size, image_size])],
        initializer=consts,
    )
    model = onnx_model(graph)
    onnx.checker.check_model(model, full_check=True)
    return model
