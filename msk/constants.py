"""The one source of truth for every constant that crosses a boundary.

Training, export, the generated Triton configs, the clients, the gateway and the web app all import
these names; nothing else spells a model name, tensor name, image size or class list.
This module must stay import-light (no torch, no onnx): clients import it.
"""

from __future__ import annotations

# --------------------------------------------------------------------------------------------
# MURA abnormality ensemble
# --------------------------------------------------------------------------------------------
MURA_IMAGE_SIZE = 320
"""Backbone input height and width (the MURA study's 320x320)."""

MURA_CHANNELS = 3
"""Grayscale is replicated to three channels so ImageNet-shaped backbones apply unchanged."""

MURA_BODY_PARTS: tuple[str, ...] = (
    "shoulder", "elbow", "finger", "hand", "humerus", "wrist", "forearm",
)

MURA_ARCHITECTURES: dict[str, str] = {
    "densenet169_a": "densenet169",
    "densenet169_b": "densenet169",
    "resnet101_a": "resnet101",
    "resnet101_b": "resnet101",
}
"""Ensemble member name -> torchvision architecture. Order is the ensemble's member order."""

MURA_MEMBERS: tuple[str, ...] = tuple(MURA_ARCHITECTURES)

# Triton model names
MURA_PREPROCESS_MODEL = "mura_preprocess"
MURA_MEAN_MODEL = "mura_mean"
MURA_ENSEMBLE_MODEL = "mura_ensemble"
MURA_DRIFT_MODEL = "mura_drift"           # python step after mura_mean: drift metrics (issue 21.5)

# Triton tensor names
IMAGE_TENSOR = "IMAGE"                    # UINT8 [H, W] grayscale image of any size
PIXELS_TENSOR = "PIXELS"                  # FP32 [3, S, S] preprocessed backbone input
PROBABILITY_TENSOR = "PROBABILITY"        # FP32 [1] abnormality probability (sigmoid)
MEMBER_PROBABILITIES_TENSOR = "MEMBER_PROBABILITIES"  # FP32 [n], MURA_MEMBERS order
CAM_TENSOR = "CAM"                        # FP32 [h, w] class activation map (logit units, no bias)
HEATMAP_TENSOR = "HEATMAP"                # UINT8 [S, S] ensemble heatmap (sigmoid x 255)
PROVENANCE_TENSOR = "PROVENANCE"          # BYTES [1] JSON: versions, SHA-256s, operating points
FEATURES_TENSOR = "FEATURES"              # FP32 [D] a backbone's pooled penultimate features
OOD_SCORE_TENSOR = "OOD_SCORE"            # FP32 [1] distance to the reference set (1 ~ typical)
MEMBER_SPREAD_TENSOR = "MEMBER_SPREAD"    # FP32 [1] max - min of the member probabilities


def member_probability_tensor(member: str) -> str:
    """Name of the ensemble-internal tensor carrying one member's probability."""
    return f"{member.upper()}_PROBABILITY"


def member_cam_tensor(member: str) -> str:
    """Name of the ensemble-internal tensor carrying one member's class activation map."""
    return f"{member.upper()}_CAM"


def member_features_tensor(member: str) -> str:
    """Name of the ensemble-internal tensor carrying one member's pooled features."""
    return f"{member.upper()}_FEATURES"


MURA_CAM_STRIDE = 32
"""Both backbones downsample by 32: a 320x320 input gives a 10x10 CAM."""

MURA_TINY_ARCHITECTURE = "tiny"
"""A small CNN with the same head and tensor contract: the fast stand-in for client tests."""


MURA_TRAIN_BATCH_SIZE = 8
"""The MURA study's training batch (the recipes' `batch_size` default)."""

MURA_BACKBONE_MAX_BATCH = MURA_TRAIN_BATCH_SIZE
"""Backbones batch up to the study's training batch size; dynamic batching fills it."""

EXPORT_BF16 = "bf16"
"""`msk export --precision bf16`: an explicit opt-in, only on hosts with native bfloat16
(`msk.host.bf16_refusal`); also the OpenVINO INFERENCE_PRECISION_HINT value it sets."""
EXPORT_PRECISIONS = ("fp32", "int8", EXPORT_BF16)
"""`msk export --precision` choices (fp32 default; int8 = statically quantized CPU backbones;
bf16 = the FP32 graphs served at bf16; recorded as `precision` in the manifest and PROVENANCE)."""

