"""What CPU this host is: its model name and the ISA extensions that change which kernels run.

Why it matters: ONNX Runtime and OpenVINO pick different kernels (and OpenVINO a different default
precision) on AVX2, AVX-512/VNNI and AMX hosts, so a benchmark number or a test result means
little without the ISA beside it. `.ci/run` prints `python3 -m msk.host` before the tests, `msk
doctor` prints it, and the benches put it beside every number. Standard library only, so CI can
run it before the virtual environment exists. Linux only (/proc/cpuinfo); elsewhere "unknown".
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

ISA_FLAGS = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "amx_tile": "AMX",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
}
"""/proc/cpuinfo flags that select kernels in ORT and OpenVINO -> the names people use."""

NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
"""Hosts with any of these run bf16 natively; OpenVINO's CPU plugin then defaults to bf16."""


@cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return "unknown", frozenset()
    model = next((line.split(":", 1)[1].strip() for line in lines
                  if line.startswith("model name")), "unknown")
    flags = next((line.split(":", 1)[1].split() for line in lines
                  if line.startswith("flags")), [])
    return model, frozenset(flags)


def cpu_model() -> str:
    return _cpuinfo()[0]


def cpu_flags() -> frozenset[str]:
    return _cpuinfo()[1]


def isa() -> list[str]:
    """The kernel-selecting ISA extensions this CPU has, e.g. ['AVX2', 'AVX-512', 'AMX']."""
    flags = cpu_flags()
    return [name for flag, name in ISA_FLAGS.items() if flag in flags]


def has_native_bf16() -> bool:
    return bool(NATIVE_BF16_FLAGS & cpu_flags())


def _cgroup_quota_cores(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPU quota of this process's cgroup in cores (cgroup v2 `cpu.max`, else v1 cfs files),
    None when unlimited or unreadable. Why: a container limited to 2 CPUs on a 64-core host
    still sees 64 in its affinity mask; threads beyond the quota only get throttled."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def usable_cores() -> int:
    """Cores this process may really use: its CPU affinity, capped by its cgroup's CPU quota
    (rounded down, at least 1). What `msk export --cpu-cores auto` sizes the configs for, so it
    must run on (or in a container like) the serving host."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota_cores()
    if quota is not None:
        cores = min(cores, int(quota))
    return max(1, cores)


def bf16_refusal() -> str | None:
    """Why this host cannot serve bf16 (None when it can): the message names its ISA."""
    if has_native_bf16():
        return None
    return (f"this CPU has no native bfloat16 ({describe()}); bf16 needs "
            f"{' or '.join(ISA_FLAGS[f] for f in sorted(NATIVE_BF16_FLAGS))} (OpenVINO would "
            "silently run f32 instead)")


def describe() -> str:
    """One line for logs and bench output: model, ISA extensions."""
    return f"{cpu_model()}; ISA: {', '.join(isa()) or 'none of ' + ', '.join(ISA_FLAGS.values())}"


if __name__ == "__main__":
    print(f"host CPU: {describe()}")
