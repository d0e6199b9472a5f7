"""Synthetic wrist-like radiographs with the six study structures and their exact boxes.

Why: tests and the CPU learnability proof need labelled wrist images, and no real data may be
downloaded. The images imitate what matters for the detectors - a forearm (radius, ulna) entering
from the bottom, a carpal row with overlapping bones, joint spaces as dark gaps - with a distinct
shape per class so that a small YOLO learns them from scratch in minutes:

  radcar   radiocarpal joint: long, curved dark gap between the bright radius and the carpal row
  capnlun  capitate-lunate joint: short C-shaped gap between two bright round bones
  mna      carpometacarpal joint line: a row of short dark gaps under the metacarpal bases
  mul      trapezium (os multangulum majus): rounded quadrilateral, textured
  nav      scaphoid (os naviculare): elongated rotated ellipse overlapping the lunate and mul
  lunate   crescent (half-moon) bone

Variation: image size and aspect, wrist position and scale, random extra margins (black or
bright), exposure (gain, gamma, soft-tissue level), Gaussian noise, blur, and 16-bit variants
(10-16 significant bits with an offset). All structures lie below the top 3/7 that the study
crops away. Deterministic per (seed, index).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from msk.constants import WRIST_CLASSES


@dataclass
class SyntheticWrist:
    image: np.ndarray                     # uint8 or uint16, H x W
    boxes: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    patient: str = ""
    name: str = ""


def _ellipse_mask(shape, center, axes, angle) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.ellipse(m, (int(center[0]), int(center[1])), (max(int(axes[0]), 1), max(int(axes[1]), 1)),
                angle, 0, 360, 255, -1, cv2.LINE_AA)
    return m


def _box_of(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask > 127)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def make_wrist(seed: int, index: int = 0, *, sixteen_bit: bool | None = None,
               size: tuple[int, int] | None = None) -> SyntheticWrist:
    """One synthetic radiograph with boxes (x1, y1, x2, y2 in its own pixels) for all classes."""
    rng = np.random.default_rng([seed, index])
    if size is None:
        h = int(rng.integers(700, 1000))
        w = int(h * rng.uniform(0.62, 0.9))
    else:
        h, w = size
    y_rc = h * rng.uniform(0.76, 0.82)            # radiocarpal line
    # wrist scale in pixels; the metacarpal line (y_rc - 0.43 s) stays below the cropped top 3/7
    s = min(min(h, w) * rng.uniform(0.85, 1.0), (y_rc - 0.48 * h) / 0.45, w / 0.62)
    cx = w / 2 + rng.uniform(-0.05, 0.05) * w
    img = np.zeros((h, w), np.float32)

    # soft tissue: a broad vertical band with soft edges (drawn small, blurred, scaled up: fast)
    f = 8
    small = np.zeros((h // f + 1, w // f + 1), np.uint8)
    cv2.rectangle(small, (int((cx - 0.42 * s) / f), int(0.35 * h / f)),
                  (int((cx + 0.42 * s) / f), h // f + 1), 255, -1)
    small = cv2.GaussianBlur(small, (0, 0), 0.05 * s / f)
    tissue = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
    img += tissue * rng.uniform(0.18, 0.3)
    bones = np.zeros((h, w), np.float32)

    def bone(mask: np.ndarray, level: float) -> None:
        np.maximum(bones, (mask > 127) * np.float32(level), out=bones)

    boxes: dict[str, tuple[float, float, float, float]] = {}
    bright = rng.uniform(0.75, 0.9)

    # radius and ulna (bottom)
    radius = np.zeros((h, w), np.uint8)
    rx1, rx2 = cx - 0.3 * s, cx + 0.06 * s
    pts = np.array([[rx1, h], [rx1 - 0.02 * s, y_rc + 0.02 * s], [(rx1 + rx2) / 2, y_rc],
                    [rx2, y_rc + 0.03 * s], [rx2 - 0.03 * s, h]], np.int32)
    cv2.fillPoly(radius, [pts], 255, cv2.LINE_AA)
    bone(radius, bright)
    ulna = np.zeros((h, w), np.uint8)
    cv2.rectangle(ulna, (int(cx + 0.12 * s), int(y_rc + 0.07 * s)), (int(cx + 0.26 * s), h),
                  255, -1)
    bone(ulna, bright * 0.9)

    # carpal row
    lun_c = (cx - 0.03 * s, y_rc - 0.1 * s)
    lunate = _ellipse_mask((h, w), lun_c, (0.075 * s, 0.06 * s), 0)
    cut = _ellipse_mask((h, w), (lun_c[0], lun_c[1] - 0.055 * s), (0.06 * s, 0.04 * s), 0)
    lunate = cv2.subtract(lunate, cut)
    nav_c = (cx - 0.18 * s, y_rc - 0.12 * s)
    nav = _ellipse_mask((h, w), nav_c, (0.1 * s, 0.045 * s), rng.uniform(35, 55))
    mul_c = (cx - 0.24 * s, y_rc - 0.25 * s)
    mul = np.zeros((h, w), np.uint8)
    q = np.array([[-0.06, -0.05], [0.05, -0.06], [0.07, 0.04], [-0.05, 0.06]]) * s
    q = (q + np.array(mul_c)) + rng.uniform(-0.008, 0.008, q.shape) * s
    cv2.fillPoly(mul, [q.astype(np.int32)], 255, cv2.LINE_AA)
    cap_c = (cx - 0.02 * s, y_rc - 0.27 * s)
    capitate = _ellipse_mask((h, w), cap_c, (0.065 * s, 0.1 * s), 0)
    hamate = _ellipse_mask((h, w), (cx + 0.13 * s, y_rc - 0.22 * s), (0.07 * s, 0.09 * s), 20)
    for m, lvl in ((capitate, 0.85), (hamate, 0.8), (nav, 0.95), (lunate, 1.0), (mul, 0.9)):
        bone(m, bright * lvl)
    texture = cv2.resize(rng.standard_normal((h // 4 + 1, w // 4 + 1), np.float32), (w, h),
                         interpolation=cv2.INTER_LINEAR)
    bones += (mul > 127) * texture * np.float32(0.08)
    boxes["lunate"] = _box_of(lunate)
    boxes["nav"] = _box_of(nav)
    boxes["mul"] = _box_of(mul)

    # metacarpal bases above the carpal row
    y_mc = y_rc - 0.43 * s
    for k in range(4):
        x = cx - 0.2 * s + k * 0.12 * s
        mc = np.zeros((h, w), np.uint8)
        cv2.rectangle(mc, (int(x - 0.045 * s), int(0.35 * h)), (int(x + 0.045 * s), int(y_mc)),
                      255, -1)
        bone(mc, bright * 0.85)

    def gap(draw, thickness: float) -> np.ndarray:
        m = np.zeros((h, w), np.uint8)
        draw(m, max(int(thickness), 2))
        return m

    # joints: dark gaps drawn over the bones
    xs = np.linspace(rx1 + 0.01 * s, rx2 - 0.01 * s, 24)
    ys = y_rc - 0.012 * s - 0.04 * s * np.sin(np.linspace(0, np.pi, xs.size))
    arc = np.stack([xs, ys], 1).astype(np.int32)
    rc = gap(lambda m, t: cv2.polylines(m, [arc], False, 255, t, cv2.LINE_AA), 0.022 * s)
    cl_c = (cap_c[0], (cap_c[1] + 0.1 * s + lun_c[1] - 0.06 * s) / 2)

    def c_gap(m, t):
        cv2.ellipse(m, (int(cl_c[0]), int(cl_c[1] + 0.02 * s)),
                    (int(0.06 * s), int(0.035 * s)), 0, 200, 340, 255, t, cv2.LINE_AA)

    cl = gap(c_gap, 0.018 * s)

    def mc_gaps(m, t):
        for k in range(4):
            x = cx - 0.2 * s + k * 0.12 * s
            cv2.line(m, (int(x - 0.04 * s), int(y_mc)), (int(x + 0.04 * s), int(y_mc)), 255, t,
                     cv2.LINE_AA)

    mna = gap(mc_gaps, 0.02 * s)
    img = np.maximum(img, cv2.GaussianBlur(bones, (0, 0), 1.2))
    gaps = cv2.GaussianBlur(np.maximum(np.maximum(rc, cl), mna), (0, 0), 1.0)
    img *= 1 - np.float32(0.8 / 255) * gaps
    pad = 0.03 * s   # a joint's box is the region around its joint space, not the gap alone
    for name, m in (("radcar", rc), ("capnlun", cl), ("mna", mna)):
        x1, y1, x2, y2 = _box_of(m)
        boxes[name] = (max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, w), min(y2 + pad, h))

    # exposure, blur, noise
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.5))
    img = np.clip(img * rng.uniform(0.8, 1.15) + rng.uniform(0.0, 0.08), 0, 1)
    img = img ** rng.uniform(0.8, 1.25)
    img = img + rng.standard_normal(img.shape, np.float32) * np.float32(rng.uniform(0.01, 0.03))
    img = np.clip(img, 0, 1)

    # random extra margins (collimator borders / scanner padding)
    top, bottom, left, right = (int(rng.uniform(0, 0.08) * d) for d in (h, h, w, w))
    if top or bottom or left or right:
        fill = float(rng.choice([0.0, 0.95]))
        img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=fill)
        boxes = {k: (b[0] + left, b[1] + top, b[2] + left, b[3] + top) for k, b in boxes.items()}

    if sixteen_bit is None:
        sixteen_bit = bool(rng.random() < 0.3)
    if sixteen_bit:
        bits = int(rng.integers(10, 17))
        offset = int(rng.integers(0, 2 ** (bits - 4)))
        top_v = 2 ** bits - 1 - offset
        out = np.rint(img * top_v + offset).astype(np.uint16)
    else:
        out = np.rint(img * 255).astype(np.uint8)
    assert set(boxes) == set(WRIST_CLASSES)
    patient = f"synth{seed:04d}-{index // 2:05d}"   # two views per synthetic patient
    return SyntheticWrist(out, boxes, patient, f"synth_{seed}_{index:05d}")


def make_wrists(n: int, seed: int = 0, **kwargs) -> list[SyntheticWrist]:
    return [make_wrist(seed, i, **kwargs) for i in range(n)]