EXPORT_CPU_RUNTIMES = ("onnxruntime", "openvino")
"""`msk export --cpu-runtime` choices: the runtime of the MURA backbones on the cpu target
(onnxruntime default; openvino moves the architectures it runs faster, see
`export.model_specs.OPENVINO_ARCHITECTURES`)."""

EXPORT_AUTO = "auto"
"""`msk export --cpu-runtime auto` / `--cpu-cores auto`: measured (read) on the serving host
(`export.runtime_choice`, `msk.host.usable_cores`)."""

OPENVINO_INFERENCE_PRECISION = "f32"
"""The `INFERENCE_PRECISION_HINT` every OpenVINO config carries, for every export precision: FP32
versions run f32, INT8 versions run their quantized ops in int8 and everything else in f32. Never
left to OpenVINO, whose CPU plugin defaults to bf16 on AMX hosts; the backend reads the
effective precision back and refuses another (server/backends/openvino/session.py)."""

REFERENCE_CPU_CORES = 2
"""`msk export --cpu-cores` default: the cores of the CPU the committed cpu configs are rendered
for (the 2-core reference machine of bench/README.md)."""

MURA_DEFAULT_THRESHOLD = 0.5
"""Normal/abnormal call when no calibrated operating point is stored with the models."""

MURA_CALIBRATION_FILE = "ensemble_calibration.json"
"""The ensemble's operating points, fitted on the validation split and written next to the
checkpoints by `msk train mura` (once all four members are trained) and by `msk evaluate mura
--fit-operating-points`; read by `msk export --checkpoints`:
{"operating_points": {body_part: threshold, MURA_OVERALL_OPERATING_POINT: threshold}}."""

MURA_OVERALL_OPERATING_POINT = "default"
"""Key of the ensemble's overall operating point (used when an image's body part is unknown)."""

MURA_DEMO_SEED = 0
"""Seed of the untrained demo weights (deterministic, so the demo repository is reproducible)."""

# Out-of-distribution gate (issue 21): fitted by `msk export`, computed by `mura_mean`, applied by
# the clients (like the operating points: the threshold per body part travels in PROVENANCE).
OOD_DEFAULT_PERCENTILE = 99.0
"""An image is in distribution when its OOD score is at most this percentile of the reference
set's (out-of-fold) scores: 1 % of images like the reference set are flagged by construction."""
OOD_POLICIES = ("flag", "refuse")
"""`--ood` choices: flag (score every image, say `in_distribution: false`) or refuse (an
out-of-distribution image gets no probability and no call, only `error_reason`
`OOD_REFUSED_REASON`)."""
OOD_REFUSED_REASON = "out_of_distribution"
"""`error_reason` of an image refused by the OOD gate (`--ood refuse`)."""
OOD_REFERENCE_FILE = "ood_reference.npz"
"""The fitted reference statistics, stored in `mura_mean/<version>/` (its SHA-256 in the manifest
and in PROVENANCE); the graph's constants are built from it."""
OOD_REFERENCE_CSV = "reference_images.csv"
"""Written by `msk train mura` next to the checkpoints (the training images: path, label,
body_part): `msk export --checkpoints DIR` fits the OOD reference on them unless `--reference`."""
OOD_REFERENCE_MAX_IMAGES = 2000
"""At most this many reference images are used (a deterministic sample by SHA-256 of the path):
enough for the 99th percentile (20 images beyond it), and bounded export time on a CPU."""
OOD_PCA_COMPONENTS = 32
"""Principal components of the tied covariance kept per member (the rest is one isotropic
variance: a probabilistic-PCA Mahalanobis distance). The results at 32 are in bench/README.md
("OOD gate"); other values are not measured yet."""
OOD_FOLDS = 5
"""Cross-fitting folds: reference scores (hence thresholds) come from images the statistics were
not fitted on, so a new image like the reference set is not flagged more often than stated."""

