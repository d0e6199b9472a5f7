"""Scale-out fixtures: a real HAProxy balancing gRPC over Triton replicas, and a real Prometheus
Pushgateway (both Debian packages, on free loopback ports, stopped after the test).

`start_haproxy(replicas)` -> Balancer: HTTP/2 (gRPC) round-robin over the replicas' gRPC ports,
each replica actively health-checked on its own `/v2/health/ready` (HTTP port) every 300 ms, so a
dead or not-ready replica is taken out and put back by the balancer itself.
`pushgateway` -> base URL of a running Pushgateway.
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from server.launcher import free_port


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{proc.args[0]} exited:\n{log.read_text()}"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer in {timeout} s:\n{log.read_text()}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Balancer:
    url: str
    """gRPC address host:port clients use."""
    stats_url: str
    process: subprocess.Popen

    def status(self) -> dict[str, str]:
        """Server name -> HAProxy's state from its CSV stats page: UP (its last health check
        passed), DOWN, or the transitional states (a server starts UP before any check)."""
        with urllib.request.urlopen(f"{self.stats_url};csv", timeout=5) as r:
            text = r.read().decode().lstrip("# ")
        states = {}
        for row in csv.DictReader(io.StringIO(text)):
            if row["pxname"] != "triton" or row["svname"] in ("BACKEND", "FRONTEND"):
                continue
            state = row["status"].split()[0]
            if state == "UP" and not row["check_status"].startswith("L7OK"):
                state = "UNCHECKED"
            states[row["svname"]] = state
        return states

    def wait_status(self, server: str, wanted: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status().get(server) == wanted:
                return
            time.sleep(0.1)
        raise AssertionError(f"haproxy: {server} not {wanted} after {timeout} s: {self.status()}")


HAPROXY_CONFIG = """\
global
    maxconn 512
defaults
    mode http
    timeout connect 2s
    timeout client 300s
    timeout server 300s
frontend grpc
    bind 127.0.0.1:{port} proto h2
    default_backend triton
backend triton
    balance roundrobin
    option httpchk GET /v2/health/ready
    http-check expect status 200
    default-server inter 300ms fastinter 200ms fall 2 rise 2
{servers}
frontend stats
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /stats
"""


@pytest.fixture
def start_haproxy(tmp_path) -> Iterator:
    """Factory: start_haproxy([TritonServer, ...]) -> Balancer."""
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.skip("the Debian `haproxy` package is not installed (make setup installs it)")
    started: list[subprocess.Popen] = []

    def start(replicas) -> Balancer:
        port, stats_port = free_port(), free_port()
        servers = "\n".join(
            f"    server r{i} {r.host}:{r.grpc_port} proto h2 check port {r.http_port} "
            "check-proto h1"
            for i, r in enumerate(replicas))
        config = tmp_path / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.format(port=port, stats_port=stats_port,
                                                servers=servers))
        check = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        log = tmp_path / "haproxy.log"
        proc = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log.open("wb"),
                                stderr=subprocess.STDOUT)
        started.append(proc)
        balancer = Balancer(f"127.0.0.1:{port}", f"http://127.0.0.1:{stats_port}/stats", proc)
        _wait_http(balancer.stats_url, proc, log)
        for i in range(len(replicas)):
            balancer.wait_status(f"r{i}", "UP")
        return balancer

    yield start
    for proc in started:
        _stop(proc)


@pytest.fixture
def pushgateway(tmp_path) -> Iterator[str]:
    """A running Prometheus Pushgateway; yields its base URL."""
    binary = shutil.which("prometheus-pushgateway")
    if binary is None:
        pytest.skip("the Debian `prometheus-pushgateway` package is not installed")
    port = free_port()
    log = tmp_path / "pushgateway.log"
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/-/ready", proc, log)
        yield url
    finally:
        _stop(proc)
