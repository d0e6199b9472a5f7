"""Run the official tritonserver binary on 127.0.0.1 and know when it is ready.

`TritonServer` is a context manager used by `msk serve`, the tests, the benchmarks and the demo:
free ports are picked once (and kept across restarts, so clients can reconnect), readiness is
`/v2/health/ready` with strict readiness (every model loaded), and stopping never leaves a process
or a `/dev/shm` region behind: each server gets its own python-backend shm prefix, removed on exit
even after SIGKILL. tritonserver runs under `server/guard.py`, so it and its stubs die with the
process that started them, whatever signal that process gets (start it from a thread that lives
as long as the server: the kernel's parent-death signal follows the starting thread).

With `internal_tls` (what `msk serve` always gives, server/internal_tls.py) tritonserver has no
HTTP endpoint and its gRPC endpoint answers only a client holding the front door's certificate;
readiness is then asked over that gRPC channel. Without it (the lower-level tests) Triton's HTTP
and gRPC are plain loopback endpoints.

A server that exits when nobody asked it to is a crash: `exited_unexpectedly` says so, and leaving
the `with` block raises `ServerCrashed` with the log tail, so a crash is never silent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import weakref
from pathlib import Path
from typing import ClassVar

from msk.constants import DEFAULT_HOST
from server.internal_tls import InternalTls
from server.runtime import TritonRuntime, locate_runtime

SHM_DEFAULT_BYTES = 16 * 1024 * 1024      # tritonserver exits with a smaller pool (< 4 MiB)
SHM_GROWTH_BYTES = 16 * 1024 * 1024
LATENCY_QUANTILES = "0.5:0.05,0.9:0.01,0.95:0.005,0.99:0.001"
GUARD = Path(__file__).resolve().parent / "guard.py"


class ServerStartError(RuntimeError):
    """tritonserver exited or did not become ready; the message carries its log tail."""


class ServerCrashed(RuntimeError):
    """tritonserver exited while nobody had asked it to stop; the message carries its log tail."""


REMOTE_SCHEMES = ("s3://", "gs://", "as://")
"""Repositories tritonserver reads from object storage itself (kept as given, never resolved)."""


def is_remote(repository: Path | str) -> bool:
    return str(repository).startswith(REMOTE_SCHEMES)


def describe_exit(returncode: int | None) -> str:
    """"exit code 1" / "signal SIGSEGV" for a Popen return code."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def group_processes(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":    # after "(comm)": state, ppid, pgrp
            members.append(int(entry.name))
    return sorted(members)


