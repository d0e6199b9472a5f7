"""`msk export`: build or update a model repository (ONNX artifacts, configs, manifest)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from functools import partial
from pathlib import Path

from clients.inputs import image_set
from msk.commands._args import positive_int
from msk.commands._ood_reference import ood_reference_set
from msk.constants import (
    EXPORT_AUTO,
    EXPORT_BF16,
    EXPORT_CPU_RUNTIMES,
    EXPORT_PRECISIONS,
    MURA_BODY_PARTS,
    MURA_CALIBRATION_FILE,
    MURA_MEMBERS,
    MURA_OVERALL_OPERATING_POINT,
    OOD_DEFAULT_PERCENTILE,
    OOD_REFERENCE_CSV,
    OOD_REFERENCE_MAX_IMAGES,
    REFERENCE_CPU_CORES,
)

log = logging.getLogger("msk.export")
MEASURE_STARTUP_TIMEOUT_S = 1800.0
"""How long the export's own tritonserver (runtime measurement, accuracy gate) may take to load:
it loads every candidate at once, and OpenVINO compiles each batch size of each full-size
backbone at load (minutes on 2 cores), far beyond a serving start-up."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export models to ONNX and assemble a Triton model repository",
        description="Export the MURA ensemble (untrained demo weights, a tiny stand-in, or trained "
        "checkpoints) to ONNX, verify each against PyTorch, and write configs, versioned "
        "artifacts and manifest.json into the repository. Trained checkpoints become a NEW "
        "version of every model; the previous version stays loadable.",
    )
    p.add_argument("--repository", default="model_repository",
                   help="output repository (default: ./model_repository), or object storage "
                   "s3://[HOST:PORT/]BUCKET/PREFIX: built locally on top of the current "
                   "release, then published as a new release (see `msk publish`)")
    p.add_argument("--checkpoints", type=Path, default=None,
                   help="folder with one <member>.pt per ensemble member "
                   f"({', '.join(MURA_MEMBERS)}) and optionally ensemble_calibration.json "
                   "({\"operating_points\": {body_part: threshold}})")
    p.add_argument("--tiny", action="store_true",
                   help="tiny stand-in backbones with the same tensor contract (for tests)")
    p.add_argument("--target", choices=("cpu", "gpu"), default="cpu",
                   help="cpu: ONNX on the onnxruntime backend; gpu: configs for TensorRT plans "
                   "and KIND_GPU (engines are built on the GPU host, see docs/gpu-deployment.md)")
    p.add_argument("--cpu-cores", type=_cores, default=REFERENCE_CPU_CORES, metavar="N|auto",
                   help="cpu target: cores the serving host gives Triton (default "
                   f"{REFERENCE_CPU_CORES}, the reference CPU; auto: this host's usable cores, "
                   "its CPU affinity capped by its cgroup CPU quota - run the export on the "
                   "serving host); models that run side by side share them as runtime threads "
                   "(the four backbones: N // 4 each, at least 1). Changes the configs only, "
                   "never adds a version")
    p.add_argument("--cpu-runtime", choices=(*EXPORT_CPU_RUNTIMES, EXPORT_AUTO),
                   default=EXPORT_CPU_RUNTIMES[0],
                   help="cpu target: the runtime of the four backbones, onnxruntime (default), "
                   "openvino (Triton's OpenVINO backend on the same model.onnx for DenseNet-169, "
                   "see bench/README.md), or auto: each backbone is served by tritonserver on "
                   "each available runtime at the chosen precision and threads, timed for a few "
                   "requests, and gets the fastest; the measurements, the choice and the host's "
                   "ISA are recorded in manifest.json (\"serving\"). Changes the configs only, "
                   "never adds a version (a later run may choose differently: configs change)")
    p.add_argument("--imagenet-weights", type=Path, default=None,
                   help="folder with local torchvision ImageNet state dicts named "
                   "densenet169.pth / resnet101.pth for the demo members (never downloaded)")
    p.add_argument("--wrist-joints", type=Path, default=None,
                   help="trained joints detector (.pt) to add the wrist_detect ensemble")
    p.add_argument("--wrist-bones", type=Path, default=None,
                   help="trained bones detector (.pt), used with --wrist-joints")
    p.add_argument("--force", action="store_true",
                   help="write a new version even if the newest one already has these weights")
    p.add_argument("--precision", choices=EXPORT_PRECISIONS, default="fp32",
                   help="fp32 (default) or int8: statically quantized backbones (ONNX Runtime "
                   "QDQ, per-channel weights) for the CPU target, calibrated on --calibration "
                   "and promoted only if they pass the accuracy gate against FP32 on --holdout; "
                   "the gate serves both through tritonserver with the runtime, precision and "
                   "threads the repository will use (see docs/int8.md). bf16: the FP32 graphs "
                   "served by OpenVINO at bf16, promoted through the same gate on --holdout; "
                   "only on hosts with AMX-BF16/AVX-512 BF16, refused elsewhere (the error names "
                   "this host's ISA); no runtime ever lowers precision on its own")
    p.add_argument("--calibration", action="append", default=[], metavar="DIR|GLOB|CSV",
                   help="int8: images whose activation ranges calibrate the quantization (a "
                   "folder, a glob pattern or a CSV manifest, as `msk score` reads them; "
                   "repeatable); a few hundred typical radiographs, not the held-out set")
    p.add_argument("--holdout", action="append", default=[], metavar="DIR|CSV",
                   help="int8: labelled held-out images for the accuracy gate (MURA layout "
                   "folder or a CSV manifest with path,label[,study,body_part]; repeatable)")
    p.add_argument("--reference", action="append", default=[], metavar="DIR|CSV",
                   help="images the out-of-distribution statistics are fitted on (a folder or a "
                   "CSV manifest, as `msk score` reads them; labels and body parts optional; "
                   f"repeatable; at most {OOD_REFERENCE_MAX_IMAGES} are used). Default: the "
                   f"training images (<checkpoints>/{OOD_REFERENCE_CSV}, written by `msk train "
                   "mura`); the demo and --tiny use synthetic images and say so. Another "
                   "reference set makes a new version")
    p.add_argument("--ood-percentile", action="append", default=[], metavar="[PART=]Q",
                   type=_percentile,
                   help="in-distribution threshold: the Q-th percentile of the reference set's "
                   f"OOD scores (default {OOD_DEFAULT_PERCENTILE:g}); PART=Q sets it for one body "
                   f"part ({', '.join(MURA_BODY_PARTS)}); repeatable. A change makes a new "
                   "version")
    p.set_defaults(handler=run)


