"""A real Prometheus (Debian package) for tests: start it on a free loopback port and query it."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from msk.process import stop_process
from server.launcher import free_port


@dataclass
class PrometheusProcess:
    url: str
    process: subprocess.Popen
    log: Path

    def api(self, endpoint: str, **params: str) -> dict:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{endpoint}?{query}", timeout=30) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """Instant query; raises on a PromQL error (HTTP 400 with Prometheus' message)."""
        try:
            return self.api("query", query=expr)["result"]
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"Prometheus rejected {expr!r}: {exc.read().decode()}") from exc

    def wait_for(self, expr: str, timeout: float = 60.0, predicate=bool) -> list[dict]:
        deadline = time.monotonic() + timeout
        result: list[dict] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if predicate(result):
                return result
            time.sleep(0.5)
        raise AssertionError(f"{expr!r} still {result} after {timeout} s; log:\n"
                             + self.log.read_text()[-3000:])


@pytest.fixture
def start_prometheus(tmp_path) -> Iterator:
    """Factory: start_prometheus(config_path) -> PrometheusProcess (stopped after the test)."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the Debian `prometheus` package is not installed (make setup installs it)")
    started: list[PrometheusProcess] = []

    def start(config: Path) -> PrometheusProcess:
        port = free_port()
        log = tmp_path / "prometheus.log"
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log.open("wb"), stderr=subprocess.STDOUT)
        prom = PrometheusProcess(f"http://127.0.0.1:{port}", proc, log)
        started.append(prom)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"prometheus exited:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return prom
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready:\n{log.read_text()}")

    yield start
    for prom in started:
        stop_process(prom.process, 30)


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run Debian's `promtool` (installed by `make setup-test` with Prometheus): a missing
    promtool fails the test instead of skipping it, so the rules are always checked."""
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: run `make setup-test` (Debian package prometheus)"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, cwd=cwd)
