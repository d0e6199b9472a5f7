"""Build TensorRT engines for every `tensorrt_plan` model of a repository, on the GPU it runs on.

Run by the `engines` init service of docker-compose.yml in NVIDIA's TensorRT container (same
release as the Triton image, `.env` TRITON_RELEASE, so the engine's TensorRT version matches the
server's), before Triton starts:

    python3 -m export.tensorrt --repository /models --timing-cache /cache/timing.cache

Why `trtexec` and not the Python API: it ships in every NVIDIA TensorRT container, its flags are
stable across releases, and its log is what NVIDIA support asks for.

Target: TensorRT 11 (`TENSORRT_TARGET`; NGC 26.06 and later, the pinned 26.09 included). It
builds strongly typed networks only and removed the FP16/INT8 builder flags, so the precision
comes from the graph: for each version folder it builds `model.plan` from `model.fp16.onnx`
(written by `export.gpu_repository --fp16-onnx`, export/fp16_onnx.py) - or from `model.onnx`
with `--precision fp32` - with:
  * no precision flag (inputs and outputs stay FP32 as the config says: the FP16 graph keeps
    FP32 I/O),
  * one optimisation profile per input with the batch dimension 1 .. max_batch_size of the
    config and the optimum at its preferred batch size (what dynamic batching produces),
  * a shared timing cache, so rebuilding after a new model version takes seconds, not minutes.
A sidecar `model.plan.json` records the ONNX SHA-256, GPU, TensorRT version and command; an
engine is rebuilt only when one of them changed (engines are specific to GPU and TensorRT).
Only the standard library, `msk.constants` and `export.manifest` (itself stdlib-only) are
imported: NVIDIA's container has nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from export.fp16_onnx import FP16_ONNX_NAME
from export.manifest import sha256_file

TRTEXEC_CANDIDATES = ("trtexec", "/usr/src/tensorrt/bin/trtexec")
TENSORRT_TARGET = 11
"""The TensorRT major version these commands are for (strongly typed; no --fp16 flag)."""
ONNX_FOR_PRECISION = {"fp16": FP16_ONNX_NAME, "fp32": "model.onnx"}
"""Which graph an engine of each precision is built from (TensorRT 11 reads the precision from
it; export/fp16_onnx.py writes the FP16 one)."""
DEFAULT_WORKSPACE_MIB = 4096


@dataclass(frozen=True)
class EngineSpec:
    """What engine building needs from a `config.pbtxt` (read back from the repository it
    builds for, which may have been exported by another version of `export.model_specs`)."""

    name: str
    platform: str
    max_batch_size: int
    inputs: tuple[tuple[str, tuple[int, ...]], ...]
    preferred_batch_sizes: tuple[int, ...] = field(default_factory=tuple)

    @property
    def optimum_batch(self) -> int:
        usable = [b for b in self.preferred_batch_sizes if 1 <= b <= self.max_batch_size]
        return max(usable) if usable else max(1, self.max_batch_size)


_NAME = re.compile(r'^\s*name:\s*"([^"]+)"', re.MULTILINE)
_PLATFORM = re.compile(r'^\s*platform:\s*"([^"]+)"', re.MULTILINE)
_MAX_BATCH = re.compile(r"^\s*max_batch_size:\s*(\d+)", re.MULTILINE)
_INPUT_BLOCK = re.compile(r"^input\s*\[(.*?)^\]", re.MULTILINE | re.DOTALL)
_TENSOR = re.compile(r'name:\s*"([^"]+)"[^}]*?dims:\s*\[([^\]]*)\]', re.DOTALL)
_PREFERRED = re.compile(r"preferred_batch_size:\s*\[([^\]]*)\]")


def parse_config(text: str) -> EngineSpec:
    """Read name, platform, batch limits and input dims from `config.pbtxt` text."""
    name = _NAME.search(text)
    if name is None:
        raise ValueError("config.pbtxt has no name")
    platform = _PLATFORM.search(text)
    max_batch = _MAX_BATCH.search(text)
    block = _INPUT_BLOCK.search(text)
    inputs = tuple(
        (m.group(1), tuple(int(d) for d in m.group(2).replace(" ", "").split(",") if d))
        for m in _TENSOR.finditer(block.group(1) if block else "")
    )
    preferred = _PREFERRED.search(text)
    return EngineSpec(
        name=name.group(1),
        platform=platform.group(1) if platform else "",
        max_batch_size=int(max_batch.group(1)) if max_batch else 0,
        inputs=inputs,
        preferred_batch_sizes=tuple(int(b) for b in preferred.group(1).split(",") if b.strip())
        if preferred else (),
    )


def profile_shapes(spec: EngineSpec) -> dict[str, tuple[str, str, str]]:
    """input name -> (min, opt, max) shape strings for trtexec (`1x3x320x320` style)."""
    if any(d < 0 for _, dims in spec.inputs for d in dims):
        raise ValueError(f"{spec.name}: TensorRT profiles need fixed non-batch dims")
    shapes: dict[str, tuple[str, str, str]] = {}
    for name, dims in spec.inputs:
        def shape(batch: int, dims: tuple[int, ...] = dims) -> str:
            full = (batch, *dims) if spec.max_batch_size > 0 else dims
            return "x".join(str(d) for d in full)
        top = max(1, spec.max_batch_size)
        shapes[name] = (shape(1), shape(spec.optimum_batch), shape(top))
    return shapes


def trtexec_command(trtexec: str, onnx: Path, plan: Path, spec: EngineSpec,
                    timing_cache: Path | None,
                    workspace_mib: int = DEFAULT_WORKSPACE_MIB) -> list[str]:
    """The trtexec command of one engine (TensorRT 11: the precision is `onnx`'s own)."""
    shapes = profile_shapes(spec)
    cmd = [trtexec, f"--onnx={onnx}", f"--saveEngine={plan}",
           f"--memPoolSize=workspace:{workspace_mib}M", "--skipInference"]
    if spec.max_batch_size > 0:
        for key, index in (("--minShapes", 0), ("--optShapes", 1), ("--maxShapes", 2)):
            cmd.append(f"{key}=" + ",".join(f"{n}:{s[index]}" for n, s in shapes.items()))
    if timing_cache is not None:
        cmd.append(f"--timingCacheFile={timing_cache}")
    return cmd


def gpu_identity() -> str:
    """The GPU the engine is built for (engines are not portable across GPU models)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap,driver_version",
             "--format=csv,noheader"], capture_output=True, text=True, check=True, timeout=30)
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def tensorrt_version() -> str:
    try:
        import tensorrt  # type: ignore[import-not-found]  # only inside NVIDIA's container

        return str(tensorrt.__version__)
    except ImportError:
        return os.environ.get("TRT_VERSION", "unknown")


def find_trtexec(explicit: str | None = None) -> str:
    for candidate in ((explicit,) if explicit else TRTEXEC_CANDIDATES):
        found = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
        if found:
            return found
    raise FileNotFoundError(
        "trtexec not found: run this in NVIDIA's TensorRT container (nvcr.io/nvidia/tensorrt), "
        "which has /usr/src/tensorrt/bin/trtexec"
    )


@dataclass
class EngineJob:
    model: str
    version: str
    onnx: Path
    plan: Path
    command: list[str]
    stamp: dict[str, str]

    @property
    def stamp_path(self) -> Path:
        return self.plan.with_name(self.plan.name + ".json")

    def up_to_date(self) -> bool:
        if not self.plan.is_file() or not self.stamp_path.is_file():
            return False
        try:
            return json.loads(self.stamp_path.read_text()) == self.stamp
        except ValueError:
            return False


def plan_jobs(repository: Path, trtexec: str, timing_cache: Path | None,
              workspace_mib: int = DEFAULT_WORKSPACE_MIB, precision: str = "fp16",
              gpu: str | None = None, trt_version: str | None = None) -> list[EngineJob]:
    """One job per (tensorrt_plan model, version folder holding the graph of `precision`)."""
    gpu = gpu if gpu is not None else gpu_identity()
    trt_version = trt_version if trt_version is not None else tensorrt_version()
    jobs: list[EngineJob] = []
    for config in sorted(repository.glob("*/config.pbtxt")):
        spec = parse_config(config.read_text())
        if spec.platform != "tensorrt_plan":
            continue
        for version_dir in sorted(p for p in config.parent.iterdir()
                                  if p.is_dir() and p.name.isdigit()):
            onnx = version_dir / ONNX_FOR_PRECISION[precision]
            if not onnx.is_file():
                continue
            plan = version_dir / "model.plan"
            cmd = trtexec_command(trtexec, onnx, plan.with_name("model.plan.tmp"), spec,
                                  timing_cache, workspace_mib)
            stamp = {"onnx_sha256": sha256_file(onnx), "gpu": gpu, "tensorrt": trt_version,
                     "command": " ".join(cmd[1:])}
            jobs.append(EngineJob(spec.name, version_dir.name, onnx, plan, cmd, stamp))
    return jobs


def build(job: EngineJob, log_dir: Path | None = None) -> None:
    """Run trtexec, then move the engine into place and write its stamp (atomic per engine)."""
    tmp = job.plan.with_name("model.plan.tmp")
    log = (log_dir or job.plan.parent) / f"trtexec-{job.model}-{job.version}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        proc = subprocess.run(job.command, stdout=handle, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0 or not tmp.is_file():
        raise RuntimeError(f"trtexec failed for {job.model}/{job.version} (exit "
                           f"{proc.returncode}); see {log}")
    os.replace(tmp, job.plan)
    job.stamp_path.write_text(json.dumps(job.stamp, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.tensorrt",
        description=f"Build TensorRT {TENSORRT_TARGET} engines (model.plan) for every "
        "tensorrt_plan model of a Triton repository, from the FP16 graph beside it "
        "(model.fp16.onnx, export.gpu_repository --fp16-onnx), on this GPU.")
    parser.add_argument("--repository", type=Path, required=True,
                        help="GPU model repository (from export.gpu_repository)")
    parser.add_argument("--timing-cache", type=Path, default=None,
                        help="trtexec timing cache file shared by all builds (kept across runs)")
    parser.add_argument("--workspace-mib", type=int, default=DEFAULT_WORKSPACE_MIB,
                        help="builder workspace in MiB (default 4096)")
    parser.add_argument("--precision", choices=tuple(ONNX_FOR_PRECISION), default="fp16",
                        help="fp16 (default): from model.fp16.onnx; fp32: from model.onnx")
    parser.add_argument("--trtexec", default=None, help="path of trtexec (default: search)")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the trtexec commands as JSON lines and build nothing")
    args = parser.parse_args(argv)

    trtexec = args.trtexec or "trtexec"
    if not args.dry_run:
        try:
            trtexec = find_trtexec(args.trtexec)
        except FileNotFoundError as exc:
            print(f"export.tensorrt: {exc}", file=sys.stderr)
            return 2
    if args.timing_cache is not None:
        args.timing_cache.parent.mkdir(parents=True, exist_ok=True)
    jobs = plan_jobs(args.repository, trtexec, args.timing_cache, args.workspace_mib,
                     precision=args.precision,
                     gpu="dry-run" if args.dry_run else None,
                     trt_version="dry-run" if args.dry_run else None)
    if not jobs:
        print(f"export.tensorrt: no tensorrt_plan model with a "
              f"{ONNX_FOR_PRECISION[args.precision]} under {args.repository} (FP16 graphs come "
              "from `python3 -m export.gpu_repository ... --fp16-onnx`)", file=sys.stderr)
        return 1
    for job in jobs:
        if args.dry_run:
            print(json.dumps({"model": job.model, "version": job.version,
                              "command": job.command}))
            continue
        if job.up_to_date() and not args.force:
            print(f"export.tensorrt: {job.model}/{job.version} up to date", file=sys.stderr)
            continue
        print(f"export.tensorrt: building {job.model}/{job.version} on {job.stamp['gpu']} "
              f"(TensorRT {job.stamp['tensorrt']})", file=sys.stderr, flush=True)
        try:
            build(job)
        except RuntimeError as exc:
            print(f"export.tensorrt: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
