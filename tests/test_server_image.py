"""One server image, one set of flags, proven without Docker by what the manifests run.

There is no container engine here, so each deployment is checked by its command line: compose's
`triton` service and the server container of every Kubernetes overlay (rendered by the real
Kustomize) run the server image's entry point (`msk serve`) with their arguments; each command is
run through `msk serve --print-command` as a user would, and must yield tritonserver's production
flags for its target. The CPU overlay's exact command is also started here against the local
tritonserver and scores an image - with the values only a cluster has swapped for local ones
(the repository URL for a local folder, `--runtime=container` for the wheel, the pod's 0.0.0.0
and fixed ports for loopback and free ports). The image, compose and Kubernetes name one Triton
release, the one in `.env`; the image installs from the lock file and runs as a non-root user.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.msk_process import MskProcess, run_msk

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "server.Dockerfile"
PRODUCTION_FLAGS = ("--model-control-mode=none", "--strict-readiness=true",
                    "--exit-on-error=true", "--disable-auto-complete-config",
                    "--metrics-config=summary_latencies=true")


def _release() -> str:
    match = re.search(r"^TRITON_RELEASE=(\S+)$", (ROOT / ".env").read_text(), re.MULTILINE)
    assert match, ".env names TRITON_RELEASE"
    return match.group(1)


def _entrypoint() -> list[str]:
    match = re.search(r"^ENTRYPOINT (\[.*\])$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match
    return json.loads(match.group(1))


def _kustomize(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with Kustomize) is not installed")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "deploy" / "k8s" / overlay)],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _k8s_server(overlay: str) -> tuple[list[str], dict, dict]:
    """(argv with $(VAR) expanded as the kubelet does, the container, the pod spec)."""
    docs = _kustomize(overlay)
    deployment = next(d for d in docs if d["kind"] == "Deployment"
                      and d["metadata"]["name"] == "triton")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    env = {}
    for var in container["env"]:
        ref = var.get("valueFrom", {}).get("configMapKeyRef")
        if ref:
            env[var["name"]] = config[ref["name"]][ref["key"]]
    argv = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), arg)
            for arg in container["command"] + container["args"]]
    return argv, container, pod


def _compose_server() -> tuple[list[str], dict]:
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["triton"]
    return _entrypoint() + service["command"], service


def _printed(argv: list[str]) -> dict:
    assert argv[:2] == ["msk", "serve"], argv
    result = run_msk(*argv[1:], "--print-command", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_image_pins_one_release_installs_from_the_lock_and_runs_msk_serve() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM nvcr\.io/nvidia/tritonserver:\$\{TRITON_RELEASE\}-py3$", text,
                     re.MULTILINE)
    installs = re.findall(r"pip install [^\n]*", text)
    assert installs and all("--no-deps" in line for line in installs), installs
    assert any("-r locks/serve.lock" in line for line in installs)
    lock = (ROOT / "locks" / "serve.lock").read_text().splitlines()
    pins = [line for line in lock if line and not line.startswith("#")]
    assert pins and all("==" in line for line in pins), "every requirement pinned"
    assert re.search(r"^USER (?!root)\S+$", text, re.MULTILINE), "a non-root user"
    assert _entrypoint() == ["msk", "serve"]
    release = _release()
    kustomization = yaml.safe_load(
        (ROOT / "deploy" / "k8s" / "base" / "kustomization.yaml").read_text())
    image = next(i for i in kustomization["images"] if i["name"] == "msk-triton-server")
    assert str(image["newTag"]) == release
    assert "tritonserver" not in {i["name"] for i in kustomization["images"]}


def test_the_client_image_installs_its_parts_from_their_locks_at_the_project_versions() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    installs = re.findall(r"pip install [^\n]*", text)
    assert installs and all("--no-deps" in line for line in installs), installs
    locks = [ROOT / path for line in installs for path in re.findall(r"-r (\S+)", line)]
    assert {path.name for path in locks} == {"client.lock", "gateway.lock", "web.lock"}
    def pins(path: Path) -> dict[str, str]:
        return dict(line.split(" ;")[0].split("==", 1) for line in path.read_text().splitlines()
                    if line and not line.startswith("#"))
    project = pins(ROOT / "requirements.lock")
    for lock in locks:
        client = pins(lock)
        assert {"torch", "torchvision", "ultralytics", "onnxruntime"}.isdisjoint(client), lock
        assert {name: version for name, version in client.items()
                if project.get(name, version) != version} == {}, "same versions as the project"


def test_every_deployment_runs_msk_serve_with_the_production_flags_of_its_target() -> None:
    commands = {"compose": (_compose_server()[0], "gpu")}
    for overlay in ("cpu", "gpu"):
        commands[f"k8s {overlay}"] = (_k8s_server(f"overlays/{overlay}")[0], overlay)
    for where, (argv, target) in commands.items():
        printed = _printed(argv)
        flags = printed["tritonserver"]
        assert printed["target"] == target, where
        for flag in PRODUCTION_FLAGS:
            assert flag in flags, (where, flag)
        assert f"--allow-gpu-metrics={str(target == 'gpu').lower()}" in flags, where
        assert printed["front_door"] == {"grpc": "0.0.0.0:8001", "http": "0.0.0.0:8000",
                                         "metrics": "0.0.0.0:8002"}, where
        assert flags[0] == "/opt/tritonserver/bin/tritonserver", where     # NVIDIA's, in image
        expected = "/models" if where == "compose" else f"s3://s3.example.org:443/msk-models/{target}"
        assert f"--model-repository={expected}" in flags, where


def test_kubernetes_shutdown_agrees_with_the_drain() -> None:
    for overlay in ("cpu", "gpu"):
        argv, container, pod = _k8s_server(f"overlays/{overlay}")
        drain = float(next(a for a in argv if a.startswith("--drain-timeout=")).split("=")[1])
        sleep = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
        stop_budget = 15.0            # tritonserver's own exit after the drain (seen: 2-5 s)
        assert sleep + drain + stop_budget <= pod["terminationGracePeriodSeconds"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    _, service = _compose_server()
    assert float(service["stop_grace_period"].rstrip("s")) >= 30 + 15


def _local(argv: list[str], repository: Path) -> list[str]:
    """The cluster-only values of a server command swapped for this machine's."""
    swap = {"--runtime": "wheel", "--host": "127.0.0.1", "--repository": str(repository)}
    local = []
    for arg in argv[2:]:
        name = arg.split("=", 1)[0]
        local.append(f"{name}={swap[name]}" if name in swap else arg)
    return local + ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]


def test_the_cpu_overlay_command_serves_here(tiny_repository: Path, tmp_path: Path) -> None:
    from clients.mura import MuraClient
    from msk.samples import radiograph

    argv, _, _ = _k8s_server("overlays/cpu")
    proc = MskProcess("serve", *_local(argv, tiny_repository), cwd=tmp_path)
    try:
        ready = proc.wait_for(r"msk serve: ready  grpc=(\S+)")
        with MuraClient(ready.group(1)) as client:
            (result,) = client.score([(radiograph(420, 330, 5) * 255).astype(np.uint8)])
        assert result.error is None, result.error
    finally:
        assert proc.stop() == 0, proc.output()[-3000:]
