"""The wrist preprocessing (crop 3/7 + letterbox + CLAHE + detector letterbox) as one ONNX graph.

Why an ONNX graph and not a python model on GPU tensors (DLPack): a graph runs wherever the
detectors run - Triton's native ONNX Runtime backend (CPU or CUDA EP) or TensorRT on the GPU, and
our python-based ORT backend on this CPU machine - with no torch/cupy in the serving container and
no device round trip; the same file is the CPU and the GPU implementation. Every op used here is a
plain tensor op supported by ORT's CPU and CUDA providers and by TensorRT (Shape, Slice, integer
arithmetic, Range, Gather, Pad, Equal, CumSum, Round, Clip, ConstantOfShape, and ScatterElements
with reduction "add", which TensorRT's ONNX parser maps to its ScatterElements plugin, 8.6+).

Bit-exact with the reference, by construction:
* study resize: bilinear with cv2's INTER_LINEAR rule written out as Gather/Mul/Add in float32,
  the same ops in the same order as `training.wrist_preprocess.resize_linear`;
* CLAHE: each 175 x 95 tile's 256-bin histogram is one scatter-add of the canvas (a 1 per pixel
  at tile * 256 + level; integer counts, exact in float32 in any order). Clipping and
  redistribution of the excess, the LUT (`round(cdf * 255 / tile_pixels)`, half to even like
  `cv::saturate_cast`) and the bilinear blend of the four neighbouring tiles' LUTs follow
  OpenCV's `clahe.cpp` with its float32 blend weights. The canvas is fixed (1400 x 760,
  divisible by the 8 x 8 grid), so tile sizes, clip limit and weights are constants;
* detector letterbox: OpenCV's fixed-point uint8 resize (what Ultralytics' predictor calls),
  emulated in int32, then grey-114 padding as Ultralytics' `LetterBox`.

Inputs/outputs (see `msk.wrist_geometry` for the geometry):
  IMAGE     UINT8 [H, W]          raw grayscale radiograph, any size (16-bit: windowed by client)
  PIXELS    FP32  [1, 3, h, w]    detector input (h x w = export size, e.g. 1408 x 768), 0..1
  GEOMETRY  INT64 [7]             orig_h, orig_w, crop_top, new_h, new_w, pad_top, pad_left
  CANVAS    UINT8 [1400, 760]     (only with `debug=True`) the CLAHE canvas, for parity tests
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from msk.constants import (
    DETECTOR_PAD_VALUE,
    GEOMETRY_FIELDS,
    GEOMETRY_TENSOR,
    IMAGE_TENSOR,
    PIXELS_TENSOR,
    WRIST_CANVAS_TENSOR,
    WRIST_CLAHE_CLIP_LIMIT,
    WRIST_CLAHE_GRID,
    WRIST_CROP_TOP_DENOMINATOR,
    WRIST_CROP_TOP_NUMERATOR,
    WRIST_HEIGHT,
    WRIST_WIDTH,
)
from msk.graphs import onnx_model
from msk.wrist_geometry import detector_letterbox


class _Graph:
    """Tiny helper: unique names, constants, nodes."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def _name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, value, dtype=None, hint: str = "c") -> str:
        arr = np.asarray(value, dtype=dtype)
        name = self._name(hint)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, *inputs: str, hint: str | None = None, **attrs) -> str:
        out = self._name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def i64(self, v) -> str:
        return self.const(v, np.int64, "i")

    def f32(self, v) -> str:
        return self.const(v, np.float32, "f")


def _clahe_constants(height: int, width: int, tiles_y: int, tiles_x: int):
    """OpenCV's per-pixel tile indices and blend weights (float32, as in clahe.cpp)."""
    th, tw = height // tiles_y, width // tiles_x

    def axis(n: int, tile: int, count: int):
        inv = np.float32(1.0) / np.float32(tile)
        f = np.arange(n, dtype=np.float32) * inv - np.float32(0.5)
        t1 = np.floor(f).astype(np.int64)
        a = (f - t1.astype(np.float32)).astype(np.float32)
        a1 = (np.float32(1.0) - a).astype(np.float32)
        return np.maximum(t1, 0), np.minimum(t1 + 1, count - 1), a, a1

    tx1, tx2, xa, xa1 = axis(width, tw, tiles_x)
    ty1, ty2, ya, ya1 = axis(height, th, tiles_y)
    return (tx1, tx2, xa, xa1), (ty1, ty2, ya, ya1)


