"""Every Triton model of both families, described once as data (rendered by `export.configs`).

Why data: a newcomer changing how a model is batched, placed or warmed up changes one field here,
and every `config.pbtxt` of every target follows - the MURA ensemble and the wrist detectors no
longer keep two policies. What differs per target is decided by ONE rule each, in the renderer:

  engine     `backend: "onnxruntime"` everywhere, except a model with `gpu_platform` (the MURA
             backbones: `tensorrt_plan`) on the gpu target, and a model marked `openvino` (the
             DenseNet-169 backbones) on the cpu target when the export chose the `openvino` CPU
             runtime (`backend: "openvino"` on the same model.onnx; `OPENVINO_ARCHITECTURES`);
  placement  cpu target KIND_CPU, gpu target KIND_GPU; `cpu_only` models (numpy python) KIND_CPU;
  warm-up    on the gpu target every batched model is warmed at batch 1 and at its max batch;
  queue      every non-ensemble model has the bounded queue (`QUEUE_MAX_SIZE`, `QUEUE_TIMEOUT_US`);
  batching   every batched model uses `BATCHED` (max batch, preferred size, queue delay);
  versions   every non-ensemble model keeps its `VERSIONS_KEPT` newest versions loaded;
             ensembles call version -1 (the newest) of each step;
  threads    on the cpu target a model that runs beside `parallel - 1` siblings (the four
             backbones, the two detectors) gets `intra_op_threads(cores, parallel)` ONNX Runtime
             threads: together no more threads than the host has cores, except that each
             gets at least one (measured: bench/README.md, "CPU settings, measured one at a time").
Tensors are built from `msk.constants` only. Configs do not depend on the weights (the wrist
detectors' input size does: it is the size they were exported at, see `wrist_specs`).
"""

from __future__ import annotations

from dataclasses import dataclass

from msk.constants import (
    BOXES_TENSOR,
    CAM_TENSOR,
    CLASSES_TENSOR,
    DETECTOR_INPUT_TENSOR,
    DETECTOR_OUTPUT_TENSOR,
    FEATURES_TENSOR,
    GEOMETRY_FIELDS,
    GEOMETRY_TENSOR,
    HEATMAP_TENSOR,
    IMAGE_TENSOR,
    MEMBER_PROBABILITIES_TENSOR,
    MEMBER_SPREAD_TENSOR,
    MURA_ARCHITECTURES,
    MURA_BACKBONE_MAX_BATCH,
    MURA_CAM_STRIDE,
    MURA_CHANNELS,
    MURA_DRIFT_MODEL,
    MURA_ENSEMBLE_MODEL,
    MURA_IMAGE_SIZE,
    MURA_MEAN_MODEL,
    MURA_MEMBERS,
    MURA_PREPROCESS_MODEL,
    OOD_SCORE_TENSOR,
    PIXELS_TENSOR,
    PROBABILITY_TENSOR,
    PROVENANCE_TENSOR,
    SCORES_TENSOR,
    WRIST_DETECT_MODEL,
    WRIST_DETECTORS,
    WRIST_HEIGHT,
    WRIST_POSTPROCESS_MODEL,
    WRIST_PREPROCESS_MODEL,
    WRIST_PROVENANCE_TENSOR,
    detector_raw_tensor,
    member_cam_tensor,
    member_features_tensor,
    member_probability_tensor,
)

TARGETS = ("cpu", "gpu")
OPENVINO_ARCHITECTURES = ("densenet169",)
"""Backbones that `--cpu-runtime openvino` moves to OpenVINO: those it runs faster than ORT on
the same INT8 graph (bench/bench_openvino.py on the 2-core AVX2 reference: DenseNet-169 INT8
1.7-2.0x, though 0.87-0.92x at FP32, so the option is for INT8 exports; ResNet-101 0.85-0.91x at
both precisions, so it stays on ORT)."""

