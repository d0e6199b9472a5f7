"""Assemble the GPU variant of a model repository from the CPU one `msk export` builds.

Same source of truth, different target: configs come from `export.configs.render_mura_configs(
"gpu")` (backbones as `tensorrt_plan`, every model `KIND_GPU`, backbone warm-up at batch 1 and the
max batch size); artifacts are the very ONNX files of the CPU repository, version by version.
Backbone versions keep `model.onnx` beside the `model.plan` that `export.tensorrt` then builds on
the target GPU (Triton's TensorRT backend reads only `model.plan`). Models outside the MURA
pipeline (e.g. the wrist detector) are copied unchanged.

Runs inside NVIDIA's TensorRT container (compose `engines` service): standard library and
`msk.constants`/`export.configs` only.

    python3 -m export.gpu_repository --source model_repository --out /models
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from export.configs import render_mura_configs
from msk.constants import MURA_IMAGE_SIZE


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


def assemble_gpu_repository(source: Path, out: Path, image_size: int = MURA_IMAGE_SIZE
                            ) -> dict[str, str]:
    """Write the GPU repository under `out`; return model name -> GPU config text.

    Fails with a clear message when the source lacks a MURA model or any version of it, since a
    GPU repository with a hole would only fail later inside the container.
    """
    configs = render_mura_configs("gpu", image_size=image_size)
    out.mkdir(parents=True, exist_ok=True)
    for loose in sorted(p for p in source.iterdir() if p.is_file()):
        if not loose.name.startswith("."):
            _copy_file(loose, out / loose.name)   # manifest.json: provenance of the artifacts
    for model_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        if model_dir.name in configs or not (model_dir / "config.pbtxt").is_file():
            continue
        _copy_tree(model_dir, out / model_dir.name)  # non-MURA models: unchanged
    for name, text in configs.items():
        src_dir = source / name
        if not (src_dir / "config.pbtxt").is_file():
            raise FileNotFoundError(f"{src_dir}: missing from the source repository "
                                    "(run `msk export` first)")
        versions = sorted(p for p in src_dir.iterdir() if p.is_dir() and p.name.isdigit())
        if not versions and "ensemble" not in text:
            raise FileNotFoundError(f"{src_dir}: no version folder (run `msk export` first)")
        for version in versions:
            (out / name / version.name).mkdir(parents=True, exist_ok=True)  # ensembles: empty
            _copy_tree(version, out / name / version.name)
        (out / name / "config.pbtxt").write_text(text)
    return configs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.gpu_repository",
        description="Write the GPU variant (tensorrt_plan backbones, KIND_GPU, warm-up) of a "
        "CPU model repository; then build the engines with `python -m export.tensorrt`.")
    parser.add_argument("--source", type=Path, required=True, help="CPU model repository")
    parser.add_argument("--out", type=Path, required=True, help="GPU repository to write")
    args = parser.parse_args(argv)
    try:
        configs = assemble_gpu_repository(args.source, args.out)
    except FileNotFoundError as exc:
        print(f"export.gpu_repository: {exc}", file=sys.stderr)
        return 1
    print(f"export.gpu_repository: {len(configs)} MURA models -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