# Drift on the dashboards (issue 21, item 5): `mura_drift` observes every served image's
# probability, OOD score and member spread into Prometheus histograms with these upper bucket
# edges (+Inf implied), and exports the reference set's shares in the same buckets, recorded at
# export: live and reference are compared bucket by bucket (population stability index).
DRIFT_BUCKETS: dict[str, tuple[float, ...]] = {
    "probability": (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
    "ood_score": (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 100.0),
    "member_spread": (0.02, 0.05, 0.1, 0.2, 0.3, 0.5),
}
"""Quantity -> upper bucket edges. The OOD score is about 1 for a typical reference image; the
spread is max - min of four probabilities. One definition: the live histograms and the
reference shares of a version use the edges stored with that version (`mura_drift/<v>/`)."""
DRIFT_BODY_PART_PARAMETER = "body_part"
"""Request parameter `mura_drift` reads the body part from (label `body_part`); absent or not
one of MURA_BODY_PARTS -> `DRIFT_UNKNOWN_BODY_PART`, so a label value is never free text."""
DRIFT_UNKNOWN_BODY_PART = "unknown"
WARMUP_PARAMETER = "msk_warmup"
"""Request parameter of `msk serve`'s own warm-up request (server/warmup.py): `mura_drift` does
not count it, so a restart adds no image to the drift metrics; the front door refuses it from
callers, so nobody can hide images from those metrics."""

# --------------------------------------------------------------------------------------------
# Wrist structure detectors (YOLO study)
# --------------------------------------------------------------------------------------------
WRIST_CROP_TOP_NUMERATOR = 3
WRIST_CROP_TOP_DENOMINATOR = 7
"""The study removes the top 3/7 of every wrist radiograph before detection. Kept as an integer
ratio because the cut row is computed with integers, `(3 * H) // 7`, by numpy
(`msk.wrist_geometry.crop_top_rows`) and by the int64 ops of the ONNX preprocessing graph alike."""

WRIST_HEIGHT = 1400
WRIST_WIDTH = 760
"""Letterbox target (height x width), black padding, image centred."""

WRIST_CLAHE_CLIP_LIMIT = 2.0
WRIST_CLAHE_GRID = (8, 8)

WRIST_JOINT_CLASSES: tuple[str, ...] = ("radcar", "capnlun", "mna")
WRIST_BONE_CLASSES: tuple[str, ...] = ("mul", "nav", "lunate")
WRIST_CLASSES: tuple[str, ...] = WRIST_JOINT_CLASSES + WRIST_BONE_CLASSES

WRIST_DETECTED_IOU = 0.65
"""The study counts a structure as detected when IoU with the ground truth is at least this."""

WRIST_DETECT_MODEL = "wrist_detect"

# Ultralytics' letterbox padding value (grey) and its NMS defaults, copied so that the served
# pipeline reproduces the in-process predictor.
DETECTOR_PAD_VALUE = 114
WRIST_CONF_THRESHOLD = 0.25
"""Score threshold of a served detection, and the default of `msk evaluate wrist --conf`."""
DETECTOR_DEFAULT_IMGSZ = 640
"""Ultralytics' own `imgsz` default: the training size of a checkpoint whose `train_args` lack one
(read by training's evaluation and by export alike)."""
WRIST_NMS_IOU = 0.7
WRIST_MAX_DETECTIONS = 300

# Triton names of the wrist pipeline.
WRIST_PREPROCESS_MODEL = "wrist_preprocess"
WRIST_JOINTS_MODEL = "wrist_joints"
WRIST_BONES_MODEL = "wrist_bones"
WRIST_POSTPROCESS_MODEL = "wrist_postprocess"
BOXES_TENSOR = "BOXES"            # FP32 [N, 4] x1, y1, x2, y2 in original pixels
CLASSES_TENSOR = "CLASSES"        # BYTES [N] class names (WRIST_CLASSES)
SCORES_TENSOR = "SCORES"          # FP32 [N]
WRIST_PROVENANCE_TENSOR = "PROVENANCE"  # BYTES [1] JSON: detector versions, sha256, sizes
GEOMETRY_TENSOR = "GEOMETRY"      # INT64 [7] study letterbox, GEOMETRY_FIELDS order
GEOMETRY_FIELDS = ("orig_h", "orig_w", "crop_top", "new_h", "new_w", "pad_top", "pad_left")
"""Order of the INT64 geometry vector the preprocessing model hands to the postprocessing model
(`msk.wrist_geometry.StudyLetterbox`)."""
WRIST_CANVAS_TENSOR = "CANVAS"    # UINT8 [1400, 760] CLAHE canvas (debug graphs only, parity tests)
# The wrist preprocessing model reads IMAGE_TENSOR and writes PIXELS_TENSOR like mura_preprocess.
DETECTOR_INPUT_TENSOR = "images"  # Ultralytics' ONNX tensor names (set by its exporter)
DETECTOR_OUTPUT_TENSOR = "output0"
WRIST_DETECTORS: dict[str, tuple[str, tuple[str, ...]]] = {
    "joints": (WRIST_JOINTS_MODEL, WRIST_JOINT_CLASSES),
    "bones": (WRIST_BONES_MODEL, WRIST_BONE_CLASSES),
}
"""Detector key (`--wrist-joints`, `--wrist-bones`) -> (Triton model, class names)."""


def detector_raw_tensor(key: str) -> str:
    """Name of the ensemble-internal tensor carrying one detector's raw head (e.g. JOINTS_RAW)."""
    return f"{key.upper()}_RAW"


# --------------------------------------------------------------------------------------------
# ONNX artifacts (every graph written by msk.graphs and export, and the detector export)
# --------------------------------------------------------------------------------------------
ONNX_OPSET = 18
"""Opset of every ONNX file we write: torch 2.14's exporter honours 18 (not 17), Ultralytics
exports it, and Triton 2.51's ONNX Runtime and TensorRT 10 read it."""

ONNX_IR_VERSION = 8
"""IR version of the graphs built with `onnx.helper`: pinned rather than the onnx package's
newest, so upgrading onnx does not change the files (and SHA-256s) an export writes."""


# --------------------------------------------------------------------------------------------
# Local server defaults (127.0.0.1 only)
# --------------------------------------------------------------------------------------------
QUEUE_MAX_SIZE = 64
"""Requests one model instance may hold waiting (every model's bounded queue, export/configs.py;
also the size of tritonserver's gRPC allocation pool, server/serve.py). Sized from measured
throughput on the 2-core reference CPU (docs/gpu-deployment.md for GPUs): the slowest step, a
ResNet-101 backbone, runs ~155 ms per image at batch 8, so 64 waiting images are ~10 s of work -
past that, a new request is answered UNAVAILABLE ("Exceeds maximum queue size") at once instead
of waiting minutes."""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
DEFAULT_GRPC_URL = f"{DEFAULT_HOST}:{DEFAULT_GRPC_PORT}"
DEFAULT_WEB_PORT = 8080
"""`msk web`."""
DEFAULT_AE_TITLE = "MSKTRITON"
DEFAULT_DICOM_PORT = 11112
"""`msk gateway`: the AE title and port a PACS sends to; 11112 is the IANA-registered DICOM port
that needs no root privileges (104 does)."""

# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
DICOM_SUFFIXES: frozenset[str] = frozenset({".dcm", ".dicom"})
"""Names of DICOM files; the reader recognises DICOM by content, the name only decides which
parser explains an unrecognised file."""
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm"} | DICOM_SUFFIXES)
"""Suffixes that folder/glob expansion treats as radiographs, in every command and in training
(explicit files are always taken; the reader decides the format from the content, not the name)."""

# Limits of the radiograph reader (`msk.imaging`), the same for `msk score`, `msk detect`, the web
# app, the gateway and training. Checked from the file size / header BEFORE anything is decoded.
MAX_IMAGE_BYTES = 64 * 1024 * 1024
"""Largest radiograph file (64 MiB): an uncompressed 16-bit 4300 x 4300 detector plate is 35 MiB;
a bigger file is almost certainly not one image. Checked from `stat` (a 3 GB sparse file is refused
without being read) and, for uploads, before the body is read."""

MAX_IMAGE_PIXELS = 32 * 1024 * 1024
"""Largest image in pixels (32 Mi, e.g. 8192 x 4096 or 5792 x 5792): the largest radiography
detectors (43 x 43 cm at 100 um) have 18.5 M. Checked from the header before decoding, so a
20000 x 20000 PNG bomb costs nothing. Triton's request guard uses the same number."""

MIN_IMAGE_SIDE = 32
"""Smallest width and height in pixels: the backbones downsample by 32 (`MURA_CAM_STRIDE`), and
anything smaller (1x1, 8x8, 1x5000 strips) is an icon or a mistake, never a radiograph."""

MAX_UPLOAD_REQUEST_BYTES = 8 * MAX_IMAGE_BYTES
"""Largest web upload request (512 MiB, several large radiographs), refused from its
Content-Length before the body is read; each file in it is still held to `MAX_IMAGE_BYTES`."""

SCORE_SHM_PREFIX = "msk_score_"
"""System shared-memory regions of `msk score --shared-memory` are
/dev/shm/msk_score_<pid>_<random>_<slot>: the owner's pid in the name lets `msk serve` find and
unregister the regions of a client that was killed (server/shm_janitor.py)."""