def _cores(text: str) -> int | str:
    """--cpu-cores: a positive count or `auto` (this host's usable cores)."""
    return EXPORT_AUTO if text == EXPORT_AUTO else positive_int(text)


def _resolve_cores(value: int | str) -> tuple[int, str]:
    """(cores, where the number came from) for the manifest's serving record."""
    from msk.host import usable_cores

    if value == EXPORT_AUTO:
        return usable_cores(), "auto: CPU affinity capped by the cgroup CPU quota of this host"
    return int(value), "given (--cpu-cores)"


def _check_bf16(args: argparse.Namespace) -> None:
    """bf16 is an explicit opt-in that only a host with native bfloat16 can serve; refused here
    with the host's ISA named (OpenVINO would otherwise run f32 while the manifest says bf16)."""
    from msk.host import bf16_refusal

    if args.precision != EXPORT_BF16:
        return
    reason = bf16_refusal()
    if reason is not None:
        raise ValueError(f"--precision bf16 refused: {reason}")
    if args.target != "cpu":
        raise ValueError("--precision bf16 is for --target cpu only (OpenVINO's CPU plugin)")
    if not args.holdout or args.calibration:
        raise ValueError("--precision bf16 needs --holdout (labelled images for the accuracy "
                         "gate) and no --calibration")
    if args.cpu_runtime == EXPORT_CPU_RUNTIMES[0]:
        log.info("--precision bf16: the backbones are served by OpenVINO")
        args.cpu_runtime = "openvino"


def _percentile(text: str) -> tuple[str, float]:
    part, _, value = text.rpartition("=")
    part = part.strip().lower() or MURA_OVERALL_OPERATING_POINT
    if part not in (*MURA_BODY_PARTS, MURA_OVERALL_OPERATING_POINT):
        raise argparse.ArgumentTypeError(f"unknown body part {part!r} (expected one of "
                                         f"{', '.join(MURA_BODY_PARTS)})")
    try:
        q = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentile: {value!r}") from None
    if not 0.0 < q <= 100.0:
        raise argparse.ArgumentTypeError(f"percentile must be in (0, 100], got {q:g}")
    return part, q


def _checkpoints(folder: Path) -> tuple[dict[str, Path], dict[str, float] | None]:
    paths = {m: folder / f"{m}.pt" for m in MURA_MEMBERS}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing checkpoints: {', '.join(missing)}")
    calibration = folder / MURA_CALIBRATION_FILE
    points = (json.loads(calibration.read_text()).get("operating_points")
              if calibration.is_file() else None)
    return paths, points


def _calibration_images(specs: list[str]) -> list[Path]:
    """The calibration set's image paths, through the one input expander (`clients.inputs`)."""
    return [Path(item.path) for item in image_set(specs, "--calibration")]


