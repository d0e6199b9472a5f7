"""A local HAProxy in front of several tritonserver replicas (scale-out tests and benchmark).

Why HAProxy: it balances gRPC per request (HTTP/2 streams, not connections) and health-checks
each replica actively on Triton's own `/v2/health/ready`, so a dead or not-ready replica leaves
the rotation by itself, as a Kubernetes Service's endpoints would. Loopback only; the Debian
`haproxy` package provides the binary. This is the one generator of its configuration.
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from msk.constants import DEFAULT_HOST
from msk.process import stop_process
from server.launcher import free_ports

CONFIG = """\
global
    maxconn 512
defaults
    mode http
    timeout connect 2s
    timeout client 300s
    timeout server 300s
frontend grpc
    bind {host}:{port} proto h2
    default_backend triton
backend triton
    balance roundrobin
    option httpchk GET /v2/health/ready
    http-check expect status 200
    default-server inter 300ms fastinter 200ms fall 2 rise 2
{servers}
frontend stats
    bind {host}:{stats_port}
    stats enable
    stats uri /stats
"""


class Replica(Protocol):
    host: str
    grpc_port: int
    http_port: int


def config_text(replicas: Sequence[Replica], port: int, stats_port: int,
                host: str = DEFAULT_HOST) -> str:
    """HAProxy configuration: gRPC (h2) round-robin over `replicas`, checked on HTTP/1.1."""
    if port == stats_port:
        raise ValueError(f"the gRPC and the stats frontend need two ports, got {port} twice")
    servers = "\n".join(
        f"    server r{i} {r.host}:{r.grpc_port} proto h2 check port {r.http_port} "
        "check-proto h1" for i, r in enumerate(replicas))
    return CONFIG.format(host=host, port=port, stats_port=stats_port, servers=servers)


class Balancer:
    """One haproxy process; `url` is the gRPC address clients use."""

    def __init__(self, replicas: Sequence[Replica], workdir: Path | None = None) -> None:
        binary = shutil.which("haproxy")
        if binary is None:
            raise FileNotFoundError("haproxy not found (Debian package `haproxy`)")
        self.binary = binary
        # one call: ports picked one after another can come back equal, and HAProxy then binds
        # both frontends to it (SO_REUSEPORT), sending some gRPC clients to the stats page (a
        # fresh-clone CI run saw `msk score` get 503 from it for 30 s)
        self.port, self.stats_port = free_ports(2)
        self.url = f"{DEFAULT_HOST}:{self.port}"
        self.stats_url = f"http://{DEFAULT_HOST}:{self.stats_port}/stats"
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="haproxy-"))
        self.config = self.workdir / "haproxy.cfg"
        self.config.write_text(config_text(replicas, self.port, self.stats_port))
        self.log = self.workdir / "haproxy.log"
        self.names = [f"r{i}" for i in range(len(replicas))]
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> Balancer:
        check = subprocess.run([self.binary, "-c", "-f", str(self.config)], capture_output=True,
                               text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy rejected {self.config}: {check.stdout}{check.stderr}")
        self.process = subprocess.Popen([self.binary, "-db", "-f", str(self.config)],
                                        stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        for name in self.names:
            self.wait_status(name, "UP", timeout)
        return self

    def status(self) -> dict[str, str]:
        """Replica name -> UP (its last health check passed), DOWN, or a transitional state
        (HAProxy starts a server as UP before its first check: reported as UNCHECKED)."""
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

    def wait_status(self, name: str, wanted: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last: dict[str, str] = {}
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited:\n{self.log.read_text()}")
            with contextlib.suppress(urllib.error.URLError, OSError):
                last = self.status()
                if last.get(name) == wanted:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"haproxy: {name} not {wanted} after {timeout} s: {last}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def __enter__(self) -> Balancer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
