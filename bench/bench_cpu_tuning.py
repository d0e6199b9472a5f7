"""Benchmark: which Triton settings serve the MURA ensemble fastest on this CPU (c1 and c8).

The settings `msk export` writes come from one place (`export/model_specs.py`, rendered by
`export/configs.py`); this script is the measurement behind them. It renders the demo repository
for this machine's cores, then serves copies whose backbone configs differ in ONE setting each
and times the ensemble over gRPC at 1 and 8 requests in flight (same images, same run):

  exported          what `msk export --cpu-cores <this machine>` writes (the baseline)
  ort-default       no intra_op_thread_count: ORT's default, a thread per core in every backbone
  in-turn           one backbone at a time (Triton's rate limiter), each with every core
  one-per-core      as many single-thread backbones at a time as cores (rate limiter)
  instances-2       two instances of every backbone
  delay-0 / -10ms   max_queue_delay_microseconds 0 / 10000 instead of the exported value
  preferred-4-8     preferred_batch_size [ 4, 8 ] instead of [ 8 ]

The rate-limited variants also start tritonserver with `--rate-limit=execution_count` and the
resource count. Usage:
    .venv/bin/python bench/bench_cpu_tuning.py [--images 24] [--variants exported in-turn ...]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_mura import _images, bench_triton  # noqa: E402

THREADS = re.compile(r'parameters \{ key: "intra_op_thread_count".*\n')
INSTANCE = "instance_group [ { count: 1 kind: KIND_CPU } ]"


def _rate_limited(count: int, threads: int | None) -> Callable[[str], str]:
    def edit(text: str) -> str:
        text = text.replace(INSTANCE, "instance_group [ { count: 1 kind: KIND_CPU rate_limiter "
                            f'{{ resources [ {{ name: "cpu" count: {count} }} ] }} }} ]')
        text = THREADS.sub("", text)
        if threads:
            text += (f'parameters {{ key: "intra_op_thread_count" value: {{ string_value: '
                     f'"{threads}" }} }}\n')
        return text
    return edit


def variants(cores: int) -> dict[str, tuple[Callable[[str], str], tuple[str, ...]]]:
    """name -> (edit of one backbone's config text, extra tritonserver arguments)."""
    limit = ("--rate-limit=execution_count", f"--rate-limit-resource=cpu:{cores}")
    return {
        "exported": (lambda t: t, ()),
        "ort-default": (lambda t: THREADS.sub("", t), ()),
        "in-turn": (_rate_limited(cores, None), limit),
        "one-per-core": (_rate_limited(1, 1), limit),
        "instances-2": (lambda t: t.replace("count: 1 kind", "count: 2 kind"), ()),
        "delay-0": (lambda t: re.sub(r"max_queue_delay_microseconds: \d+",
                                     "max_queue_delay_microseconds: 0", t), ()),
        "delay-10ms": (lambda t: re.sub(r"max_queue_delay_microseconds: \d+",
                                        "max_queue_delay_microseconds: 10000", t), ()),
        "preferred-4-8": (lambda t: re.sub(r"preferred_batch_size: \[ [\d, ]+ \]",
                                           "preferred_batch_size: [ 4, 8 ]", t), ()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="images per row (default 24)")
    parser.add_argument("--variants", nargs="*", default=None, help="subset to run")
    args = parser.parse_args()

    from export.repository import build_repository
    from msk.constants import MURA_MEMBERS
    from server.launcher import TritonServer

    cores = len(os.sched_getaffinity(0))
    work = Path(tempfile.mkdtemp(prefix="bench-tuning-"))
    build_repository(work / "exported", cpu_cores=cores)
    images = _images(args.images)
    table = variants(cores)
    print(f"# {cores} cores, {len(images)} images; load average {os.getloadavg()}")
    base = None
    for name in args.variants or table:
        edit, extra = table[name]
        repo = work / name
        if not repo.exists():
            shutil.copytree(work / "exported", repo, copy_function=os.link)
        for member in MURA_MEMBERS:
            config = repo / member / "config.pbtxt"
            text = edit(config.read_text())
            config.unlink()                      # a link: never write through to the original
            config.write_text(text)
        with TritonServer(repo, extra_args=extra) as server:
            c1 = bench_triton(images, server.grpc_url, 1)
            c8 = bench_triton(images, server.grpc_url, 8)
        base = base or c8
        print(f"{name:14s} c1 {c1:5.2f} images/s   c8 {c8:5.2f} images/s   c8 vs first row "
              f"{c8 / base:.2f}", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
