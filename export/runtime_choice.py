"""`msk export --cpu-runtime auto`: the fastest runtime per backbone, measured on this host.

Why measured: which runtime is faster depends on the backbone, its precision and the host's ISA
(on the 2-core AVX2 reference OpenVINO won on INT8 DenseNet-169 and lost on ResNet-101; AMX and
VNNI hosts move both), so a fixed flag picked on one machine is wrong on others. Each backbone
graph the version will serve is served by the real Triton with each available runtime, at the
precision the user chose and with the thread count the repository's configs will give it
(`export.backbone_serving`), and timed for a few warm-up and timed requests; the runtime with the
lowest median time per image wins. The measurements, the choice and the host's CPU/ISA go into
the manifest (`"serving"`), so a reader sees why each backbone runs where it runs.

Runtimes are configs, not versions: a new measurement may change a backbone's config, never the
version (the same rule as `--cpu-runtime` and `--cpu-cores`).
"""

from __future__ import annotations

import importlib.util
import logging
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from export.backbone_serving import BackboneServer, Candidate, Launch, backbone_config, serving_of
from msk.constants import (
    EXPORT_AUTO,
    EXPORT_BF16,
    EXPORT_CPU_RUNTIMES,
    MURA_CHANNELS,
    MURA_MEMBERS,
)
from msk.host import describe, isa

log = logging.getLogger("msk.export")


@dataclass(frozen=True)
class Budget:
    """How long one candidate is measured: a few requests, so an export stays bounded."""

    batch: int = 4
    warmup: int = 2
    repeats: int = 7


FULL = Budget()
TINY = Budget(batch=2, warmup=1, repeats=3)
"""`--tiny` exports (tests): enough to exercise the path, not to rank anything."""


def available_runtimes() -> tuple[str, ...]:
    """The CPU runtimes this installation can serve (OpenVINO is an optional package)."""
    return tuple(r for r in EXPORT_CPU_RUNTIMES
                 if r == "onnxruntime" or importlib.util.find_spec(r) is not None)


@dataclass
class RuntimeChoice:
    """The runtime per backbone, and the measurement that chose it."""

    precision: str
    cpu_cores: int
    cores_source: str
    runtimes: dict[str, str] = field(default_factory=dict)
    measurements: dict[str, dict[str, dict]] = field(default_factory=dict)
    budget: Budget = FULL

    def configs(self, image_size: int) -> dict[str, str]:
        """member -> its config.pbtxt on the chosen runtime."""
        return {m: backbone_config(m, image_size, self.cpu_cores, r, self.precision)
                for m, r in self.runtimes.items()}

    def record(self) -> dict:
        """The manifest's `"serving"` entry."""
        return {
            "cpu_runtime": EXPORT_AUTO, "backbones": dict(self.runtimes),
            "precision": self.precision,
            "cpu_cores": self.cpu_cores, "cpu_cores_source": self.cores_source,
            "threads": {m: serving_of(m, self.cpu_cores, r, self.precision).threads
                        for m, r in self.runtimes.items()},
            "measurements": self.measurements,
            "method": (f"each backbone served by tritonserver on each runtime, {self.budget.warmup}"
                       f" warm-up + {self.budget.repeats} timed requests of batch "
                       f"{self.budget.batch}; lowest median ms per image wins"),
            "host": describe(), "isa": isa(),
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }


def choose_runtimes(launch: Launch, graphs: dict[str, Path], *, precision: str, cpu_cores: int,
                    cores_source: str, image_size: int, budget: Budget = FULL,
                    runtimes: tuple[str, ...] | None = None) -> RuntimeChoice:
    """Serve every backbone graph on every runtime at once (each with the thread count its
    config will have), time them one after another, and keep the fastest per backbone."""
    runtimes = runtimes or available_runtimes()
    choice = RuntimeChoice(precision, cpu_cores, cores_source, budget=budget)
    candidates = [Candidate(f"{runtime}__{member}", member, graphs[member],
                            serving_of(member, cpu_cores, runtime, precision))
                  for member in MURA_MEMBERS for runtime in runtimes]
    pixels = np.random.default_rng(0).random(
        (budget.batch, MURA_CHANNELS, image_size, image_size), dtype=np.float32)
    with BackboneServer(launch, candidates, image_size, cpu_cores) as server:
        for member in MURA_MEMBERS:
            batch = pixels[:max(1, min(budget.batch, server.max_batch[member]))]
            timed = {}
            for runtime in runtimes:
                ms = server.time_ms(f"{runtime}__{member}", batch, budget.warmup,
                                    budget.repeats)
                timed[runtime] = {"median_ms_per_image": statistics.median(ms) / len(batch),
                                  "batch": len(batch), "requests": len(ms),
                                  "threads": serving_of(member, cpu_cores, runtime,
                                                        precision).threads}
            best = min(timed, key=lambda r: timed[r]["median_ms_per_image"])
            choice.runtimes[member] = best
            choice.measurements[member] = timed
            log.info("%s: %s", member, ", ".join(
                f"{r} {t['median_ms_per_image']:.1f} ms/image" for r, t in timed.items())
                + f" -> {best}")
    return choice


