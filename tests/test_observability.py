"""Dashboards and alerts against reality: a real Prometheus (Debian package) scrapes the real
tritonserver, a real batch client and the real PACS gateway (`msk gateway`) while traffic runs;
every PromQL expression of the Grafana dashboard and of the alert rules must return data through
Prometheus' HTTP API, and the not-ready alert must fire when the server goes down.

Expressions of panels marked `[gpu]` need a GPU (Triton exports nv_gpu_* only there): here they
must parse and run, and are reported as skipped with that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from clients.batch import BatchScorer
from clients.inputs import expand_inputs
from clients.telemetry import start_metrics_server
from msk.process import stop_process
from server.launcher import TritonServer, free_port, free_ports
from tests.plugins.observability import promtool

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "msk-triton.json"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS_YML = DEPLOY / "prometheus" / "alerts.yml"
DRIFT_YML = DEPLOY / "prometheus" / "drift.yml"   # recording rules the drift panels read
RATE_INTERVAL = "10s"   # what Grafana's $__rate_interval becomes at this test's 1 s scrape interval
_COMPARISON = re.compile(r"^(?P<lhs>.*\S)\s*(==|!=|>=|<=|>|<)\s*[-+0-9.eE]+\s*$", re.DOTALL)


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(panel title, panel description, expr) for every target of every panel."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], panel.get("description", ""), target["expr"]))
    return out


def alert_rules() -> list[tuple[str, str]]:
    groups = yaml.safe_load(ALERTS_YML.read_text())["groups"]
    return [(r["alert"], r["expr"]) for g in groups for r in g["rules"]]



def test_promtool_accepts_config_and_rules():
    config = promtool("check", "config", str(PROMETHEUS_YML))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = promtool("check", "rules", str(ALERTS_YML))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"{len(alert_rules())} rules found" in rules.stdout


def test_dashboard_is_provisioned_from_the_prometheus_datasource():
    datasource = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/msk-triton.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dash = json.loads(DASHBOARD.read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert panels and all(p["datasource"]["uid"] == uid for p in panels)
    titles = " ".join(p["title"].lower() for p in panels)
    for needed in ("p50/p95/p99", "queue", "compute", "requests/s", "failures", "batch size",
                   "cpu", "gpu", "memory", "gateway queue", "bytes sent"):
        assert needed in titles, needed
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def _test_config(tmp_path: Path, triton: TritonServer, client_ports: list[int]) -> Path:
    """The shipped prometheus.yml with loopback targets and a 1 s scrape interval."""
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(ALERTS_YML), str(DRIFT_YML)]
    targets = {
        "triton": f"127.0.0.1:{triton.metrics_port}",
        "triton-ready": f"127.0.0.1:{triton.http_port}",
        "msk-clients": [f"127.0.0.1:{port}" for port in client_ports],
    }
    assert {job["job_name"] for job in config["scrape_configs"]} == set(targets)
    for job in config["scrape_configs"]:
        job.pop("scrape_interval", None)
        wanted = targets[job["job_name"]]
        job["static_configs"] = [{"targets": wanted if isinstance(wanted, list) else [wanted]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def _gateway(triton: TritonServer, tmp_path: Path) -> Iterator[int]:
    """The real PACS gateway (`msk gateway`) with its metrics on a free port; yields the port.

    No PACS is needed for its metrics: the queue-depth gauge is set on every pass of its worker.
    """
    metrics_port, pacs_port, gateway_port = free_ports(3)
    ready = tmp_path / "gateway.ready"
    log = tmp_path / "gateway.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "msk.cli", "gateway", "--triton-url", triton.grpc_url,
         "--destination", f"PACS@127.0.0.1:{pacs_port}", "--port", str(gateway_port),
         "--host", "127.0.0.1", "--data-dir", str(tmp_path / "gateway"),
         "--allowed-calling-ae", "PACS",
         "--metrics-port", str(metrics_port), "--ready-file", str(ready)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, f"msk gateway exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"msk gateway not ready:\n{log.read_text()}"
            time.sleep(0.2)
        yield metrics_port
    finally:
        stop_process(proc, 30)


class _Traffic:
    """A real batch client scoring in a loop until stopped (the process exports its metrics)."""

    def __init__(self, url: str, items: list) -> None:
        self.url, self.items = url, items
        self.stop = threading.Event()
        self.rounds = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        scorer = BatchScorer(self.url, concurrency=2)

        async def one_round() -> None:
            await scorer.wait_ready(30)
            await scorer.run(self.items, None)

        while not self.stop.is_set():
            asyncio.run(one_round())
            self.rounds += 1

    def __enter__(self) -> _Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)


def test_every_dashboard_and_alert_expression_returns_data(tiny_repository, start_prometheus,
                                                           tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (64 + 8 * i, 80), np.uint8)).save(
            tmp_path / f"img{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    items = expand_inputs([str(tmp_path / "*.png")])
    client_port = free_port()
    start_metrics_server(client_port)

    with TritonServer(tiny_repository) as triton, _gateway(triton, tmp_path) as gateway_port, \
            _Traffic(triton.grpc_url, items) as traffic:
        prom = start_prometheus(_test_config(tmp_path, triton, [client_port, gateway_port]))
        for job, targets in (("triton", 1), ("triton-ready", 1), ("msk-clients", 2)):
            prom.wait_for(f'count(up{{job="{job}"}} == 1) == {targets}')
        prom.wait_for('sum(rate(nv_inference_request_success{model="mura_ensemble"}[10s])) > 0')
        prom.wait_for('sum(rate(msk_client_requests_total{outcome="ok"}[10s])) > 0')
        prom.wait_for("msk:mura_drift_psi:1h")       # the drift rules have run on the traffic

        missing, skipped = [], []
        for title, description, expr in dashboard_queries():
            result = prom.query(expr.replace("$__rate_interval", RATE_INTERVAL))
            if description.startswith("[gpu]"):
                skipped.append(f"{title}: needs a GPU (nv_gpu_* metrics); query ran, no GPU here")
                continue
            if not result:
                missing.append(f"dashboard panel {title!r}: {expr}")
        for name, expr in alert_rules():
            match = _COMPARISON.match(expr.strip())
            assert match, f"alert {name}: expected `<expression> <op> <threshold>`"
            if not prom.query(match.group("lhs")):
                missing.append(f"alert {name}: {match.group('lhs')}")
        assert not missing, "expressions without data:\n" + "\n".join(missing)
        assert traffic.rounds >= 1

        # The not-ready alert really fires: take the server down while Prometheus watches.
        traffic.stop.set()
        traffic.thread.join(60)
        triton.stop()
        prom.wait_for('ALERTS{alertname="MskTritonNotReady"}', timeout=60)
        for reason in skipped:
            print("skipped:", reason)
