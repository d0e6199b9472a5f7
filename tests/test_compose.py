"""The GPU deployment, checked without Docker or a GPU: the compose file against the Compose
Specification schema and our own rules, the GPU configs generated from the same source as the CPU
ones, and the TensorRT build plan they imply. The engine build itself runs only on a GPU host.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from export.configs import render_mura_configs
from export.gpu_repository import assemble_gpu_repository
from export.model_specs import mura_specs
from export.tensorrt import TENSORRT_TARGET, parse_config, profile_shapes, trtexec_command
from export.tensorrt import main as tensorrt_main
from msk.constants import (
    MURA_BACKBONE_MAX_BATCH,
    MURA_CHANNELS,
    MURA_DRIFT_MODEL,
    MURA_ENSEMBLE_MODEL,
    MURA_IMAGE_SIZE,
    MURA_MEMBERS,
    PIXELS_TENSOR,
)

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_validates_against_the_compose_specification():
    tool = Path(sys.executable).parent / "check-jsonschema"
    binary = str(tool) if tool.exists() else shutil.which("check-jsonschema")
    assert binary, "check-jsonschema is a test dependency (pyproject [test])"
    proc = subprocess.run([binary, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_services_gpu_order_health_and_exposure():
    services = _compose()["services"]
    assert {"engines", "triton", "prometheus", "grafana", "gateway"} <= set(services)
    for name in ("engines", "triton"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    # engines are built for this GPU before Triton starts, by the same NGC release
    triton, engines = services["triton"], services["engines"]
    assert triton["depends_on"]["engines"]["condition"] == "service_completed_successfully"
    release = "${TRITON_RELEASE:?set in .env}"              # one release, named in .env
    assert triton["image"].endswith(f":{release}") and engines["image"].endswith(f":{release}-py3")
    assert triton["build"]["dockerfile"] == "deploy/server.Dockerfile"
    assert triton["build"]["args"]["TRITON_RELEASE"] == release
    assert "export.tensorrt" in " ".join(engines["command"])
    assert engines["network_mode"] == "none"
    # readiness through msk serve's front door (its flags: tests/test_server_image.py), shm
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    assert not any(arg.startswith(("--model-control", "--strict", "--metrics-config"))
                   for arg in triton["command"]), "tritonserver flags belong to msk serve"
    assert triton["shm_size"] in ("1gb", "2gb", "4gb")
    assert services["gateway"]["depends_on"]["triton"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    # nothing published beyond loopback, except the DICOM port where the operator says so
    published = []
    for name, service in services.items():
        for port in service.get("ports", []):
            published.append((name, port))
            host = str(port).rsplit(":", 2)[0]
            assert host in ("127.0.0.1", "${GATEWAY_BIND:-127.0.0.1}"), (name, port)
    assert not [p for _, p in published if str(p).endswith(":8002")], "metrics stay internal"
    for name, service in services.items():
        if name not in ("engines", "gpu-repository"):          # one-shot steps, not services
            assert "healthcheck" in service, name
    assert services["engines"]["depends_on"]["gpu-repository"]["condition"] == \
        "service_completed_successfully"
    assert "--fp16-onnx" in services["gpu-repository"]["command"]


def test_compose_mounts_exist_in_the_repository():
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and source != "./model_repository":
                assert (ROOT / source).exists(), (name, volume)
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "README" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), line
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: j["static_configs"][0]["targets"][0]
            for j in prometheus["scrape_configs"]}
    services = _compose()["services"]
    for target in jobs.values():
        assert target.split(":")[0] in services, target


def test_gpu_configs_tensorrt_kind_gpu_warmup_and_matching_profiles():
    gpu = render_mura_configs("gpu")
    cpu = render_mura_configs("cpu")
    assert set(gpu) == set(cpu)
    for member in MURA_MEMBERS:
        text = gpu[member]
        assert 'platform: "tensorrt_plan"' in text and "KIND_GPU" in text
        assert "model_warmup" in text
        assert f"batch_size: {MURA_BACKBONE_MAX_BATCH}" in text and "batch_size: 1 " in text
        spec = parse_config(text)
        assert spec.max_batch_size == MURA_BACKBONE_MAX_BATCH
        s = MURA_IMAGE_SIZE
        assert profile_shapes(spec) == {PIXELS_TENSOR: (
            f"1x{MURA_CHANNELS}x{s}x{s}", f"{MURA_BACKBONE_MAX_BATCH}x{MURA_CHANNELS}x{s}x{s}",
            f"{MURA_BACKBONE_MAX_BATCH}x{MURA_CHANNELS}x{s}x{s}")}
        cmd = trtexec_command("trtexec", Path("m.onnx"), Path("m.plan"), spec,
                              Path("/cache/t.cache"))
        assert "--timingCacheFile=/cache/t.cache" in cmd
        assert TENSORRT_TARGET == 11 and "--fp16" not in cmd   # TensorRT 11: precision = graph's
        assert f"--maxShapes={PIXELS_TENSOR}:{MURA_BACKBONE_MAX_BATCH}x" in " ".join(cmd)
    cpu_only = {spec.name for spec in mura_specs() if spec.cpu_only}
    assert cpu_only == {MURA_DRIFT_MODEL}    # numpy metrics of three scalars: no GPU work
    for name, text in gpu.items():
        if name in cpu_only:
            assert "KIND_CPU" in text and "KIND_GPU" not in text, name
        elif name != MURA_ENSEMBLE_MODEL:
            assert "KIND_GPU" in text and "KIND_CPU" not in text, name
        # same tensors on both targets: clients cannot tell them apart
        def tensors(config: str) -> list[str]:
            return [line for line in config.splitlines()
                    if line.startswith("  { name:") and "data_type" in line and "warmup" not in line
                    and "batch_size" not in line]
        assert tensors(text) == tensors(cpu[name]) and tensors(text), name


def test_gpu_repository_from_the_cpu_repository_and_engine_plan(tiny_repository, tmp_path,
                                                                capsys):
    out = tmp_path / "gpu"
    configs = assemble_gpu_repository(tiny_repository, out, fp16_onnx=True)
    for name, text in configs.items():
        assert (out / name / "config.pbtxt").read_text() == text
        versions = sorted(p.name for p in (tiny_repository / name).iterdir()
                          if p.is_dir() and p.name.isdigit())
        assert versions and sorted(p.name for p in (out / name).iterdir()
                                   if p.is_dir() and p.name.isdigit()) == versions
    member_versions = {m: sorted(p.name for p in (out / m).iterdir() if p.is_dir())
                       for m in MURA_MEMBERS}
    capsys.readouterr()
    assert tensorrt_main(["--repository", str(out), "--timing-cache",
                          str(tmp_path / "cache" / "timing.cache"), "--dry-run"]) == 0
    jobs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted((j["model"], j["version"]) for j in jobs) == sorted(
        (m, v) for m, vs in member_versions.items() for v in vs)
    for job in jobs:
        version = out / job["model"] / job["version"]
        assert f"--onnx={version / 'model.fp16.onnx'}" in job["command"]
        assert (version / "model.onnx").read_bytes() == (
            tiny_repository / job["model"] / job["version"] / "model.onnx").read_bytes()


def test_the_fp16_graph_keeps_the_tensors_and_the_answers(tiny_repository, tmp_path):
    """TensorRT 11 builds FP16 engines from FP16 graphs: the converted backbone has FP16
    weights, the same FP32 inputs and outputs as the config, and computes what FP32 computes
    (ONNX's reference evaluator runs the FP16 graph here; ORT runs the FP32 one)."""
    import onnx
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    from export.fp16_onnx import write_fp16

    member = MURA_MEMBERS[0]
    version = max(p for p in (tiny_repository / member).iterdir() if p.is_dir())
    fp16 = write_fp16(version / "model.onnx", tmp_path / "model.fp16.onnx")
    graph = onnx.load(str(fp16))
    weights = [t for t in graph.graph.initializer if t.data_type in (
        onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) and len(t.dims) > 1]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    for tensor in (*graph.graph.input, *graph.graph.output):
        assert tensor.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, tensor.name
    pixels = np.random.default_rng(0).random((1, MURA_CHANNELS, MURA_IMAGE_SIZE, MURA_IMAGE_SIZE),
                                             dtype=np.float32)
    names = [o.name for o in graph.graph.output]
    want = ort.InferenceSession(str(version / "model.onnx")).run(names, {PIXELS_TENSOR: pixels})
    got = ReferenceEvaluator(graph).run(names, {PIXELS_TENSOR: pixels})
    probability = names.index("PROBABILITY")
    assert np.abs(got[probability] - want[probability]).max() < 5e-3


def _gpu_host() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU here (nvidia-smi not found)"
    if not (shutil.which("trtexec") or Path("/usr/src/tensorrt/bin/trtexec").exists()):
        return "trtexec not found: run inside NVIDIA's TensorRT container (nvcr.io/nvidia/tensorrt)"
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_host() is not None, reason=str(_gpu_host()))
def test_engine_build_on_this_gpu(tiny_repository, tmp_path):
    out = tmp_path / "gpu"
    assemble_gpu_repository(tiny_repository, out, fp16_onnx=True)
    cache = tmp_path / "timing.cache"
    assert tensorrt_main(["--repository", str(out), "--timing-cache", str(cache)]) == 0
    for member in MURA_MEMBERS:
        for version in (p for p in (out / member).iterdir() if p.is_dir()):
            plan = version / "model.plan"
            assert plan.stat().st_size > 0
            stamp = json.loads((version / "model.plan.json").read_text())
            assert stamp["gpu"] != "unknown"
    assert cache.stat().st_size > 0
    mtimes = {p: p.stat().st_mtime for p in out.rglob("model.plan")}
    assert tensorrt_main(["--repository", str(out), "--timing-cache", str(cache)]) == 0
    assert {p: p.stat().st_mtime for p in out.rglob("model.plan")} == mtimes   # up to date


def test_gateway_settings_in_compose_are_accepted_by_the_gateway(tmp_path):
    from clients.gateway.config import build_config, load_file

    compose = _compose()
    settings_file = tmp_path / "gateway.yml"
    settings_file.write_text(compose["configs"]["gateway"]["content"])
    settings = load_file(settings_file)
    command = " ".join(compose["services"]["gateway"]["command"])
    assert "--allowed-calling-ae=${PACS_CALLING_AE:?" in command   # never open by default
    config = build_config(settings, {"triton_url": "triton:8001",
                                     "destination": "PACS@pacs.example:104",
                                     "allowed_calling_aes": ["PACS"]})
    assert config.metrics_host == "0.0.0.0"
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    clients = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "msk-clients")
    assert clients["static_configs"][0]["targets"] == [f"gateway:{config.metrics_port}"]
    gateway = compose["services"]["gateway"]
    assert f":{config.metrics_port}/metrics" in " ".join(gateway["healthcheck"]["test"])
    assert any(str(p).endswith(f":{config.port}") for p in gateway["ports"])