def write_choice(stage: Path, choice: RuntimeChoice, image_size: int) -> None:
    """Put the chosen backbones' configs into the staged repository."""
    for member, text in choice.configs(image_size).items():
        (stage / member).mkdir(parents=True, exist_ok=True)
        (stage / member / "config.pbtxt").write_text(text)


def fixed_runtimes(cpu_runtime: str, image_size: int) -> dict[str, str]:
    """member -> runtime for a fixed `--cpu-runtime` (the configs' own rule: OpenVINO only for
    the backbones `OPENVINO_ARCHITECTURES` marks)."""
    from export.model_specs import mura_specs

    specs = {s.name: s for s in mura_specs(image_size)}
    return {m: "openvino" if cpu_runtime == "openvino" and specs[m].openvino else "onnxruntime"
            for m in MURA_MEMBERS}


class RuntimePlan:
    """The backbones' runtimes for one export: fixed by `--cpu-runtime`, or measured (`auto`)
    once, on the graphs the version serves (the INT8 ones before the accuracy gate judges them
    on the chosen runtimes), then written into the configs and the manifest."""

    def __init__(self, cpu_runtime: str, *, cpu_cores: int, cores_source: str,
                 image_size: int, precision: str, launch: Launch | None,
                 budget: Budget = FULL) -> None:
        if cpu_runtime != EXPORT_AUTO and cpu_runtime not in EXPORT_CPU_RUNTIMES:
            raise ValueError(f"cpu_runtime must be {EXPORT_AUTO} or one of "
                             f"{EXPORT_CPU_RUNTIMES}, got {cpu_runtime!r}")
        if precision == EXPORT_BF16 and cpu_runtime == "onnxruntime":
            raise ValueError("bf16 is served by OpenVINO only (--cpu-runtime openvino or auto)")
        if cpu_runtime == EXPORT_AUTO and launch is None:
            raise ValueError("cpu_runtime auto measures through a server: pass launch")
        self.cpu_runtime, self.cpu_cores, self.cores_source = cpu_runtime, cpu_cores, cores_source
        self.image_size, self.precision, self.launch = image_size, precision, launch
        self.budget = budget
        self.choice: RuntimeChoice | None = None

    @property
    def base_runtime(self) -> str:
        """The runtime the repository's configs are rendered with before any measurement."""
        return EXPORT_CPU_RUNTIMES[0] if self.cpu_runtime == EXPORT_AUTO else self.cpu_runtime

    def __call__(self, graphs: dict[str, Path]) -> dict[str, str]:
        """member -> runtime for these graphs (measured on them for `auto`, once)."""
        if self.precision == EXPORT_BF16 and self.cpu_runtime != EXPORT_AUTO:
            return {m: "openvino" for m in MURA_MEMBERS}
        if self.cpu_runtime != EXPORT_AUTO:
            return fixed_runtimes(self.cpu_runtime, self.image_size)
        if self.choice is None:
            assert self.launch is not None
            self.choice = choose_runtimes(
                self.launch, graphs, precision=self.precision, cpu_cores=self.cpu_cores,
                cores_source=self.cores_source, image_size=self.image_size, budget=self.budget,
                runtimes=("openvino",) if self.precision == EXPORT_BF16 else None)
        return dict(self.choice.runtimes)

    def finish(self, stage: Path, graphs_root: Path, version: int, manifest: dict) -> dict:
        """For `auto`: measure (if the gate did not already) on `graphs_root`'s `version`,
        write the chosen configs into `stage` and the record into the manifest. A fixed
        runtime drops any earlier measured record, which would no longer describe the
        configs. Returns the manifest."""
        if self.precision == EXPORT_BF16 and self.cpu_runtime != EXPORT_AUTO:
            runtimes = self({})
            for member, runtime in runtimes.items():
                (stage / member).mkdir(parents=True, exist_ok=True)
                (stage / member / "config.pbtxt").write_text(backbone_config(
                    member, self.image_size, self.cpu_cores, runtime, EXPORT_BF16))
            manifest["serving"] = {"cpu_runtime": self.cpu_runtime, "backbones": runtimes,
                                   "precision": EXPORT_BF16, "cpu_cores": self.cpu_cores,
                                   "cpu_cores_source": self.cores_source, "host": describe(),
                                   "isa": isa(), "version": str(version)}
            return manifest
        if self.cpu_runtime != EXPORT_AUTO:
            manifest.pop("serving", None)
            return manifest
        self({m: graphs_root / m / str(version) / "model.onnx" for m in MURA_MEMBERS})
        assert self.choice is not None
        write_choice(stage, self.choice, self.image_size)
        manifest["serving"] = self.choice.record() | {"version": str(version)}
        return manifest
