"""wrist_postprocess (Triton python backend): NMS, then boxes back to original pixels.

Copied by `export.wrist_repository` as `model.py` into every version of the wrist_postprocess
model, next to `_vendored/msk/` (msk/constants.py and msk/wrist_geometry.py at export time): the
model then needs neither this package installed in the serving container nor a PYTHONPATH, and a
version keeps the exact code it was exported with. The geometry and the NMS are
`msk.wrist_geometry` (the code training and the tests use); tensor names are `msk.constants`.
"""

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parent / "_vendored"))
from msk.constants import (  # noqa: E402 - importable only once _vendored is on the path
    BOXES_TENSOR,
    CLASSES_TENSOR,
    GEOMETRY_TENSOR,
    SCORES_TENSOR,
    WRIST_POSTPROCESS_MODEL,
    WRIST_PROVENANCE_TENSOR,
)
from msk.python_step import execute_each  # noqa: E402
from msk.wrist_geometry import (  # noqa: E402
    StudyLetterbox,
    decode_detections,
    detector_letterbox,
)


class TritonPythonModel:
    """Decodes both detectors' raw heads of one request into boxes, class names and scores."""

    def initialize(self, args: dict) -> None:
        here = Path(args["model_repository"]) / args["model_version"]
        self.params = json.loads((here / "params.json").read_text())
        self.box = detector_letterbox(self.params["in_h"], self.params["in_w"])
        self.provenance = json.dumps(self.params["provenance"], sort_keys=True).encode()

    def _one(self, request) -> "pb_utils.InferenceResponse":
        geo = StudyLetterbox.from_vector(
            pb_utils.get_input_tensor_by_name(request, GEOMETRY_TENSOR).as_numpy())
        boxes, scores, names = [], [], []
        for det in self.params["detectors"]:
            raw = pb_utils.get_input_tensor_by_name(request, det["input"]).as_numpy()
            raw = raw.reshape(raw.shape[-2], raw.shape[-1])
            b, s, c = decode_detections(raw, self.params["conf"], self.params["iou"],
                                        self.params["max_det"])
            boxes.append(geo.inverse(self.box.inverse(b)))
            scores.append(s.astype(np.float32))
            names.extend(det["names"][int(k)] for k in c)
        out_boxes = np.concatenate(boxes).astype(np.float32).reshape(-1, 4)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(BOXES_TENSOR, out_boxes),
            pb_utils.Tensor(SCORES_TENSOR, np.concatenate(scores).astype(np.float32)),
            pb_utils.Tensor(CLASSES_TENSOR,
                            np.array([n.encode() for n in names], dtype=np.object_)),
            pb_utils.Tensor(WRIST_PROVENANCE_TENSOR,
                            np.array([self.provenance], dtype=np.object_)),
        ])

    def execute(self, requests: list) -> list:
        return execute_each(requests, self._one, WRIST_POSTPROCESS_MODEL, pb_utils)
