"""The Kubernetes manifests (deploy/k8s): rendered by the real Kustomize, validated offline
against the Kubernetes schemas (kubernetes-validate), checked for what the deployment needs, and the
monitoring pieces run for real (promtool on the scrape config; the HPA's adapter query on a real
Prometheus scraping a real tritonserver)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from server.launcher import TritonServer
from tests.plugins.observability import promtool

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATIONS = ("overlays/cpu", "overlays/gpu", "batch", "batch/merge")
K8S_VERSION = "1.32.0"   # the kubectl here; kubernetes-validate carries its schemas
CLIENT_LABEL = "msk-triton/triton-client"


def render(kustomization: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with Kustomize) is not installed")
    out = subprocess.run([kubectl, "kustomize", str(K8S / kustomization)], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(docs: list[dict], kind: str, name: str) -> dict:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"].startswith(name):
            return doc
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    raise AssertionError(f"no {kind} {name} in {names}")


def container(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_rendered_manifest_validates_against_the_kubernetes_schemas(kustomization):
    import kubernetes_validate

    docs = render(kustomization)
    assert docs
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{kustomization}: {doc['kind']} {doc['metadata']['name']}: "
                                 f"{exc.message} at {list(exc.path)}") from exc


def test_validation_catches_a_broken_manifest():
    """The check above can fail: a misspelt field is rejected in strict mode."""
    import kubernetes_validate

    deployment = find(render("overlays/cpu"), "Deployment", "triton")
    container(deployment)["readinesProbe"] = container(deployment).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_triton_deployment_probes_security_and_repository(overlay):
    docs = render(f"overlays/{overlay}")
    triton = find(docs, "Deployment", "triton")
    spec = triton["spec"]["template"]["spec"]
    main = container(triton)
    assert main["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert main["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"requests", "limits"} <= set(main["resources"])
    assert main["command"] == ["msk", "serve"]          # its flags: tests/test_server_image.py
    assert "--repository=$(MODEL_REPOSITORY)" in main["args"]
    env = {e["name"]: e.get("valueFrom", {}) for e in main["env"]}
    config = find(docs, "ConfigMap", env["MODEL_REPOSITORY"]["configMapKeyRef"]["name"])
    assert config["data"]["model-repository"] == f"s3://s3.example.org:443/msk-models/{overlay}"
    assert env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == "model-store-credentials"
    gpus = main["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpus == "1") if overlay == "gpu" else gpus is None
    assert f"--target={overlay}" in main["args"]
    service = find(docs, "Service", "triton")
    assert {p["name"] for p in service["spec"]["ports"]} == {"grpc", "http", "metrics"}


def test_hpa_scales_on_the_adapter_metric_with_scale_down_stabilisation():
    docs = render("overlays/gpu")
    hpa = find(docs, "HorizontalPodAutoscaler", "triton")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "triton"
    metric = hpa["spec"]["metrics"][0]
    assert metric["type"] == "Pods"
    rules = yaml.safe_load(find(docs, "ConfigMap", "prometheus-adapter-rules")["data"]
                           ["config.yaml"])["rules"]
    assert metric["pods"]["metric"]["name"] in {r["name"]["as"] for r in rules}
    assert "nv_inference_queue_duration_us" in rules[0]["metricsQuery"]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 120


def test_gateway_statefulset_web_and_network_policy():
    docs = render("overlays/cpu")
    gateway = find(docs, "StatefulSet", "gateway")
    claim = gateway["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert any(m["name"] == claim for m in container(gateway)["volumeMounts"])
    settings = yaml.safe_load(find(docs, "ConfigMap", "gateway-config")["data"]["gateway.yaml"])
    mount = next(m["mountPath"] for m in container(gateway)["volumeMounts"] if m["name"] == claim)
    assert settings["data_dir"].startswith(mount)
    find(docs, "PodDisruptionBudget", "gateway")
    assert any(p["name"] == "dicom" for p in find(docs, "Service", "gateway")["spec"]["ports"])
    find(docs, "Deployment", "web")
    dashboard = find(docs, "ConfigMap", "grafana-dashboard-msk-triton")
    assert dashboard["data"]["msk-triton.json"] == (
        ROOT / "deploy/grafana/dashboards/msk-triton.json").read_text(), (
        "deploy/k8s/base/msk-triton.json differs from the dashboard: cp "
        "deploy/grafana/dashboards/msk-triton.json deploy/k8s/base/")
    rules = find(docs, "ConfigMap", "prometheus-rules")["data"]
    for name in ("alerts.yml", "drift.yml"):
        assert rules[name] == (ROOT / "deploy/prometheus" / name).read_text(), (
            f"deploy/k8s/base/{name} differs from deploy/prometheus/{name}: cp "
            f"deploy/prometheus/{name} deploy/k8s/base/")

    # Only the gateway, the web app and batch pods carry the label the NetworkPolicy admits.
    policy = find(docs, "NetworkPolicy", "triton-ingress")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "triton"}
    admitted = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert admitted == {CLIENT_LABEL: "true"}
    clients = {d["metadata"]["name"] for d in docs + render("batch")
               if d["kind"] in ("Deployment", "StatefulSet", "Job")
               and d["spec"]["template"]["metadata"]["labels"].get(CLIENT_LABEL) == "true"}
    assert clients == {"gateway", "web", "msk-score"}


def test_batch_job_is_indexed_shards_and_pushes_metrics():
    job = find(render("batch"), "Job", "msk-score")
    assert job["spec"]["completionMode"] == "Indexed"
    script = container(job)["args"][0]
    assert '--shard "${JOB_COMPLETION_INDEX}/${SHARDS}"' in script and "--resume" in script
    assert "--metrics-push http://pushgateway:9091" in script
    shards = next(e["value"] for e in container(job)["env"] if e["name"] == "SHARDS")
    assert int(shards) == job["spec"]["completions"]
    merge = find(render("batch/merge"), "Job", "msk-score-merge")
    args = container(merge)["args"]
    assert args[:2] == ["score", "--merge"] and args[args.index("--shards") + 1] == shards


def test_prometheus_scrape_config_passes_promtool(tmp_path):
    """The rendered scrape config and the rules it loads (ConfigMap prometheus-rules, written
    where the config's rule_files glob points) pass `promtool check config`."""
    docs = render("overlays/cpu")
    config = find(docs, "ConfigMap", "prometheus-scrape-config")
    scrape = yaml.safe_load(config["data"]["prometheus.yml"])
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    for name, text in find(docs, "ConfigMap", "prometheus-rules")["data"].items():
        (rules_dir / name).write_text(text)
    assert scrape["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    scrape["rule_files"] = [str(rules_dir / "*.yml")]
    pods = next(j for j in scrape["scrape_configs"] if "kubernetes_sd_configs" in j)
    assert pods["kubernetes_sd_configs"][0]["role"] == "pod"
    # Debian's Prometheus is built without Kubernetes service discovery ("field
    # kubernetes_sd_configs not found"): promtool checks everything else (relabel regexes,
    # labels) with a static target in its place.
    pods["static_configs"] = [{"targets": ["127.0.0.1:8002"]}]
    del pods["kubernetes_sd_configs"]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(scrape))
    result = promtool("check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "drift.yml" in result.stdout and "alerts.yml" in result.stdout, result.stdout
    jobs = {j["job_name"]: j for j in yaml.safe_load(path.read_text())["scrape_configs"]}
    assert jobs["pushgateway"]["honor_labels"] is True


def test_adapter_query_returns_queue_time_per_request_from_a_real_triton(
        tiny_repository, start_prometheus, tmp_path):
    """The HPA's metric, as prometheus-adapter would ask for it, from a real server's metrics."""
    import tritonclient.grpc as grpcclient

    rule = yaml.safe_load(find(render("overlays/cpu"), "ConfigMap", "prometheus-adapter-rules")
                          ["data"]["config.yaml"])["rules"][0]
    query = (rule["metricsQuery"].replace("<<.GroupBy>>", "pod")
             .replace("<<.LabelMatchers>>", 'namespace="msk-triton",pod="triton-0"'))
    with TritonServer(tiny_repository) as triton:
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [{"job_name": "triton", "static_configs": [{
                "targets": [triton.metrics_url.split("/")[2]],
                "labels": {"namespace": "msk-triton", "pod": "triton-0"}}]}]}))
        prom = start_prometheus(config)
        client = grpcclient.InferenceServerClient(triton.grpc_url)
        image = np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)
        deadline = time.monotonic() + 60
        result: list = []
        while time.monotonic() < deadline and not result:
            for _ in range(5):
                inp = grpcclient.InferInput("IMAGE", list(image.shape), "UINT8")
                inp.set_data_from_numpy(image)
                client.infer("mura_ensemble", [inp])
            result = prom.query(query)
            time.sleep(0.5)
        client.close()
    assert result, f"adapter query returned nothing: {query}"
    assert result[0]["metric"] == {"pod": "triton-0"}
    value = float(result[0]["value"][1])
    assert np.isfinite(value) and value >= 0
