"""What a MURA model repository serves: per backbone its architecture, runtime, threads and cost.

Why here: the export writes these facts (the manifest's provenance, the configs rendered by
`export.configs`), so the export is the one reader of them too. `msk bench` reports them beside
its measurements, so that a number is never read without the precision, runtime and thread
count that produced it, and recommends `--cpu-cores`/`--cpu-runtime` from them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from export.consistency import repository_problems
from export.manifest import load_manifest
from export.model_specs import intra_op_threads, mura_specs
from export.repository import latest_version
from msk.constants import (
    EXPORT_CPU_RUNTIMES,
    MURA_ARCHITECTURES,
    MURA_ENSEMBLE_MODEL,
    MURA_IMAGE_SIZE,
    MURA_MEMBERS,
)

_THREAD_KEYS = ("intra_op_thread_count", "INFERENCE_NUM_THREADS")
"""The config parameters that carry a backbone's thread count (ORT's and OpenVINO's keys)."""


@dataclass(frozen=True)
class ServedBackbone:
    """One ensemble member as the repository's newest version serves it."""

    member: str
    architecture: str
    runtime: str                   # the config's backend: "onnxruntime", "openvino", ...
    threads: int | None            # intra-op threads in its config (None: the runtime's default)
    image_size: int
    gflop_per_image: float
    sha256: str

    @property
    def full_size(self) -> bool:
        """The study's architecture at the study's input size (not a stand-in)."""
        return (self.architecture == MURA_ARCHITECTURES[self.member]
                and self.image_size == MURA_IMAGE_SIZE)


@dataclass(frozen=True)
class ServedRepository:
    """The newest MURA version of a repository: what `msk serve` will run."""

    path: Path
    version: int
    precision: str
    weights: str
    backbones: tuple[ServedBackbone, ...]

    @property
    def cpu_runtime(self) -> str:
        """The `msk export --cpu-runtime` value these configs correspond to."""
        runtimes = {b.runtime for b in self.backbones}
        return next((r for r in reversed(EXPORT_CPU_RUNTIMES) if r in runtimes),
                    EXPORT_CPU_RUNTIMES[0])

    @property
    def gflop_per_image(self) -> float:
        return sum(b.gflop_per_image for b in self.backbones)

    @property
    def full_size(self) -> bool:
        return all(b.full_size for b in self.backbones)

    def graphs(self) -> frozenset[str]:
        """The backbone graphs' SHA-256s: two repositories with the same set serve the same
        weights (they may differ in runtime or threads, which live in the configs)."""
        return frozenset(b.sha256 for b in self.backbones)

    def threads_match(self, cores: int) -> bool:
        """Do the configs give each backbone the threads `msk export --cpu-cores cores` would?"""
        parallel = next(s.parallel for s in mura_specs() if s.name == MURA_MEMBERS[0])
        return all(b.threads == intra_op_threads(cores, parallel) for b in self.backbones)


def served_repository(repository: Path) -> ServedRepository:
    """Read the newest MURA version's facts; ValueError if the repository has none or is not
    coherent (before anything is measured, rather than when the server refuses it)."""
    from msk.flops import graph_gflop

    repository = Path(repository)
    problems = repository_problems(repository, verify_hashes=False)   # msk serve hashes them
    if problems:
        raise ValueError(f"{repository} is inconsistent (`msk doctor --repository "
                         f"{repository}`): " + "; ".join(problems))
    version = latest_version(repository)
    if not version:
        raise ValueError(f"{repository} holds no complete MURA version; build one with "
                         "`msk export`")
    info = load_manifest(repository)["versions"].get(f"{MURA_ENSEMBLE_MODEL}/{version}", {})
    members = info.get("members", {})
    backbones = []
    for member in MURA_MEMBERS:
        config = (repository / member / "config.pbtxt").read_text()
        backend = re.search(r'^backend:\s*"([^"]+)"', config, re.M)
        threads = next((int(m.group(1)) for key in _THREAD_KEYS for m in [re.search(
            rf'key:\s*"{key}"\s*value:\s*{{\s*string_value:\s*"(\d+)"', config)] if m), None)
        size = re.search(r"dims:\s*\[\s*3\s*,\s*(\d+)\s*,", config)
        backbones.append(ServedBackbone(
            member=member,
            architecture=members.get(member, {}).get("architecture", "unknown"),
            runtime=backend.group(1) if backend else "unknown",
            threads=threads,
            image_size=int(size.group(1)) if size else 0,
            gflop_per_image=graph_gflop(repository / member / str(version) / "model.onnx"),
            sha256=members.get(member, {}).get("sha256", "")))
    return ServedRepository(repository, version, info.get("precision", "fp32"),
                            info.get("weights", "unknown"), tuple(backbones))
