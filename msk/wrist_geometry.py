"""Geometry of the wrist study's preprocessing, and detection decoding, in plain numpy.

Why one module: training (label transforms), the Triton postprocessing model (mapping detector
boxes back to the original radiograph), the clients and the tests must agree to the pixel, so the
arithmetic lives here once. It is import-light (numpy + `msk.constants`) because the generated
postprocessing model copies it next to its `model.py` and clients import it.

Two stages, both exactly invertible:

1. **Study letterbox** (the YOLO wrist study): drop the top 3/7 of the rows (`crop_top_rows`:
   `(WRIST_CROP_TOP_NUMERATOR * H) // WRIST_CROP_TOP_DENOMINATOR`, integer so that numpy and the
   ONNX graph agree), resize keeping
   the aspect ratio to fit `WRIST_HEIGHT x WRIST_WIDTH` (1400 x 760), centre on a black canvas.
   All sizes are computed with integers (round half up), so the ONNX graph reproduces them exactly.
   A box edge at x maps to `x * new_w / w + pad_left` (edges, not pixel centres, so the transform
   is exact for `cv2.resize`'s half-pixel convention).
2. **Detector letterbox** (what Ultralytics' `LetterBox` does at predict time): the 1400 x 760
   canvas is resized by `r = min(H_in / 1400, W_in / 760)` and padded with grey 114 to the export
   size `H_in x W_in` (a multiple of 32, e.g. 1408 x 768). Its inverse copies Ultralytics'
   `scale_boxes` (8.4: per-axis gains of the rounded resize) so that served boxes match the
   in-process predictor.

Pixels arrive here already as uint8: 16-bit input is windowed by the one radiograph reader
(`msk.imaging.to_uint8`, the image's own minimum and maximum map to 0 and 255).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from msk.constants import (  # noqa: F401 - the wrist names are re-exported for callers
    BOXES_TENSOR,
    CLASSES_TENSOR,
    DETECTOR_PAD_VALUE,
    GEOMETRY_FIELDS,
    SCORES_TENSOR,
    WRIST_BONES_MODEL,
    WRIST_CONF_THRESHOLD,
    WRIST_CROP_TOP_DENOMINATOR,
    WRIST_CROP_TOP_NUMERATOR,
    WRIST_HEIGHT,
    WRIST_JOINTS_MODEL,
    WRIST_MAX_DETECTIONS,
    WRIST_NMS_IOU,
    WRIST_POSTPROCESS_MODEL,
    WRIST_PREPROCESS_MODEL,
    WRIST_PROVENANCE_TENSOR,
    WRIST_WIDTH,
)

_NMS_MAX_WH = 7680  # Ultralytics' class offset for class-aware NMS in one pass


def crop_top_rows(orig_h: int) -> int:
    """Rows the study crops off the top of an `orig_h`-row radiograph: the top 3/7, rounded down
    with integer arithmetic (the ONNX preprocessing graph does the same with int64 ops)."""
    return (WRIST_CROP_TOP_NUMERATOR * orig_h) // WRIST_CROP_TOP_DENOMINATOR




@dataclass(frozen=True)
class StudyLetterbox:
    """Crop + aspect-preserving resize + centred black padding to WRIST_HEIGHT x WRIST_WIDTH."""

    orig_h: int
    orig_w: int
    crop_top: int
    new_h: int
    new_w: int
    pad_top: int
    pad_left: int
    out_h: int = WRIST_HEIGHT
    out_w: int = WRIST_WIDTH

    @property
    def crop_h(self) -> int:
        return self.orig_h - self.crop_top

    @property
    def scale_x(self) -> float:
        return self.new_w / self.orig_w

    @property
    def scale_y(self) -> float:
        return self.new_h / self.crop_h

    def as_vector(self) -> np.ndarray:
        """INT64 vector in `GEOMETRY_FIELDS` order (the preprocessing model's GEOMETRY output)."""
        return np.array([getattr(self, f) for f in GEOMETRY_FIELDS], np.int64)

    @classmethod
    def from_vector(cls, vector: np.ndarray) -> StudyLetterbox:
        values = [int(v) for v in np.asarray(vector).reshape(-1)[: len(GEOMETRY_FIELDS)]]
        return cls(**dict(zip(GEOMETRY_FIELDS, values, strict=True)))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def forward(self, boxes: np.ndarray) -> np.ndarray:
        """Original-pixel xyxy boxes -> canvas xyxy boxes (not clipped)."""
        b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
        b[:, [0, 2]] = b[:, [0, 2]] * self.scale_x + self.pad_left
        b[:, [1, 3]] = (b[:, [1, 3]] - self.crop_top) * self.scale_y + self.pad_top
        return b

    def inverse(self, boxes: np.ndarray, clip: bool = True) -> np.ndarray:
        """Canvas xyxy -> original-pixel xyxy; `clip` keeps them inside the rows kept."""
        b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
        b[:, [0, 2]] = (b[:, [0, 2]] - self.pad_left) / self.scale_x
        b[:, [1, 3]] = (b[:, [1, 3]] - self.pad_top) / self.scale_y + self.crop_top
        if clip:
            b[:, [0, 2]] = b[:, [0, 2]].clip(0, self.orig_w)
            b[:, [1, 3]] = b[:, [1, 3]].clip(self.crop_top, self.orig_h)
        return b


def study_letterbox(orig_h: int, orig_w: int, out_h: int = WRIST_HEIGHT,
                    out_w: int = WRIST_WIDTH) -> StudyLetterbox:
    """Parameters of the study letterbox for an image of `orig_h x orig_w` pixels.

    Integer arithmetic only (the ONNX graph repeats it with int64 ops): the limiting side fills
    the canvas exactly, the other is rounded half up and kept within [1, canvas].
    """
    if orig_h < 2 or orig_w < 1:
        raise ValueError(f"image of {orig_h}x{orig_w} pixels is too small for the wrist crop")
    crop_top = crop_top_rows(orig_h)
    ch = orig_h - crop_top
    if out_h * orig_w <= out_w * ch:      # height-limited
        new_h = out_h
        new_w = (2 * orig_w * out_h + ch) // (2 * ch)
    else:                                  # width-limited
        new_w = out_w
        new_h = (2 * ch * out_w + orig_w) // (2 * orig_w)
    new_h = min(max(new_h, 1), out_h)
    new_w = min(max(new_w, 1), out_w)
    return StudyLetterbox(orig_h, orig_w, crop_top, new_h, new_w,
                          (out_h - new_h) // 2, (out_w - new_w) // 2, out_h, out_w)


@dataclass(frozen=True)
class DetectorLetterbox:
    """Ultralytics `LetterBox(new_shape=(in_h, in_w), auto=False, scaleup=True, center=True)`
    applied to the study canvas, and its `scale_boxes` inverse."""

    src_h: int
    src_w: int
    in_h: int
    in_w: int

    @property
    def ratio(self) -> float:
        return min(self.in_h / self.src_h, self.in_w / self.src_w)

    @property
    def resized(self) -> tuple[int, int]:
        """(height, width) after resizing, as Ultralytics rounds it."""
        r = self.ratio
        return max(round(self.src_h * r), 1), max(round(self.src_w * r), 1)

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) grey padding, as Ultralytics' LetterBox computes it."""
        nh, nw = self.resized
        dh, dw = (self.in_h - nh) / 2, (self.in_w - nw) / 2
        top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
        left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
        return top, bottom, left, right

    def inverse(self, boxes: np.ndarray) -> np.ndarray:
        """Detector-input xyxy -> canvas xyxy, as `ultralytics.utils.ops.scale_boxes` (per-axis
        gains of the rounded resize, clipped to the canvas)."""
        b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
        nh, nw = self.resized
        gain_y, gain_x = nh / self.src_h, nw / self.src_w
        pad_x = round((self.in_w - nw) / 2 - 0.1)
        pad_y = round((self.in_h - nh) / 2 - 0.1)
        b[:, [0, 2]] = (b[:, [0, 2]] - pad_x) / gain_x
        b[:, [1, 3]] = (b[:, [1, 3]] - pad_y) / gain_y
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, self.src_w)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, self.src_h)
        return b


