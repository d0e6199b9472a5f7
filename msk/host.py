"""What CPU this host is: its model name and the ISA extensions that change which kernels run.

Why it matters: ONNX Runtime and OpenVINO pick different kernels (and OpenVINO a different default
precision) on AVX2, AVX-512/VNNI and AMX hosts, so a benchmark number or a test result means
little without the ISA beside it. `.ci/run` prints `python3 -m msk.host` before the tests, `msk
doctor` prints it, and the benches put it beside every number. Standard library only, so CI can
run it before the virtual environment exists. Linux only (/proc/cpuinfo); elsewhere "unknown".
"""

from __future__ import annotations

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


def describe() -> str:
    """One line for logs and bench output: model, ISA extensions."""
    return f"{cpu_model()}; ISA: {', '.join(isa()) or 'none of ' + ', '.join(ISA_FLAGS.values())}"


if __name__ == "__main__":
    print(f"host CPU: {describe()}")
