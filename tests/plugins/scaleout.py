"""Scale-out fixtures: a real HAProxy balancing gRPC over Triton replicas, and a real Prometheus
Pushgateway (both Debian packages, on free loopback ports, stopped after the test).

`start_haproxy(replicas)` -> `server.haproxy.Balancer`: HTTP/2 (gRPC) round-robin over the
replicas' gRPC ports, each replica actively health-checked on its own `/v2/health/ready`, so a
dead or not-ready replica is taken out and put back by the balancer itself.
`pushgateway` -> base URL of a running Pushgateway.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from msk.process import stop_process
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
    stop_process(proc)


@pytest.fixture
def start_haproxy(tmp_path) -> Iterator:
    """Factory: start_haproxy([TritonServer, ...]) -> server.haproxy.Balancer (started)."""
    from server.haproxy import Balancer

    if shutil.which("haproxy") is None:
        pytest.skip("the Debian `haproxy` package is not installed (make setup installs it)")
    started: list[Balancer] = []

    def start(replicas) -> Balancer:
        balancer = Balancer(replicas, workdir=tmp_path)
        started.append(balancer)
        return balancer.start()

    yield start
    for balancer in started:
        balancer.stop()


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
        time.sleep(0.3)   # a port taken meanwhile makes ours exit: never talk to another one
        assert proc.poll() is None, f"pushgateway exited:\n{log.read_text()}"
        yield url
    finally:
        _stop(proc)
