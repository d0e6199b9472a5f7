"""Synthetic MURA-format radiographs whose "abnormal" label is a visible structural anomaly.

Why: the real MURA-v1.1 set cannot be shipped or downloaded, yet the training pipeline must be
shown to *learn*, not only to run. This generator draws bone-like shapes (bright capsules with a
brighter cortex on a soft-tissue background) per body part; an abnormal study shows, on every one
of its views, a fracture-like discontinuity: one bone is cut by a dark gap and its distal fragment
is displaced and angulated. Studies have one to three views and patients one or two studies, and
everything is written in the real MURA-v1.1 directory layout with its four CSV files, so the
MURA reader (`training.mura_data.read_mura`) is exercised exactly as on the real data set.

Everything is seeded; the same arguments always produce byte-identical PNGs.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from msk.constants import MURA_BODY_PARTS

MURA_DIRNAME = "MURA-v1.1"
"""Top folder of the real data set; the CSVs list paths starting with it."""


@dataclass(frozen=True)
class Segment:
    """One bone drawn as a capsule from (x0, y0) to (x1, y1) with a radius, in unit coordinates."""

    x0: float
    y0: float
    x1: float
    y1: float
    radius: float
    round_start: bool = True
    round_end: bool = True
    """A fracture fragment has a flat (cut) end instead of the rounded end of an intact bone."""


def _part_layout(part: str, rng: np.random.Generator) -> list[Segment]:
    """Bone segments of one body part in a unit square (y grows downwards), lightly jittered."""

    def j(scale: float = 0.03) -> float:
        return float(rng.uniform(-scale, scale))

    if part == "humerus":
        return [Segment(0.5 + j(), 0.08, 0.5 + j(), 0.92, 0.085 + j(0.01))]
    if part == "forearm":
        return [Segment(0.40 + j(), 0.08, 0.42 + j(), 0.92, 0.06 + j(0.008)),
                Segment(0.60 + j(), 0.08, 0.58 + j(), 0.92, 0.05 + j(0.008))]
    if part == "elbow":
        return [Segment(0.5 + j(), 0.05, 0.5 + j(), 0.52, 0.08),
                Segment(0.42 + j(), 0.55, 0.35 + j(), 0.95, 0.06),
                Segment(0.58 + j(), 0.55, 0.65 + j(), 0.95, 0.05)]
    if part == "shoulder":
        return [Segment(0.45 + j(), 0.35, 0.55 + j(), 0.95, 0.09),
                Segment(0.42 + j(), 0.28, 0.44, 0.30, 0.16),  # humeral head (a near-disc)
                Segment(0.15, 0.12 + j(), 0.80, 0.18 + j(), 0.045)]  # clavicle-like bar
    if part == "wrist":
        bones = [Segment(0.38 + j(), 0.55, 0.40 + j(), 0.97, 0.07),
                 Segment(0.62 + j(), 0.55, 0.60 + j(), 0.97, 0.055)]
        for cx in (0.35, 0.5, 0.65):  # a row of carpal blobs
            bones.append(Segment(cx + j(), 0.40, cx + j() + 0.01, 0.42, 0.06))
        bones.append(Segment(0.45 + j(), 0.05, 0.45 + j(), 0.30, 0.05))  # a metacarpal
        return bones
    if part == "hand":
        return [Segment(x + j(), 0.60, x + j() + (x - 0.5) * 0.3, 0.12, 0.045)
                for x in (0.28, 0.40, 0.52, 0.64, 0.76)]
    if part == "finger":
        x = 0.5 + j()
        return [Segment(x, 0.05, x + j(), 0.36, 0.07),
                Segment(x, 0.40, x + j(), 0.64, 0.065),
                Segment(x, 0.68, x + j(), 0.95, 0.06)]
    raise ValueError(f"unknown body part {part!r}; expected one of {', '.join(MURA_BODY_PARTS)}")


def _fracture(segment: Segment, rng: np.random.Generator) -> tuple[list[Segment], Segment]:
    """Split a bone into two fragments separated by a gap, the distal one displaced/angulated.

    Returns (fragments, lucent band): the band covers the gap and is drawn darker than soft
    tissue, like the radiolucent line of a real fracture, so the anomaly is clearly visible even
    at the small image sizes of the CPU proof.
    """
    dx, dy = segment.x1 - segment.x0, segment.y1 - segment.y0
    length = math.hypot(dx, dy)
    ux, uy = dx / length, dy / length
    px, py = -uy, ux  # perpendicular
    t = float(rng.uniform(0.35, 0.65)) * length
    gap = float(rng.uniform(0.07, 0.10))
    shift = float(rng.choice([-1, 1]) * rng.uniform(0.8, 1.3)) * segment.radius
    angle = float(rng.choice([-1, 1]) * rng.uniform(0.25, 0.45))
    cx, cy = segment.x0 + ux * t, segment.y0 + uy * t
    proximal = Segment(segment.x0, segment.y0, cx, cy, segment.radius, round_end=False)
    sx, sy = cx + ux * gap + px * shift, cy + uy * gap + py * shift
    rest = length - t - gap
    ca, sa = math.cos(angle), math.sin(angle)
    rx, ry = ux * ca - uy * sa, ux * sa + uy * ca
    distal = Segment(sx, sy, sx + rx * rest, sy + ry * rest, segment.radius, round_start=False)
    mx, my = (cx + sx) / 2.0, (cy + sy) / 2.0
    half = 1.2 * segment.radius + abs(shift) / 2.0
    lucent = Segment(mx - px * half, my - py * half, mx + px * half, my + py * half, gap * 0.45)
    return [proximal, distal], lucent


def _capsule_distance(xx: np.ndarray, yy: np.ndarray, s: Segment) -> np.ndarray:
    """Distance of every pixel to the segment's axis (unit coordinates)."""
    vx, vy = s.x1 - s.x0, s.y1 - s.y0
    denom = vx * vx + vy * vy or 1e-9
    raw = ((xx - s.x0) * vx + (yy - s.y0) * vy) / denom
    t = np.clip(raw, 0.0, 1.0)
    distance = np.hypot(xx - (s.x0 + t * vx), yy - (s.y0 + t * vy))
    if not s.round_start:
        distance = np.where(raw < 0.0, np.inf, distance)
    if not s.round_end:
        distance = np.where(raw > 1.0, np.inf, distance)
    return distance


