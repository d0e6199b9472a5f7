"""`msk bench`'s report: the measured numbers of each repository, and recommendations derived
from them, each with its reason.

Why separate from the command: the command measures; this turns measurements into claims, and
every claim must be traceable to a number of the same run (no runtime is recommended that was
not measured, no share of the peak is printed for graphs it does not describe).
"""

from __future__ import annotations

from dataclasses import dataclass

from clients.load import ClosedLoop
from msk.capacity import (
    SPARE_REPLICAS,
    arrival_rate,
    busy_replicas,
    images_per_hour_per_core,
    p99_model,
)
from msk.constants import EXPORT_PRECISIONS, MURA_ARCHITECTURES, MURA_IMAGE_SIZE

RUNTIME_MARGIN = 1.05
"""Another runtime is recommended only when it served the same graphs more than 5 % faster in
the same run: less is within the noise of one run on a shared host."""


@dataclass(frozen=True)
class Measured:
    """One repository's facts (`export.served.ServedRepository`) and its closed-loop runs."""

    served: object                 # export.served.ServedRepository (export is imported lazily)
    triton_version: str
    runs: tuple[ClosedLoop, ...]   # concurrency 1 first, then the user's concurrency

    @property
    def alone(self) -> ClosedLoop:
        return self.runs[0]

    @property
    def busy(self) -> ClosedLoop:
        return self.runs[-1]


def run_record(run: ClosedLoop) -> dict:
    return {"concurrency": run.concurrency, "requests": run.requests,
            "elapsed_s": run.elapsed_s, "images_per_s": run.images_per_s,
            "p50_s": run.percentile_s(50), "p99_s": run.percentile_s(99),
            "mean_s": sum(run.latencies_s) / len(run.latencies_s)}


def share_of_peak(measured: Measured, peak_gflops: float) -> dict:
    """The share of the matrix-product peak the backbones reach at the user's concurrency,
    where the comparison is honest: FP32 work against an FP32 peak, on the study's networks."""
    served = measured.served
    gflop = served.gflop_per_image
    if served.precision != "fp32":
        return {"value": None, "note": f"{served.precision.upper()} kernels are not measured "
                "against the FP32 matrix-product peak (their work is counted in FP32 "
                "operations); compare images/s with an FP32 repository instead"}
    if not served.full_size:
        archs = sorted({f"{b.architecture} at {b.image_size} px" for b in served.backbones})
        return {"value": None, "note": f"stand-in backbones ({', '.join(archs)}; "
                f"{gflop:.3f} GFLOP per image): their time is request overhead, not the matrix "
                "work the peak measures; measure a repository exported with the study's "
                f"{' / '.join(sorted(set(MURA_ARCHITECTURES.values())))} at {MURA_IMAGE_SIZE} "
                "px (`msk export`; untrained demo weights cost the same)"}
    value = measured.busy.images_per_s * gflop / peak_gflops
    note = (f"{measured.busy.images_per_s:.3f} images/s x {gflop:.1f} GFLOP per image "
            f"(Conv/Gemm/MatMul of the served graphs) / {peak_gflops:.1f} GFLOP/s")
    if value > 1.0:
        note += ("; above 100 %: other work took the cores while the peak was measured, so "
                 "the peak is too low; rerun on an idle host")
    return {"value": value, "note": note}


def recommend_cpu_cores(measured: Measured, cores: int) -> dict:
    served = measured.served
    threads = sorted({b.threads for b in served.backbones}, key=str)
    given = f"this host gives the server {cores} core(s) (the CPU affinity of msk bench)"
    if served.threads_match(cores):
        reason = (f"{given}, and {served.path}'s configs already give each backbone the "
                  f"{threads[0]} thread(s) that --cpu-cores {cores} writes")
    else:
        reason = (f"{given}, but {served.path}'s configs give the backbones {threads} "
                  f"thread(s): re-render them with `msk export --cpu-cores {cores}` (configs "
                  "only, no new version) and measure again; these numbers are for the "
                  "configs as they are")
    return {"value": cores, "reason": reason}