def _histograms(g: _Graph, canvas_f: str, vi: str, height: int, width: int, tiles_y: int,
                tiles_x: int) -> str:
    """Each tile's 256-bin histogram, [tiles_y * tiles_x, 256] float32, of an INT64 canvas of
    grey levels: one scatter-add (`ScatterElements`, reduction "add", opset 16+) of a 1 per pixel
    at `tile * 256 + level`, the tile's offset a constant per row plus one per column.

    Why this shape: a one-hot formulation (compare every pixel with the bins, then sum or MatMul)
    touches ~2.7e8 elements per image and was most of the served request's time; the scatter
    touches each pixel once, as OpenCV's `calcHist` does. The counts are integers below 2^24, so
    float32 sums are exact in any order (threads, GPU atomics). The scatter target is as long as
    the flattened canvas and sliced to its first tiles * 256 bins afterwards, because TensorRT's
    ONNX parser refuses a ScatterElements whose indices are larger than its data along an axis
    (onnx-tensorrt issue 953, TensorRT 8.6)."""
    n_tiles, pixels = tiles_y * tiles_x, height * width
    if pixels < n_tiles * 256:
        raise ValueError("the canvas is smaller than its histograms")
    th, tw = height // tiles_y, width // tiles_x
    row_offset = g.i64((np.arange(height) // th * tiles_x * 256)[:, None])
    col_offset = g.i64((np.arange(width) // tw * 256)[None, :])
    bins = g.op("Reshape", g.op("Add", g.op("Add", row_offset, col_offset), vi), g.i64([pixels]))
    size = g.i64([pixels])
    zeros = g.op("ConstantOfShape", size, value=numpy_helper.from_array(np.zeros(1, np.float32)))
    ones = g.op("ConstantOfShape", size, value=numpy_helper.from_array(np.ones(1, np.float32)))
    counts = g.op("ScatterElements", zeros, bins, ones, axis=0, reduction="add")
    counts = g.op("Slice", counts, g.i64([0]), g.i64([n_tiles * 256]), g.i64([0]))
    return g.op("Reshape", counts, g.i64([n_tiles, 256]))


def _histograms_one_hot(g: _Graph, canvas_f: str, vi: str, height: int, width: int,
                        tiles_y: int, tiles_x: int) -> str:
    """The same histograms as `_histograms`, the way this graph computed them before (2026-12):
    a 16 x 16 joint histogram of (v // 16, v % 16) per tile as one-hot(high)^T @ one-hot(low),
    a batched MatMul. Kept only in the previous construction (`CLAHE_CONSTRUCTIONS["one_hot"]`);
    never served (it costs ~2.7e8 elements per image)."""
    th, tw = height // tiles_y, width // tiles_x
    n_tiles, tile_px = tiles_x * tiles_y, th * tw
    t = g.op("Reshape", canvas_f, g.i64([tiles_y, th, tiles_x, tw]))
    t = g.op("Transpose", t, perm=[0, 2, 1, 3])
    t = g.op("Reshape", t, g.i64([n_tiles, tile_px]))
    hi = g.op("Floor", g.op("Div", t, g.f32(16.0)))
    lo = g.op("Sub", t, g.op("Mul", hi, g.f32(16.0)))
    levels = g.f32(np.arange(16, dtype=np.float32))
    oh = g.op("Cast", g.op("Equal", g.op("Unsqueeze", hi, g.i64([-1])), levels),
              to=TensorProto.FLOAT)
    ol = g.op("Cast", g.op("Equal", g.op("Unsqueeze", lo, g.i64([-1])), levels),
              to=TensorProto.FLOAT)
    hist = g.op("MatMul", g.op("Transpose", oh, perm=[0, 2, 1]), ol)       # [T, 16, 16]
    return g.op("Reshape", hist, g.i64([n_tiles, 256]))


def _neighbour_luts(g: _Graph, lut: str, vi: str, ty: tuple[np.ndarray, np.ndarray],
                    tx: tuple[np.ndarray, np.ndarray], tiles_x: int) -> list[str]:
    """Per pixel, the LUT values of its four neighbouring tiles (ty1/tx1, ty1/tx2, ty2/tx1,
    ty2/tx2, as `clahe.cpp` names them), each [H, W] float32, from `lut` [tiles, 256].

    Why one Gather and not four: a pixel's neighbour tiles depend only on its region (which
    pair of tile rows, which pair of tile columns: 9 x 9 regions on an 8 x 8 grid), so the four
    LUTs of each region are interleaved into one table [regions * 256, 4] (built from the
    64 x 256 LUTs, small) and each pixel fetches its four values with one index; ORT's Gather
    costs per index, so this is a quarter of four 1-element gathers over the canvas."""
    pairs_y, region_y = np.unique(np.stack(ty, axis=1), axis=0, return_inverse=True)
    pairs_x, region_x = np.unique(np.stack(tx, axis=1), axis=0, return_inverse=True)
    tiles = np.array([[y1 * tiles_x + x1, y1 * tiles_x + x2, y2 * tiles_x + x1,
                       y2 * tiles_x + x2]
                      for y1, y2 in pairs_y for x1, x2 in pairs_x], dtype=np.int64)
    table = g.op("Transpose", g.op("Gather", lut, g.i64(tiles), axis=0), perm=[0, 2, 1])
    table = g.op("Reshape", table, g.i64([len(tiles) * 256, 4]))            # [R * 256, 4]
    row = g.i64((region_y.reshape(-1) * len(pairs_x) * 256)[:, None])
    col = g.i64((region_x.reshape(-1) * 256)[None, :])
    four = g.op("Gather", table, g.op("Add", g.op("Add", row, col), vi), axis=0)  # [H, W, 4]
    four = g.op("Transpose", four, perm=[2, 0, 1])                             # [4, H, W]
    return [g.op("Gather", four, g.i64(k), axis=0) for k in range(4)]


def _neighbour_luts_by_four_gathers(g: _Graph, lut: str, vi: str,
                                    ty: tuple[np.ndarray, np.ndarray],
                                    tx: tuple[np.ndarray, np.ndarray], tiles_x: int) -> list[str]:
    """The same four values as `_neighbour_luts`, the way this graph fetched them before
    (2026-12): one Gather over the canvas per neighbour tile. Kept only with
    `_histograms_one_hot`, as the previous construction (reference and bench baseline)."""
    flat = g.op("Reshape", lut, g.i64([-1]))
    rows = [g.i64((t * tiles_x * 256)[:, None]) for t in ty]
    cols = [g.i64((t * 256)[None, :]) for t in tx]
    return [g.op("Gather", flat, g.op("Add", g.op("Add", row, col), vi), axis=0)
            for row in rows for col in cols]


CLAHE_CONSTRUCTIONS = {
    "scatter": (_histograms, _neighbour_luts),
    "one_hot": (_histograms_one_hot, _neighbour_luts_by_four_gathers),
}
"""How `build_preprocess_graph` computes CLAHE's histograms and fetches the LUTs it blends:
"scatter" is served; "one_hot" is the construction served until 2026-12-03, kept only as the
reference the served one must equal bit for bit (tests) and as the bench's baseline. Both give
the same values; only their cost differs."""


def _clahe(g: _Graph, canvas_f: str, height: int, width: int, construction: str) -> str:
    """CLAHE of a float canvas holding integer grey levels 0..255 -> float levels 0..255."""
    tiles_x, tiles_y = (int(t) for t in WRIST_CLAHE_GRID)  # OpenCV's Size(width, height) order
    if height % tiles_y or width % tiles_x:
        raise ValueError("the canvas must divide into the CLAHE grid")
    th, tw = height // tiles_y, width // tiles_x
    tile_px = th * tw
    clip = max(int(WRIST_CLAHE_CLIP_LIMIT * tile_px / 256), 1)

    vi = g.op("Cast", canvas_f, to=TensorProto.INT64)
    histograms, neighbour_luts = CLAHE_CONSTRUCTIONS[construction]
    hist = histograms(g, canvas_f, vi, height, width, tiles_y, tiles_x)     # [T, 256]

    clip_c = g.f32(float(clip))
    excess = g.op("ReduceSum", g.op("Relu", g.op("Sub", hist, clip_c)), g.i64([1]), keepdims=1)
    hist = g.op("Min", hist, clip_c)
    batch = g.op("Floor", g.op("Div", excess, g.f32(256.0)))
    residual = g.op("Sub", excess, g.op("Mul", batch, g.f32(256.0)))
    hist = g.op("Add", hist, batch)
    step = g.op("Max", g.op("Floor", g.op("Div", g.f32(256.0),
                                          g.op("Max", residual, g.f32(1.0)))), g.f32(1.0))
    k = g.op("Div", g.f32(np.arange(256, dtype=np.float32)[None, :]), step)
    extra = g.op("And", g.op("Equal", g.op("Floor", k), k), g.op("Less", k, residual))
    hist = g.op("Add", hist, g.op("Cast", extra, to=TensorProto.FLOAT))
    cdf = g.op("CumSum", hist, g.i64(1))
    lut_scale = np.float32(255.0) / np.float32(tile_px)
    lut = g.op("Clip", g.op("Round", g.op("Mul", cdf, g.f32(lut_scale))), g.f32(0.0), g.f32(255.0))
    (tx1, tx2, xa, xa1), (ty1, ty2, ya, ya1) = _clahe_constants(height, width, tiles_y, tiles_x)
    l11, l12, l21, l22 = neighbour_luts(g, lut, vi, (ty1, ty2), (tx1, tx2), tiles_x)
    xa_c, xa1_c = g.f32(xa[None, :]), g.f32(xa1[None, :])
    ya_c, ya1_c = g.f32(ya[:, None]), g.f32(ya1[:, None])
    top = g.op("Add", g.op("Mul", l11, xa1_c), g.op("Mul", l12, xa_c))
    bottom = g.op("Add", g.op("Mul", l21, xa1_c), g.op("Mul", l22, xa_c))
    res = g.op("Add", g.op("Mul", top, ya1_c), g.op("Mul", bottom, ya_c))
    return g.op("Clip", g.op("Round", res), g.f32(0.0), g.f32(255.0))


def _axis_coefficients(g: _Graph, n_in: str, n_out: str) -> tuple[str, str, str, str]:
    """Source indices and weights of a half-pixel bilinear resize along one axis, computed in
    float32 exactly as `training.wrist_preprocess.axis_coefficients` (same ops, same order)."""
    j = g.op("Cast", g.op("Range", g.i64(0), n_out, g.i64(1)), to=TensorProto.FLOAT)
    scale = g.op("Div", g.op("Cast", n_in, to=TensorProto.FLOAT),
                 g.op("Cast", n_out, to=TensorProto.FLOAT))
    src = g.op("Sub", g.op("Mul", g.op("Add", j, g.f32(0.5)), scale), g.f32(0.5))
    src = g.op("Max", src, g.f32(0.0))
    x0f = g.op("Floor", src)
    a = g.op("Sub", src, x0f)
    last_i = g.op("Sub", n_in, g.i64(1))
    last = g.op("Cast", last_i, to=TensorProto.FLOAT)
    at_end = g.op("GreaterOrEqual", x0f, last)
    x0f = g.op("Where", at_end, last, x0f)
    a = g.op("Where", at_end, g.f32(0.0), a)
    x0 = g.op("Cast", x0f, to=TensorProto.INT64)
    x1 = g.op("Min", g.op("Add", x0, g.i64(1)), last_i)
    return x0, x1, a, g.op("Sub", g.f32(1.0), a)


def _resize_levels(g: _Graph, image_f: str, new_h: str, new_w: str) -> str:
    """Bilinear resize (cv2 INTER_LINEAR's half-pixel rule, horizontal pass then vertical) of a
    2-D float image of grey levels, rounded half to even back to levels. Explicit Gather/Mul/Add
    instead of ONNX `Resize` so that the reference computes bit-identical values (ONNX Resize and
    cv2's fixed-point uint8 resize each differ by one level on ~10 % of pixels, which CLAHE would
    then amplify)."""
    shape = g.op("Shape", image_f)
    h = g.op("Gather", shape, g.i64(0), axis=0)
    w = g.op("Gather", shape, g.i64(1), axis=0)
    x0, x1, a, a1 = _axis_coefficients(g, w, new_w)
    t = g.op("Add", g.op("Mul", g.op("Gather", image_f, x0, axis=1), a1),
             g.op("Mul", g.op("Gather", image_f, x1, axis=1), a))
    y0, y1, b, b1 = _axis_coefficients(g, h, new_h)
    b = g.op("Unsqueeze", b, g.i64([1]))
    b1 = g.op("Unsqueeze", b1, g.i64([1]))
    x = g.op("Add", g.op("Mul", g.op("Gather", t, y0, axis=0), b1),
             g.op("Mul", g.op("Gather", t, y1, axis=0), b))
    return g.op("Clip", g.op("Round", x), g.f32(0.0), g.f32(255.0))


def _cv2_u8_coefficients(n_in: int, n_out: int):
    """cv2.resize(INTER_LINEAR) on uint8: source indices and 11-bit fixed-point weights, computed
    as OpenCV does (float32 fractions from the double-precision scale, rounded to 1/2048)."""
    scale = 1.0 / (n_out / n_in)
    fx = ((np.arange(n_out) + 0.5) * scale - 0.5).astype(np.float32)
    sx = np.floor(fx).astype(np.int64)
    fx = (fx - sx.astype(np.float32)).astype(np.float32)
    low = sx < 0
    fx, sx = np.where(low, np.float32(0), fx), np.where(low, 0, sx)
    high = sx >= n_in - 1
    fx, sx = np.where(high, np.float32(0), fx), np.where(high, n_in - 1, sx)
    w0 = np.rint((np.float32(1) - fx) * np.float32(2048)).astype(np.int32)
    w1 = np.rint(fx * np.float32(2048)).astype(np.int32)
    return sx, np.minimum(sx + 1, n_in - 1), w0, w1


def _resize_like_ultralytics(g: _Graph, levels: str, src: tuple[int, int],
                             dst: tuple[int, int]) -> str:
    """The detector letterbox's resize exactly as Ultralytics' predictor gets it from
    `cv2.resize(uint8, INTER_LINEAR)`: integer horizontal pass with 11-bit weights, then OpenCV's
    SIMD vertical pass `((((D0 >> 4) * b0) >> 16) + (((D1 >> 4) * b1) >> 16) + 2) >> 2`, in int32
    (sizes are constants here). Bit-identical on the sizes we serve, so the served detector input
    equals the in-process predictor's and boxes match it to float precision."""
    x0, x1, a0, a1 = _cv2_u8_coefficients(src[1], dst[1])
    y0, y1, b0, b1 = _cv2_u8_coefficients(src[0], dst[0])
    i32 = TensorProto.INT32
    s = g.op("Cast", levels, to=i32)
    d = g.op("Add", g.op("Mul", g.op("Gather", s, g.i64(x0), axis=1), g.const(a0[None], np.int32)),
             g.op("Mul", g.op("Gather", s, g.i64(x1), axis=1), g.const(a1[None], np.int32)))

    def term(rows: np.ndarray, weights: np.ndarray) -> str:
        t = g.op("Div", g.op("Gather", d, g.i64(rows), axis=0), g.const(16, np.int32))
        return g.op("Div", g.op("Mul", t, g.const(weights[:, None], np.int32)),
                    g.const(65536, np.int32))

    out = g.op("Div", g.op("Add", g.op("Add", term(y0, b0), term(y1, b1)), g.const(2, np.int32)),
               g.const(4, np.int32))
    out = g.op("Cast", out, to=TensorProto.FLOAT)
    return g.op("Clip", out, g.f32(0.0), g.f32(255.0))


def build_preprocess_graph(in_h: int, in_w: int, *, debug: bool = False,
                           clahe: str = "scatter") -> onnx.ModelProto:
    """The preprocessing model for detectors exported at `in_h x in_w` (`clahe`: a key of
    `CLAHE_CONSTRUCTIONS`; anything but the default only for tests and benchmarks)."""
    out_h, out_w = WRIST_HEIGHT, WRIST_WIDTH
    num, den = WRIST_CROP_TOP_NUMERATOR, WRIST_CROP_TOP_DENOMINATOR
    g = _Graph()
    shape = g.op("Shape", IMAGE_TENSOR)
    h = g.op("Gather", shape, g.i64(0), axis=0)
    w = g.op("Gather", shape, g.i64(1), axis=0)
    crop_top = g.op("Div", g.op("Mul", h, g.i64(num)), g.i64(den))
    ch = g.op("Sub", h, crop_top)
    two, oh_c, ow_c = g.i64(2), g.i64(out_h), g.i64(out_w)
    height_limited = g.op("LessOrEqual", g.op("Mul", w, oh_c), g.op("Mul", ch, ow_c))
    nw_if_h = g.op("Div", g.op("Add", g.op("Mul", g.op("Mul", w, two), oh_c), ch),
                   g.op("Mul", ch, two))
    nh_if_w = g.op("Div", g.op("Add", g.op("Mul", g.op("Mul", ch, two), ow_c), w),
                   g.op("Mul", w, two))
    one = g.i64(1)
    new_h = g.op("Max", g.op("Min", g.op("Where", height_limited, oh_c, nh_if_w), oh_c), one)
    new_w = g.op("Max", g.op("Min", g.op("Where", height_limited, ow_c, nw_if_h), ow_c), one)
    pad_top = g.op("Div", g.op("Sub", oh_c, new_h), two)
    pad_left = g.op("Div", g.op("Sub", ow_c, new_w), two)
    pad_bottom = g.op("Sub", g.op("Sub", oh_c, new_h), pad_top)
    pad_right = g.op("Sub", g.op("Sub", ow_c, new_w), pad_left)

    def vec(*scalars: str) -> str:
        return g.op("Concat", *[g.op("Unsqueeze", s, g.i64([0])) for s in scalars], axis=0)

    geometry = vec(h, w, crop_top, new_h, new_w, pad_top, pad_left)
    assert len(GEOMETRY_FIELDS) == 7
    g.nodes.append(helper.make_node("Identity", [geometry], [GEOMETRY_TENSOR]))

    big = np.iinfo(np.int64).max
    cropped = g.op("Slice", IMAGE_TENSOR, vec(crop_top, g.i64(0)), g.i64([big, big]), g.i64([0, 1]))
    cropped_f = g.op("Cast", cropped, to=TensorProto.FLOAT)
    resized = _resize_levels(g, cropped_f, new_h, new_w)
    canvas = g.op("Pad", resized, vec(pad_top, pad_left, pad_bottom, pad_right), g.f32(0.0),
                  mode="constant")
    canvas = g.op("Reshape", canvas, g.i64([out_h, out_w]))
    enhanced = _clahe(g, canvas, out_h, out_w, clahe)
    if debug:
        g.nodes.append(helper.make_node("Cast", [enhanced], [WRIST_CANVAS_TENSOR],
                                        to=TensorProto.UINT8))

    box = detector_letterbox(in_h, in_w)
    x = enhanced
    nh, nw = box.resized
    if (nh, nw) != (out_h, out_w):
        x = _resize_like_ultralytics(g, x, (out_h, out_w), (nh, nw))
    top, bottom, left, right = box.pads
    x = g.op("Pad", x, g.i64([top, left, bottom, right]), g.f32(float(DETECTOR_PAD_VALUE)),
             mode="constant")
    x = g.op("Div", x, g.f32(255.0))
    x = g.op("Reshape", x, g.i64([1, 1, in_h, in_w]))
    g.nodes.append(helper.make_node("Expand", [x, g.i64([1, 3, in_h, in_w])], [PIXELS_TENSOR]))

    outputs = [
        helper.make_tensor_value_info(PIXELS_TENSOR, TensorProto.FLOAT, [1, 3, in_h, in_w]),
        helper.make_tensor_value_info(GEOMETRY_TENSOR, TensorProto.INT64, [len(GEOMETRY_FIELDS)]),
    ]
    if debug:
        outputs.append(helper.make_tensor_value_info(WRIST_CANVAS_TENSOR, TensorProto.UINT8,
                                                     [out_h, out_w]))
    graph = helper.make_graph(
        g.nodes, "wrist_preprocess",
        [helper.make_tensor_value_info(IMAGE_TENSOR, TensorProto.UINT8, ["height", "width"])],
        outputs, initializer=g.inits,
    )
    model = onnx_model(graph)
    helper.set_model_props(model, {"detector_input": f"{in_h}x{in_w}",
                                   "canvas": f"{out_h}x{out_w}"})
    onnx.checker.check_model(model)
    return model


def write_preprocess_graph(path: Path, in_h: int, in_w: int, *, debug: bool = False,
                           clahe: str = "scatter") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_preprocess_graph(in_h, in_w, debug=debug, clahe=clahe), str(path))
    return path