def _holdout_records(specs: list[str]) -> list:
    """The held-out set as labelled records; every image needs a label (MURA layout or a CSV
    `label` column); images without a study are their own study."""
    from training.mura_data import UNKNOWN_PART, Record

    items = image_set(specs, "--holdout")
    unlabelled = [item.path for item in items if item.label is None]
    if unlabelled:
        raise ValueError(f"--holdout: {unlabelled[0]} has no label (use the MURA layout "
                         "study<n>_positive|negative/ or a CSV manifest with a label column)")
    return [Record(path=Path(item.path), label=int(item.label),
                   body_part=item.body_part or UNKNOWN_PART, patient=item.study or item.path,
                   study=item.study or item.path) for item in items]


def _precision_inputs(args: argparse.Namespace) -> tuple[list[Path], list]:
    """(calibration images, held-out records) for --precision int8 (records only for bf16);
    empty for fp32."""
    if args.precision == EXPORT_BF16:
        return [], _holdout_records(args.holdout)
    if args.precision != "int8":
        if args.calibration or args.holdout:
            raise ValueError("--calibration and --holdout belong to --precision int8")
        return [], []
    if args.target != "cpu":
        raise ValueError("--precision int8 is for --target cpu only (GPU targets build TensorRT "
                         "engines from the FP32 graphs)")
    if not args.calibration or not args.holdout:
        raise ValueError("--precision int8 needs --calibration (images) and --holdout "
                         "(labelled images for the accuracy gate)")
    return _calibration_images(args.calibration), _holdout_records(args.holdout)


def _terminate_as_exit(signum: int, _frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so the export's staging folder is removed on the way out."""
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace) -> int:
    from export.repository import build_repository
    from export.staging import ExportAborted
    from msk.constants import MURA_ARCHITECTURES
    from server.launcher import TritonServer

    signal.signal(signal.SIGTERM, _terminate_as_exit)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    checkpoints, points = (None, None)
    if args.checkpoints is not None:
        try:
            checkpoints, points = _checkpoints(args.checkpoints)
        except (FileNotFoundError, ValueError) as exc:
            print(f"msk export: {exc}", file=sys.stderr)
            return 2
    try:
        _check_bf16(args)
        calibration, holdout = _precision_inputs(args)
        reference = ood_reference_set(args.reference, args.checkpoints, "--reference")
        cores, cores_source = _resolve_cores(args.cpu_cores)
        if args.target != "cpu" and (args.cpu_cores != REFERENCE_CPU_CORES
                                     or args.cpu_runtime != EXPORT_CPU_RUNTIMES[0]):
            raise ValueError("--cpu-cores and --cpu-runtime are for --target cpu (GPU targets "
                             "run on the GPU)")
    except ValueError as exc:
        print(f"msk export: {exc}", file=sys.stderr)
        return 2
    imagenet = None
    if args.imagenet_weights is not None:
        imagenet = {m: args.imagenet_weights / f"{arch}.pth"
                    for m, arch in MURA_ARCHITECTURES.items()}
    wrist = None
    if args.wrist_joints or args.wrist_bones:
        if not (args.wrist_joints and args.wrist_bones):
            print("msk export: --wrist-joints and --wrist-bones go together", file=sys.stderr)
            return 2
        wrist = {"joints": args.wrist_joints, "bones": args.wrist_bones}
    def build(repository: Path) -> int:
        return build_repository(repository, checkpoints=checkpoints, tiny=args.tiny,
                                target=args.target, operating_points=points,
                                imagenet_weights=imagenet, wrist_weights=wrist, force=args.force,
                                precision=args.precision, calibration=calibration,
                                holdout=holdout, cpu_cores=cores,
                                cpu_runtime=args.cpu_runtime, reference=reference,
                                ood_percentiles=dict(args.ood_percentile),
                                launch=partial(TritonServer,
                                               startup_timeout=MEASURE_STARTUP_TIMEOUT_S),
                                cores_source=cores_source)

    try:
        if str(args.repository).startswith("s3://"):
            return _export_to_object_store(str(args.repository), build)
        version = build(Path(args.repository))
    except ExportAborted as exc:
        print(f"msk export: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError:
        raise           # a part not installed: msk.cli names the part to install
    except Exception as exc:  # why: any exporter's failure is reported; the repo is untouched
        log.exception("export failed")
        print(f"msk export: failed ({type(exc).__name__}: {exc}); {args.repository} was left "
              "as it was", file=sys.stderr)
        return 1
    print(json.dumps({"repository": str(args.repository), "version": version}))
    return 0


def _export_to_object_store(url: str, build) -> int:
    """Build on a local copy of the current release, then publish it as a new release."""
    import tempfile

    from export.object_store import ObjectStoreError, download_current, publish

    with tempfile.TemporaryDirectory(prefix="msk-export-") as tmp:
        local = Path(tmp) / "repository"
        try:
            base = download_current(url, local)
            version = build(local)
            result = publish(local, url)
        except ObjectStoreError as exc:
            print(f"msk export: {exc}", file=sys.stderr)
            return 2
    print(json.dumps({**result, "version": version, "based_on": base}))
    return 0
