"""`msk export --cpu-runtime auto --cpu-cores auto`, `--precision bf16`, and the accuracy gate
served through Triton (issue 23 items 2 and 3).

Nothing here asserts on time: the measurement's numbers are recorded and checked for shape and
consistency with the configs written, never for which runtime wins (that is the host's answer).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from export.manifest import load_manifest
from export.runtime_choice import available_runtimes
from msk.constants import MURA_MEMBERS
from msk.host import _cgroup_quota_cores, describe, has_native_bf16, isa, usable_cores
from server.launcher import TritonServer
from tests.msk_process import run_msk


def _graphs(repository: Path) -> dict[str, bytes]:
    return {p.relative_to(repository).as_posix(): p.read_bytes()
            for p in sorted(repository.rglob("model.onnx"))}


def _backend(repository: Path, member: str) -> str:
    text = (repository / member / "config.pbtxt").read_text()
    return re.search(r'backend: "(\w+)"', text).group(1)


def _check_serving_record(repository: Path) -> dict:
    serving = load_manifest(repository)["serving"]
    assert serving["cpu_runtime"] == "auto"
    assert serving["cpu_cores"] == usable_cores()
    assert serving["cpu_cores_source"].startswith("auto")
    assert serving["isa"] == isa() and serving["host"] == describe()
    assert serving["precision"] == "fp32"
    assert set(serving["backbones"]) == set(MURA_MEMBERS)
    for member in MURA_MEMBERS:
        timed = serving["measurements"][member]
        assert set(timed) == set(available_runtimes())
        for runtime, row in timed.items():
            assert row["median_ms_per_image"] > 0 and row["requests"] >= 1, (runtime, row)
        chosen = serving["backbones"][member]
        # The choice is the measured minimum, and the config says what the manifest says.
        assert chosen == min(timed, key=lambda r: timed[r]["median_ms_per_image"])
        assert _backend(repository, member) == chosen
        if chosen == "openvino":
            assert 'key: "INFERENCE_PRECISION_HINT" value: { string_value: "f32" }' in \
                (repository / member / "config.pbtxt").read_text()
    return serving


def test_auto_runtime_and_cores_measure_record_and_never_add_a_version(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    first = run_msk("export", "--repository", str(repository), "--tiny", "--cpu-runtime",
                    "auto", "--cpu-cores", "auto", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    version = json.loads(first.stdout)["version"]
    serving = _check_serving_record(repository)
    assert serving["version"] == str(version)
    graphs = _graphs(repository)

    # Same weights again: a new measurement, the configs follow it, never a new version.
    again = run_msk("export", "--repository", str(repository), "--tiny", "--cpu-runtime",
                    "auto", "--cpu-cores", "auto", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["version"] == version
    assert "already serves these tiny-stand-in weights" in again.stderr
    assert _graphs(repository) == graphs
    second = _check_serving_record(repository)
    assert second["measured_at"] >= serving["measured_at"]

    # A fixed runtime afterwards: ORT configs, the measured record (now untrue) is dropped.
    fixed = run_msk("export", "--repository", str(repository), "--tiny", "--cpu-runtime",
                    "onnxruntime", cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(fixed.stdout)["version"] == version
    assert "serving" not in load_manifest(repository)
    assert {_backend(repository, m) for m in MURA_MEMBERS} == {"onnxruntime"}
    assert _graphs(repository) == graphs


def test_help_names_the_auto_values(tmp_path: Path) -> None:
    result = run_msk("export", "--help", cwd=tmp_path)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "{onnxruntime,openvino,auto}" in text and "N|auto" in text
    assert "{fp32,int8,bf16}" in text and "manifest.json" in text


@pytest.mark.skipif(has_native_bf16(), reason="this host has native bfloat16: bf16 is allowed")
def test_bf16_is_refused_without_native_bfloat16(tmp_path: Path) -> None:
    """The only bf16 behaviour this AVX2 host can show: a clear refusal naming its ISA."""
    result = run_msk("export", "--repository", str(tmp_path / "repository"), "--tiny",
                     "--precision", "bf16", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "--precision bf16 refused" in message and "no native bfloat16" in message
    assert describe() in message and "AMX-BF16" in message
    assert not (tmp_path / "repository").exists()


def test_usable_cores_read_the_cgroup_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_quota_cores(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_quota_cores(tmp_path) is None
    assert _cgroup_quota_cores(tmp_path / "absent") is None
    assert 1 <= usable_cores() <= len(__import__("os").sched_getaffinity(0))


class _WatchedServer(TritonServer):
    """The real server; keeps what its metrics said just before it stopped."""

    seen: list[dict] = []

    def __exit__(self, *exc: object) -> None:
        import urllib.request

        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            metrics = response.read().decode()
        counts = {m.group(1): int(float(m.group(2))) for m in re.finditer(
            r'nv_inference_count\{model="([^"]+)",version="1"\} (\S+)', metrics)}
        _WatchedServer.seen.append({"repository": self.repository, "counts": counts,
                                    "log": self.log_path.read_text(errors="replace")})
        super().__exit__(*exc)


def test_the_gate_scores_what_triton_serves(tiny_repository: Path, tmp_path: Path) -> None:
    """The gate's numbers come from the backbones served by tritonserver with the runtime,
    precision and threads recorded; every held-out image went through the server."""
    from PIL import Image

    from export.configs import cam_size
    from export.mura_int8_version import gate_through_triton
    from export.mura_mean_graph import build_mean_graph
    from msk.constants import MURA_IMAGE_SIZE
    from msk.samples import radiograph
    from training.mura_data import Record

    graphs = [sorted((tiny_repository / m).glob("*/model.onnx"))[-1] for m in MURA_MEMBERS]
    copies = []
    for member, graph in zip(MURA_MEMBERS, graphs, strict=True):
        copies.append(tmp_path / f"{member}.onnx")
        shutil.copy(graph, copies[-1])
    records = []
    for i in range(6):
        path = tmp_path / f"image{i}.png"
        Image.fromarray((radiograph(96 + 8 * i, 80, i) * 255).astype(np.uint8)).save(path)
        records.append(Record(path=path, label=i % 2, body_part="wrist", patient=str(i),
                              study=str(i)))
    runtimes = {m: available_runtimes()[i % len(available_runtimes())]
                for i, m in enumerate(MURA_MEMBERS)}
    mean = build_mean_graph(list(MURA_MEMBERS), [0.0] * 4, [1.0] * 4, cam_size(MURA_IMAGE_SIZE),
                            "{}", MURA_IMAGE_SIZE).SerializeToString()
    _WatchedServer.seen.clear()
    result, served = gate_through_triton(
        _WatchedServer, graphs, copies, runtimes, "int8", cpu_cores=2, holdout=records,
        image_size=MURA_IMAGE_SIZE, mean_graph=mean, points={"wrist": 0.5},
        default_threshold=0.5)
    # Same graphs on both sides, same runtime per member: the gate sees no difference.
    assert result.passed and result.images == len(records)
    assert result.mean_abs_delta < 1e-5, result.summary()
    assert served["through"] == "_WatchedServer" and served["isa"] == isa()
    for member in MURA_MEMBERS:
        for precision in ("fp32", "int8"):
            assert served["backbones"][member][precision] == {
                "runtime": runtimes[member], "precision": precision, "threads": 1}
    (seen,) = _WatchedServer.seen
    for member in MURA_MEMBERS:
        for precision in ("fp32", "int8"):
            assert seen["counts"][f"{precision}__{member}"] == len(records), seen["counts"]
    for member, runtime in runtimes.items():
        if runtime == "openvino":
            assert re.search(rf"fp32__{member}: OpenVINO \S+ CPU inference precision f32",
                             seen["log"]), member


def test_bf16_configs_name_bf16_on_openvino_for_every_backbone(tmp_path: Path) -> None:
    """What a bf16 export writes (on hosts with native bfloat16): every backbone on OpenVINO with
    the bf16 hint asked for explicitly, and the manifest saying so. Rendering needs no bf16 CPU."""
    from export.runtime_choice import RuntimePlan

    with pytest.raises(ValueError, match="bf16 is served by OpenVINO only"):
        RuntimePlan("onnxruntime", cpu_cores=4, cores_source="given", image_size=64,
                    precision="bf16", launch=None)
    plan = RuntimePlan("openvino", cpu_cores=4, cores_source="given", image_size=64,
                       precision="bf16", launch=None)
    manifest = plan.finish(tmp_path, tmp_path, 3, {"serving": {"stale": True}})
    assert manifest["serving"]["precision"] == "bf16" and manifest["serving"]["version"] == "3"
    assert manifest["serving"]["backbones"] == {m: "openvino" for m in MURA_MEMBERS}
    for member in MURA_MEMBERS:
        text = (tmp_path / member / "config.pbtxt").read_text()
        assert 'backend: "openvino"' in text
        assert 'key: "INFERENCE_PRECISION_HINT" value: { string_value: "bf16" }' in text
        assert 'key: "INFERENCE_NUM_THREADS" value: { string_value: "1" }' in text


@pytest.mark.skipif(has_native_bf16(), reason="this host has native bfloat16: bf16 loads")
def test_bf16_candidates_are_refused_at_load_where_the_cpu_would_run_f32(
        tiny_repository: Path, tmp_path: Path) -> None:
    """Past the CLI's refusal, the server itself never serves bf16 as f32: the gate cannot
    even start its candidates on this host."""
    from export.mura_int8_version import gate_through_triton
    from server.launcher import ServerStartError
    from training.mura_data import Record

    graphs = [sorted((tiny_repository / m).glob("*/model.onnx"))[-1] for m in MURA_MEMBERS]
    records = [Record(path=tmp_path / "unused.png", label=0, body_part="wrist", patient="p",
                      study="s")]
    logs: list[Path] = []

    def launch(repository: Path) -> TritonServer:
        server = TritonServer(repository)
        logs.append(server.log_path)
        return server

    # It exits before ready; how it exits varies (2.51 sometimes segfaults while shutting down
    # after a failed load), so the log, not the exit, is what is checked.
    with pytest.raises(ServerStartError, match="exited with"):
        gate_through_triton(launch, graphs, graphs, {m: "openvino" for m in MURA_MEMBERS},
                            "bf16", cpu_cores=2, holdout=records, image_size=64,
                            mean_graph=b"", points={}, default_threshold=0.5)
    log = logs[0].read_text(errors="replace")
    for member in MURA_MEMBERS:
        assert re.search(rf"bf16__{member}.*compiled it at f32, not the bf16 the config asks for",
                         log), member
    assert "refusing to serve another precision" in log