def recommend_cpu_runtime(measured: Measured, everything: list[Measured]) -> dict:
    """The repository's runtime, unless the same graphs on another runtime were measured
    faster in this run."""
    served = measured.served
    mine = measured.busy.images_per_s
    rivals = [m for m in everything if m is not measured
              and m.served.graphs() == served.graphs()
              and m.served.cpu_runtime != served.cpu_runtime
              and m.busy.concurrency == measured.busy.concurrency]
    best = max(rivals, key=lambda m: m.busy.images_per_s, default=None)
    if best is not None and best.busy.images_per_s > RUNTIME_MARGIN * mine:
        return {"value": best.served.cpu_runtime, "measured": True, "reason": (
            f"{best.served.path} serves the same graphs with --cpu-runtime "
            f"{best.served.cpu_runtime} at {best.busy.images_per_s:.3f} images/s against "
            f"{mine:.3f} here ({best.busy.images_per_s / mine:.2f}x, concurrency "
            f"{measured.busy.concurrency}, this run)")}
    if best is not None:
        return {"value": served.cpu_runtime, "measured": True, "reason": (
            f"the runtime {served.path} uses; {best.served.path} (--cpu-runtime "
            f"{best.served.cpu_runtime}, same graphs) served {best.busy.images_per_s:.3f} "
            f"images/s against {mine:.3f} here: not more than "
            f"{RUNTIME_MARGIN - 1:.0%} faster in this run")}
    return {"value": served.cpu_runtime, "measured": False, "reason": (
        f"the runtime {served.path} uses; no other runtime was measured on the same graphs in "
        "this run (to compare: copy the repository, `msk export --repository COPY "
        "--cpu-runtime openvino`, and pass both --repository)")}


def recommend_replicas(measured: Measured, target_per_hour: float | None,
                       utilisation: float) -> dict:
    """Replicas like this host for the target load (docs/scale-out.md's capacity model)."""
    mu = measured.busy.images_per_s
    service_s = measured.alone.percentile_s(50)
    p99 = p99_model(service_s, utilisation)
    per_replica = utilisation * mu * 3600
    record = {"utilisation": utilisation, "mu_images_per_s": mu, "service_s": service_s,
              "p99_model_s": p99, "images_per_hour_per_replica": per_replica,
              "spare": SPARE_REPLICAS, "target_images_per_hour": target_per_hour}
    basis = (f"one replica like this host serves mu = {mu:.3f} images/s at concurrency "
             f"{measured.busy.concurrency}, S = {service_s:.3f} s alone (p50); at utilisation "
             f"{utilisation:.0%} it carries {per_replica:,.0f} images/hour with a model p99 of "
             f"4.6 S / (1 - rho) = {p99:.2f} s (docs/scale-out.md)")
    if target_per_hour is None:
        return {**record, "value": None, "busy": None,
                "reason": f"no --target-images-per-hour given; {basis}"}
    rate = arrival_rate(target_per_hour)
    busy = busy_replicas(rate, mu, utilisation)
    return {**record, "value": busy + SPARE_REPLICAS, "busy": busy, "reason": (
        f"{target_per_hour:,.0f} images/hour = {rate:.3f} images/s; ceil(lambda / (rho mu)) = "
        f"{busy} busy replica(s) plus {SPARE_REPLICAS} spare for a rolling update or a lost "
        f"node; {basis}")}


def precision_rows(everything: list[Measured], cores: int, native_bf16: bool) -> dict:
    """Images per hour per core for FP32, INT8 and BF16: the best measured repository of each
    (of the study's networks where one was measured: a stand-in's speed is not the model's),
    or why there is none."""
    rows: dict[str, dict] = {}
    for precision in EXPORT_PRECISIONS:   # a row each, FP32/INT8/BF16 where available
        done = [m for m in everything if m.served.precision == precision]
        real = [m for m in done if m.served.full_size]
        if done:                       # stand-ins only where no study-size network was measured
            best = max(real or done, key=lambda m: m.busy.images_per_s)
            rows[precision] = {
                "available": True, "repository": str(best.served.path),
                "cpu_runtime": best.served.cpu_runtime, "full_size": best.served.full_size,
                "images_per_s": best.busy.images_per_s,
                "images_per_hour_per_core": images_per_hour_per_core(best.busy.images_per_s,
                                                                     cores)}
            continue
        if precision == "bf16":
            why = ("BF16 needs a host with native BF16 (AMX-BF16 or AVX-512 BF16; this host: "
                   f"{'yes' if native_bf16 else 'no'}) and a repository exported at that "
                   "precision (`msk export --precision bf16`)")
        elif precision == "int8":
            why = ("no INT8 repository given: export a copy with `msk export --precision int8 "
                   "--calibration ... --holdout ...` and pass it as another --repository")
        else:
            why = "no FP32 repository given (`msk export` writes one)"
        rows[precision] = {"available": False, "reason": why}
    return rows
