"""Write the GPU variant of a model repository that `msk export` built for the CPU.

Not a second description: the configs are `export.configs.render(spec, "gpu")` of the very specs
`msk export --target gpu` renders (`export.model_specs`), for every pipeline the source holds -
MURA, and wrist at the input size its detectors were exported at (read from the postprocessing
model's params.json). Artifacts are the very files of the CPU repository, version by version.
Backbone versions keep `model.onnx` beside the `model.plan` that `export.tensorrt` then builds on
the target GPU (Triton's TensorRT backend reads only `model.plan`).

Why this entry point exists beside `msk export --target gpu`: it runs in the server image
(compose `gpu-repository` service), which has no torch, on a repository already exported
elsewhere; standard library and `msk.constants`/`export.configs`, plus ONNX Runtime's FP16
converter with `--fp16-onnx` (export/fp16_onnx.py: TensorRT 11 takes its precision from the
ONNX graph, so each TensorRT version folder gets `model.fp16.onnx` for export.tensorrt):

    python3 -m export.gpu_repository --source model_repository --out /models --fp16-onnx
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from export.configs import render
from export.model_specs import ModelSpec, mura_specs, wrist_specs
from msk.constants import MURA_IMAGE_SIZE, WRIST_POSTPROCESS_MODEL


def _copy_file(src: Path, dst: Path) -> None:
    """Hard-link when possible (same volume, big ONNX files), else copy; skip identical files."""
    if dst.exists() and dst.stat().st_size == src.stat().st_size and \
            dst.stat().st_mtime >= src.stat().st_mtime:
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _copy_tree(src: Path, dst: Path) -> None:
    for path in sorted(src.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            _copy_file(path, dst / path.relative_to(src))


def _wrist_input_size(source: Path) -> tuple[int, int] | None:
    """The detectors' input size of the newest wrist version in `source` (None: no wrist)."""
    folder = source / WRIST_POSTPROCESS_MODEL
    versions = sorted((p for p in folder.glob("[0-9]*") if p.name.isdigit()),
                      key=lambda p: int(p.name)) if folder.is_dir() else []
    if not versions:
        return None
    params = json.loads((versions[-1] / "params.json").read_text())
    return int(params["in_h"]), int(params["in_w"])


def source_specs(source: Path, image_size: int = MURA_IMAGE_SIZE) -> tuple[ModelSpec, ...]:
    """The specs of every pipeline `source` holds (MURA always; wrist when it was exported)."""
    wrist = _wrist_input_size(source)
    return mura_specs(image_size) + (wrist_specs(*wrist) if wrist else ())


def assemble_gpu_repository(source: Path, out: Path, image_size: int = MURA_IMAGE_SIZE,
                            fp16_onnx: bool = False) -> dict[str, str]:
    """Write the GPU repository under `out`; return model name -> GPU config text.

    Fails with a clear message when the source lacks a model or any version of it, since a GPU
    repository with a hole would only fail later inside the container.
    """
    specs = source_specs(source, image_size)
    configs = {spec.name: render(spec, "gpu") for spec in specs}
    out.mkdir(parents=True, exist_ok=True)
    for loose in sorted(p for p in source.iterdir() if p.is_file()):
        if not loose.name.startswith("."):
            _copy_file(loose, out / loose.name)   # manifest.json: provenance of the artifacts
    for model_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        if model_dir.name in configs or not (model_dir / "config.pbtxt").is_file():
            continue
        _copy_tree(model_dir, out / model_dir.name)  # models of no known pipeline: unchanged
    for spec in specs:
        src_dir = source / spec.name
        if not (src_dir / "config.pbtxt").is_file():
            raise FileNotFoundError(f"{src_dir}: missing from the source repository "
                                    "(run `msk export` first)")
        versions = sorted(p for p in src_dir.iterdir() if p.is_dir() and p.name.isdigit())
        if not versions and not spec.is_ensemble:
            raise FileNotFoundError(f"{src_dir}: no version folder (run `msk export` first)")
        for version in versions:
            (out / spec.name / version.name).mkdir(parents=True, exist_ok=True)  # ensembles
            _copy_tree(version, out / spec.name / version.name)
            if fp16_onnx and spec.gpu_platform == "tensorrt_plan":
                _write_fp16(out / spec.name / version.name)
        (out / spec.name / "config.pbtxt").write_text(configs[spec.name])
    return configs


def _write_fp16(version_dir: Path) -> None:
    """model.fp16.onnx beside model.onnx, once per content (newer than its source = done)."""
    from export.fp16_onnx import FP16_ONNX_NAME, write_fp16

    source, target = version_dir / "model.onnx", version_dir / FP16_ONNX_NAME
    if source.is_file() and not (target.is_file()
                                 and target.stat().st_mtime >= source.stat().st_mtime):
        write_fp16(source, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.gpu_repository",
        description="Write the GPU variant (tensorrt_plan backbones, KIND_GPU, warm-up) of a "
        "CPU model repository; then build the engines with `python -m export.tensorrt`.")
    parser.add_argument("--source", type=Path, required=True, help="CPU model repository")
    parser.add_argument("--out", type=Path, required=True, help="GPU repository to write")
    parser.add_argument("--fp16-onnx", action="store_true",
                        help="also write model.fp16.onnx for every TensorRT backbone version "
                        "(TensorRT 11 builds FP16 engines from FP16 graphs; needs onnxruntime)")
    args = parser.parse_args(argv)
    try:
        configs = assemble_gpu_repository(args.source, args.out, fp16_onnx=args.fp16_onnx)
    except FileNotFoundError as exc:
        print(f"export.gpu_repository: {exc}", file=sys.stderr)
        return 1
    print(f"export.gpu_repository: {len(configs)} models -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