def render_image(part: str, abnormal: bool, rng: np.random.Generator,
                 height: int = 192, width: int = 160) -> np.ndarray:
    """One synthetic radiograph (uint8 [height, width]) of `part`, fractured when `abnormal`."""
    segments = _part_layout(part, rng)
    lucent: Segment | None = None
    if abnormal:
        # Long segments only: a fracture across a tiny carpal blob would not be visible.
        lengths = [math.hypot(s.x1 - s.x0, s.y1 - s.y0) for s in segments]
        candidates = [i for i, length in enumerate(lengths) if length > 0.2]
        victim = int(rng.choice(candidates))
        fragments, lucent = _fracture(segments[victim], rng)
        segments = segments[:victim] + fragments + segments[victim + 1:]
    # A random view: rotation about the centre and a slight zoom, applied to pixel coordinates.
    angle = float(rng.uniform(-0.35, 0.35))
    zoom = float(rng.uniform(0.9, 1.1))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    aspect = width / height
    u = (xs / width - 0.5) * aspect
    v = ys / height - 0.5
    ca, sa = math.cos(angle), math.sin(angle)
    xx = (ca * u - sa * v) / zoom + 0.5
    yy = (sa * u + ca * v) / zoom + 0.5

    soft = 0.18 + 0.10 * np.exp(-(((xx - 0.5) / 0.35) ** 2) - (((yy - 0.5) / 0.6) ** 2))
    image = soft.astype(np.float32)
    bone_level = float(rng.uniform(0.55, 0.7))
    for s in segments:
        d = _capsule_distance(xx, yy, s)
        inside = np.clip((s.radius - d) * height * 0.5, 0.0, 1.0)  # ~2 px soft edge
        cortex = np.exp(-(((s.radius - d) / (0.25 * s.radius)) ** 2))
        bone = bone_level + 0.25 * cortex
        image = np.maximum(image, inside * bone + (1 - inside) * image)
    if lucent is not None:
        inside = np.clip((lucent.radius - _capsule_distance(xx, yy, lucent)) * height * 0.5,
                         0.0, 1.0)
        image = image * (1.0 - 0.85 * inside)
    image = image * float(rng.uniform(0.85, 1.15)) + float(rng.uniform(-0.05, 0.05))
    image += rng.normal(0.0, 0.03, size=image.shape).astype(np.float32)
    return (np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


@dataclass(frozen=True)
class SyntheticSpec:
    """How much synthetic data to write and how it is distributed."""

    train_patients: int = 120
    valid_patients: int = 30
    abnormal_fraction: float = 0.4
    body_parts: tuple[str, ...] = MURA_BODY_PARTS
    max_studies_per_patient: int = 2
    max_images_per_study: int = 3
    min_side: int = 144
    max_side: int = 224
    seed: int = 0


def generate(root: Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write `<root>/MURA-v1.1/{train,valid}/...` plus the four CSVs; return the MURA-v1.1 path.

    Patient numbers are unique across splits, as in the real set; each study's label is drawn with
    `abnormal_fraction` and every view of an abnormal study shows the fracture.
    """
    if not 0.0 < spec.abnormal_fraction < 1.0:
        raise ValueError(f"abnormal_fraction must be in (0, 1), got {spec.abnormal_fraction}")
    for part in spec.body_parts:
        if part not in MURA_BODY_PARTS:
            raise ValueError(f"unknown body part {part!r}; expected one of "
                             f"{', '.join(MURA_BODY_PARTS)}")
    rng = np.random.default_rng(spec.seed)
    base = Path(root) / MURA_DIRNAME
    patient_number = 1
    for split, n_patients in (("train", spec.train_patients), ("valid", spec.valid_patients)):
        image_rows: list[str] = []
        study_rows: list[tuple[str, int]] = []
        for _ in range(n_patients):
            part = str(rng.choice(spec.body_parts))
            patient = f"patient{patient_number:05d}"
            patient_number += 1
            for study_index in range(1, int(rng.integers(1, spec.max_studies_per_patient + 1)) + 1):
                abnormal = bool(rng.random() < spec.abnormal_fraction)
                suffix = "positive" if abnormal else "negative"
                rel_study = f"{MURA_DIRNAME}/{split}/XR_{part.upper()}/{patient}/" \
                            f"study{study_index}_{suffix}/"
                study_dir = Path(root) / rel_study
                study_dir.mkdir(parents=True, exist_ok=True)
                study_rows.append((rel_study, int(abnormal)))
                for k in range(1, int(rng.integers(1, spec.max_images_per_study + 1)) + 1):
                    h = int(rng.integers(spec.min_side, spec.max_side + 1))
                    w = int(rng.integers(spec.min_side, spec.max_side + 1))
                    pixels = render_image(part, abnormal, rng, height=h, width=w)
                    Image.fromarray(pixels, mode="L").save(study_dir / f"image{k}.png")
                    image_rows.append(f"{rel_study}image{k}.png")
        base.mkdir(parents=True, exist_ok=True)
        with open(base / f"{split}_image_paths.csv", "w", newline="") as f:
            f.writelines(row + "\n" for row in image_rows)
        with open(base / f"{split}_labeled_studies.csv", "w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(study_rows)
    return base