def free_port(host: str = DEFAULT_HOST) -> int:
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = DEFAULT_HOST) -> list[int]:
    """`count` distinct free ports. All sockets are held open together while the ports are
    picked: one after another, the kernel can hand the same port out twice (seen here as
    "cannot listen to GRPC requests and metrics requests at the same address and port")."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                   for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]


class TritonServer:
    """One tritonserver process serving `repository` (see module docstring)."""

    instances: ClassVar[weakref.WeakSet[TritonServer]] = weakref.WeakSet()
    """Every server made in this process: the test suite checks them all for crashes."""

    def __init__(
        self,
        repository: Path,
        *,
        grpc_port: int = 0,
        http_port: int = 0,
        metrics_port: int = 0,
        host: str = DEFAULT_HOST,
        log_path: Path | None = None,
        foreground: bool = False,
        startup_timeout: float = 300.0,
        extra_args: tuple[str, ...] = (),
        runtime: TritonRuntime | None = None,
        gpu: bool = False,
        internal_tls: InternalTls | None = None,
    ) -> None:
        self.repository = repository if is_remote(repository) else Path(repository).resolve()
        self.host = host
        picked = iter(free_ports(3, host))
        self.grpc_port = grpc_port or next(picked)
        self.http_port = http_port or next(picked)
        self.metrics_port = metrics_port or next(picked)
        self.foreground = foreground
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self.gpu = gpu
        self.runtime = runtime or locate_runtime()
        self.internal_tls = internal_tls
        self.shm_prefix = f"msk_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        self.log_path = Path(log_path) if log_path else Path(
            tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None
        self._stop_requested = False
        TritonServer.instances.add(self)

    # -- addresses -----------------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def grpc_client(self):
        """A tritonclient.grpc client of this server (over the internal mutual TLS if any)."""
        import tritonclient.grpc as grpcclient

        kwargs = self.internal_tls.client_kwargs() if self.internal_tls else {}
        return grpcclient.InferenceServerClient(self.grpc_url, **kwargs)

    def _listen_args(self) -> tuple[str, ...]:
        if self.internal_tls is None:
            return (f"--http-address={self.host}", f"--http-port={self.http_port}",
                    f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}")
        return ("--allow-http=false", f"--grpc-address={self.host}",
                f"--grpc-port={self.grpc_port}", *self.internal_tls.triton_args())

    # -- lifecycle -----------------------------------------------------------------------------
    def command(self) -> list[str]:
        return [
            str(self.runtime.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.runtime.backend_dir}",
            *self._listen_args(),
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            f"--allow-gpu-metrics={str(self.gpu).lower()}",
            "--strict-readiness=true",
            # No GPU: pinned host memory buys nothing (on a GPU host Triton's default pool stays).
            *(() if self.gpu else ("--pinned-memory-pool-byte-size=0",)),
            "--metrics-config=summary_latencies=true",
            f"--metrics-config=summary_quantiles={LATENCY_QUANTILES}",
            f"--backend-config=python,shm-default-byte-size={SHM_DEFAULT_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={SHM_GROWTH_BYTES}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *self.extra_args,
        ]

    def start(self) -> TritonServer:
        if self.running:
            return self
        if not is_remote(self.repository) and not self.repository.is_dir():
            raise FileNotFoundError(f"model repository not found: {self.repository} "
                                    "(build one with `msk export` or `make demo`)")
        out = None if self.foreground else self.log_path.open("ab")
        self._stop_requested = False
        self.process = subprocess.Popen(
            [sys.executable, "-S", str(GUARD), "--", *self.command()],
            env=self.runtime.environment(), stdout=out,
            stderr=subprocess.STDOUT if out else None, start_new_session=True,
        )
        if out:
            out.close()
        self.wait_ready()
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def exited_unexpectedly(self) -> bool:
        """True when the server is gone although neither `stop()` nor `kill()` was called."""
        return (self.process is not None and self.process.poll() is not None
                and not self._stop_requested)

    def exit_description(self) -> str:
        return describe_exit(None if self.process is None else self.process.poll())

    def is_ready(self) -> bool:
        if self.internal_tls is not None:
            return self._grpc_ready()
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _grpc_ready(self) -> bool:
        from tritonclient.utils import InferenceServerException

        client = self.grpc_client()
        try:
            return bool(client.is_server_ready(client_timeout=2))
        except InferenceServerException:
            return False
        finally:
            client.close()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                self._stop_requested = True       # reported by the exception, not a crash
                self._cleanup_shm()
                raise ServerStartError(f"tritonserver exited with code {code} before it was "
                                       f"ready:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.2)
        self.stop()
        raise ServerStartError(f"tritonserver not ready after {self.startup_timeout:.0f} s:\n"
                               f"{self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (Triton drains in-flight requests), SIGKILL if it does not exit in time."""
        code = None
        self._stop_requested = True
        if self.process is not None:
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGTERM)     # the guard stops the server
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._killpg()
            code = self.process.returncode
            # A python-backend stub that outlives the server's own exit timeout would be orphaned
            # (seen here after SIGTERM under heavy load): the whole group goes with the server.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self._cleanup_shm()
        return code

    def kill(self) -> None:
        """SIGKILL, as in a crash (asked for: not reported as one); shm regions are removed."""
        self._stop_requested = True
        if self.process is not None and self.process.poll() is None:
            self._killpg()
        self._cleanup_shm()

    def _killpg(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def shm_regions(self) -> list[Path]:
        return sorted(Path("/dev/shm").glob(f"{self.shm_prefix}*"))

    def _cleanup_shm(self) -> None:
        # The stub processes share the server's process group, so they are gone by now.
        for region in self.shm_regions():
            with contextlib.suppress(FileNotFoundError):
                region.unlink()

    def log_tail(self, lines: int = 40) -> str:
        if self.foreground or not self.log_path.is_file():
            return "(server log went to the terminal)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> TritonServer:
        return self.start()

    def pids(self) -> list[int]:
        """Every live process of this server: the guard, tritonserver and its stubs."""
        return [] if self.process is None else group_processes(self.process.pid)

    def __exit__(self, *exc: object) -> None:
        crashed = self.exited_unexpectedly
        description = self.exit_description()
        self.stop()
        if crashed:
            raise ServerCrashed(f"tritonserver for {self.repository} exited unexpectedly "
                                f"({description}). Log tail:\n{self.log_tail()}")