BACKBONE_QUEUE_DELAY_US = 2000
"""Short enough to be invisible next to a ~100 ms backbone or detector pass, long enough to
gather a batch."""
QUEUE_TIMEOUT_US = 30_000_000
"""A request still waiting in a model's queue after 30 s is rejected (timeout_action REJECT);
clients may ask for a shorter wait per request (allow_timeout_override, e.g. gRPC `timeout`)."""
VERSIONS_KEPT = 2
"""The newest version serves; the previous one stays loaded after a promotion."""


def intra_op_threads(cores: int, parallel: int) -> int:
    """ONNX Runtime intra-op threads of one of `parallel` models that run at once on `cores` cores.

    Why not ORT's default (every core per session): Triton runs the four backbones at once, each
    in its own process, and four pools of two threads on two cores gave 0.79x the c8 throughput
    of four single threads (bench/README.md). At least one thread; rounded down."""
    if cores < 1 or parallel < 1:
        raise ValueError(f"cores and parallel must be >= 1, got {cores} and {parallel}")
    return max(1, cores // parallel)


DETECTOR_STRIDES = (8, 16, 32)
"""Ultralytics' detection head strides: one anchor per cell of each of the three grids."""


@dataclass(frozen=True)
class Tensor:
    """One input or output of a model: name (from msk.constants), Triton dtype, dims."""

    name: str
    dtype: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class Batching:
    """Dynamic batching; the bounded queue policy is added to every one (`queue_policy`)."""

    max_batch_size: int = 0
    preferred: tuple[int, ...] = ()
    queue_delay_us: int | None = None


UNBATCHED = Batching()
"""max_batch_size 0 models: one request per execution, the queue still bounded."""
BATCHED = Batching(MURA_BACKBONE_MAX_BATCH, preferred=(MURA_BACKBONE_MAX_BATCH,),
                   queue_delay_us=BACKBONE_QUEUE_DELAY_US)
"""Every batched model (backbones and detectors): batches of up to 8 (the training batch),
filled by waiting at most 2 ms."""


@dataclass(frozen=True)
class Step:
    """One ensemble step: the newest version of `model`; maps are (model's name, ensemble's)."""

    model: str
    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ModelSpec:
    """One Triton model. `backend` is "onnxruntime", "python" or "ensemble"."""

    name: str
    backend: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    batching: Batching | None = UNBATCHED      # None only for ensembles
    cpu_only: bool = False                     # numpy python models: KIND_CPU on every target
    gpu_platform: str | None = None            # engine replacing the ONNX on the gpu target
    steps: tuple[Step, ...] = ()
    parameters: tuple[tuple[str, str], ...] = ()
    parallel: int = 0                          # siblings run at once, this one included (threads)
    openvino: bool = False                     # may run on OpenVINO on the cpu target

    @property
    def is_ensemble(self) -> bool:
        return self.backend == "ensemble"

    @property
    def max_batch_size(self) -> int:
        return self.batching.max_batch_size if self.batching else 0


def _same(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple((n, n) for n in names)


def cam_size(image_size: int = MURA_IMAGE_SIZE) -> int:
    return image_size // MURA_CAM_STRIDE


def _mura_outputs(image_size: int) -> tuple[Tensor, ...]:
    return (
        Tensor(PROBABILITY_TENSOR, "TYPE_FP32", (1,)),
        Tensor(MEMBER_PROBABILITIES_TENSOR, "TYPE_FP32", (len(MURA_MEMBERS),)),
        Tensor(HEATMAP_TENSOR, "TYPE_UINT8", (image_size, image_size)),
        Tensor(PROVENANCE_TENSOR, "TYPE_STRING", (1,)),
        Tensor(OOD_SCORE_TENSOR, "TYPE_FP32", (1,)),
        Tensor(MEMBER_SPREAD_TENSOR, "TYPE_FP32", (1,)),
    )


FEATURE_DIMS = (-1,)
"""A backbone's pooled features: 1664 (DenseNet-169), 2048 (ResNet-101), 32 (the tiny stand-in).
Left variable so that configs stay independent of the weights (the mean graph fixes the width)."""


DRIFT_OBSERVED = (PROBABILITY_TENSOR, OOD_SCORE_TENSOR, MEMBER_SPREAD_TENSOR)
"""mura_mean's outputs that `mura_drift` observes and passes on unchanged to the ensemble's
outputs (the others go from mura_mean to the ensemble's outputs directly)."""


def _drift_internal(name: str) -> str:
    """Ensemble-internal name of a mura_mean output: `MEAN_<name>` when `mura_drift` observes it
    (the drift step then gives the ensemble output of that name), else the output itself."""
    return f"MEAN_{name}" if name in DRIFT_OBSERVED else name


def drift_spec(outputs: tuple[Tensor, ...]) -> ModelSpec:
    """`mura_drift` (python, numpy only, KIND_CPU on every target): the last ensemble step, so
    every served image is counted server side whatever the client (issue 21, item 5)."""
    observed = tuple(t for t in outputs if t.name in DRIFT_OBSERVED)
    return ModelSpec(MURA_DRIFT_MODEL, "python", observed, observed, cpu_only=True)


def mura_specs(image_size: int = MURA_IMAGE_SIZE) -> tuple[ModelSpec, ...]:
    """mura_preprocess -> four backbones -> mura_mean -> mura_drift, and the mura_ensemble that
    chains them."""
    c = cam_size(image_size)
    image = Tensor(IMAGE_TENSOR, "TYPE_UINT8", (-1, -1))
    specs = [ModelSpec(
        MURA_PREPROCESS_MODEL, "onnxruntime", (image,),
        (Tensor(PIXELS_TENSOR, "TYPE_FP32", (1, MURA_CHANNELS, image_size, image_size)),))]
    steps = [Step(MURA_PREPROCESS_MODEL, _same(IMAGE_TENSOR), _same(PIXELS_TENSOR))]
    mean_inputs: list[Tensor] = []
    for member in MURA_MEMBERS:
        prob, cam = member_probability_tensor(member), member_cam_tensor(member)
        feats = member_features_tensor(member)
        specs.append(ModelSpec(
            member, "onnxruntime",
            (Tensor(PIXELS_TENSOR, "TYPE_FP32", (MURA_CHANNELS, image_size, image_size)),),
            (Tensor(PROBABILITY_TENSOR, "TYPE_FP32", (1,)),
             Tensor(CAM_TENSOR, "TYPE_FP32", (c, c)),
             Tensor(FEATURES_TENSOR, "TYPE_FP32", FEATURE_DIMS)),
            batching=BATCHED, gpu_platform="tensorrt_plan", parallel=len(MURA_MEMBERS),
            openvino=MURA_ARCHITECTURES[member] in OPENVINO_ARCHITECTURES))
        steps.append(Step(member, _same(PIXELS_TENSOR),
                          ((PROBABILITY_TENSOR, prob), (CAM_TENSOR, cam),
                           (FEATURES_TENSOR, feats))))
        mean_inputs += [Tensor(prob, "TYPE_FP32", (1, 1)), Tensor(cam, "TYPE_FP32", (1, c, c))]
    # The features follow the probabilities and CAMs (the graph's input order).
    mean_inputs += [Tensor(member_features_tensor(m), "TYPE_FP32", (1, *FEATURE_DIMS))
                    for m in MURA_MEMBERS]
    outputs = _mura_outputs(image_size)
    specs.append(ModelSpec(MURA_MEAN_MODEL, "onnxruntime", tuple(mean_inputs), outputs))
    steps.append(Step(MURA_MEAN_MODEL, _same(*(t.name for t in mean_inputs)),
                      tuple((t.name, _drift_internal(t.name)) for t in outputs)))
    specs.append(drift_spec(outputs))
    steps.append(Step(MURA_DRIFT_MODEL, tuple((n, _drift_internal(n)) for n in DRIFT_OBSERVED),
                      _same(*DRIFT_OBSERVED)))
    specs.append(ModelSpec(MURA_ENSEMBLE_MODEL, "ensemble", (image,), outputs, batching=None,
                           steps=tuple(steps),
                           parameters=(("members", ",".join(MURA_MEMBERS)),)))
    return tuple(specs)


def detector_anchors(in_h: int, in_w: int) -> int:
    """Anchors of an Ultralytics detection head at input size in_h x in_w."""
    return sum((in_h // s) * (in_w // s) for s in DETECTOR_STRIDES)


def wrist_specs(in_h: int, in_w: int) -> tuple[ModelSpec, ...]:
    """wrist_preprocess -> wrist_joints, wrist_bones -> wrist_postprocess, and wrist_detect.

    `in_h x in_w` is the detectors' input size (both share it; the exporter checks)."""
    anchors = detector_anchors(in_h, in_w)
    image = Tensor(IMAGE_TENSOR, "TYPE_UINT8", (-1, -1))
    geometry = Tensor(GEOMETRY_TENSOR, "TYPE_INT64", (len(GEOMETRY_FIELDS),))
    detections = (
        Tensor(BOXES_TENSOR, "TYPE_FP32", (-1, 4)),
        Tensor(CLASSES_TENSOR, "TYPE_STRING", (-1,)),
        Tensor(SCORES_TENSOR, "TYPE_FP32", (-1,)),
        Tensor(WRIST_PROVENANCE_TENSOR, "TYPE_STRING", (1,)),
    )
    pixels, geo = "WRIST_PIXELS", "WRIST_GEOMETRY"      # ensemble-internal names
    specs = [ModelSpec(WRIST_PREPROCESS_MODEL, "onnxruntime", (image,),
                       (Tensor(PIXELS_TENSOR, "TYPE_FP32", (1, 3, in_h, in_w)), geometry))]
    steps = [Step(WRIST_PREPROCESS_MODEL, _same(IMAGE_TENSOR),
                  ((PIXELS_TENSOR, pixels), (GEOMETRY_TENSOR, geo)))]
    raw_inputs: list[Tensor] = []
    for key, (model, classes) in WRIST_DETECTORS.items():
        raw = detector_raw_tensor(key)
        specs.append(ModelSpec(
            model, "onnxruntime", (Tensor(DETECTOR_INPUT_TENSOR, "TYPE_FP32", (3, in_h, in_w)),),
            (Tensor(DETECTOR_OUTPUT_TENSOR, "TYPE_FP32", (4 + len(classes), anchors)),),
            batching=BATCHED, parallel=len(WRIST_DETECTORS)))
        steps.append(Step(model, ((DETECTOR_INPUT_TENSOR, pixels),),
                          ((DETECTOR_OUTPUT_TENSOR, raw),)))
        raw_inputs.append(Tensor(raw, "TYPE_FP32", (1, 4 + len(classes), anchors)))
    specs.append(ModelSpec(WRIST_POSTPROCESS_MODEL, "python", (geometry, *raw_inputs),
                           detections, cpu_only=True))
    steps.append(Step(WRIST_POSTPROCESS_MODEL,
                      ((GEOMETRY_TENSOR, geo), *_same(*(t.name for t in raw_inputs))),
                      _same(*(t.name for t in detections))))
    specs.append(ModelSpec(WRIST_DETECT_MODEL, "ensemble", (image,), detections, batching=None,
                           steps=tuple(steps)))
    return tuple(specs)


def study_detector_input() -> tuple[int, int]:
    """Detector input (1408 x 768) of detectors trained at the study size: the size of the
    committed wrist configs; detectors exported at another size get configs for theirs.
    (Imported here, not at module level: the GPU assembler runs where numpy may be missing.)"""
    from msk.wrist_geometry import export_size

    return export_size(WRIST_HEIGHT)


def all_specs(image_size: int = MURA_IMAGE_SIZE) -> tuple[ModelSpec, ...]:
    """Both families at their default sizes: what the committed configs are rendered from."""
    return mura_specs(image_size) + wrist_specs(*study_detector_input())