def detector_letterbox(in_h: int, in_w: int) -> DetectorLetterbox:
    return DetectorLetterbox(WRIST_HEIGHT, WRIST_WIDTH, in_h, in_w)


def export_size(imgsz: int, stride: int = 32) -> tuple[int, int]:
    """Detector input (height, width) for a training `imgsz` (the long side): the canvas scaled to
    that long side, each side rounded up to the stride. imgsz=1400 -> 1408 x 768 (the serving size),
    320 -> 320 x 192."""
    long_side = -(-imgsz // stride) * stride
    short = WRIST_WIDTH * long_side / WRIST_HEIGHT
    return long_side, int(-(-round(short) // stride) * stride)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes a [N,4] and b [M,4] -> [N,M]."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy NMS (torchvision semantics: drop boxes with IoU > iou), indices by falling score."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        overlaps = iou_matrix(boxes[i:i + 1], boxes[order[1:]])[0]
        order = order[1:][overlaps <= iou]
    return np.array(keep, np.int64)


def decode_detections(raw: np.ndarray, conf: float = WRIST_CONF_THRESHOLD,
                      iou: float = WRIST_NMS_IOU, max_det: int = WRIST_MAX_DETECTIONS,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw YOLO head output [4 + nc, A] (cx, cy, w, h, class scores) -> (boxes xyxy
    [N,4] in detector-input pixels, scores [N], class indices [N]), as Ultralytics'
    `non_max_suppression` (class-aware, best class per anchor, score > conf, IoU > iou dropped)."""
    pred = np.asarray(raw, np.float32)
    if pred.ndim == 3:
        pred = pred[0]
    cls_scores = pred[4:]
    best = cls_scores.argmax(0)
    score = cls_scores.max(0)
    keep = score > conf
    xywh = pred[:4, keep].T.astype(np.float32)
    boxes = np.empty_like(xywh)
    boxes[:, 0] = xywh[:, 0] - xywh[:, 2] / 2
    boxes[:, 1] = xywh[:, 1] - xywh[:, 3] / 2
    boxes[:, 2] = xywh[:, 0] + xywh[:, 2] / 2
    boxes[:, 3] = xywh[:, 1] + xywh[:, 3] / 2
    score, best = score[keep], best[keep]
    order = np.argsort(-score, kind="stable")[:30000]
    boxes, score, best = boxes[order], score[order], best[order]
    shifted = boxes.astype(np.float64) + best[:, None].astype(np.float64) * _NMS_MAX_WH
    idx = _nms(shifted, score.astype(np.float64), iou)[:max_det]
    return boxes[idx].astype(np.float64), score[idx], best[idx].astype(np.int64)
