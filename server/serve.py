"""The serving stack's one composition root: what `msk serve`, the Python API, the server image,
compose, Kubernetes and the benchmarks all run.

`serve(config, stop)` composes, in this order:
  1. the checks a user needs before anything starts: the repository is there and coherent, and
     every public port is free (a port in use is an error naming the port and its flag);
  2. tritonserver's command line: the process-level flags of `server.launcher.TritonServer` (its
     loopback ports, no HTTP, gRPC behind mutual TLS with a private CA made for this start,
     server/internal_tls.py) plus `production_flags` - NVIDIA's deployment-guide defaults -
     spelled here and nowhere else (no manifest spells a tritonserver flag). No secret is on
     any command line or in any environment (server/exposure.py);
  3. the front door on the user's ports: the gRPC guard, the HTTP guard (answering over the
     gRPC guard) and the metrics door (Triton's metrics plus `msk serve`'s own, one scrape
     target);
  4. the supervisor (restart with backoff) with its health checks and the shared-memory janitor;
  5. the release workarounds (server/workarounds.py), decided from the version the running
     tritonserver reports.
`Server` is the same composition as a context manager: the documented Python API.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from msk.constants import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HOST,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    QUEUE_MAX_SIZE,
)
from server.exposure import ServerTls
from server.internal_tls import InternalTls
from server.runtime import TritonRuntime, container_runtime, default_runtime, locate_runtime

SERVE_TARGETS = ("cpu", "gpu")
"""cpu: the embedded default (no GPU metrics, no pinned memory); gpu: NVIDIA's container on a GPU
host (the server image), serving the `msk export --target gpu` repository."""

RUNTIMES = ("auto", "wheel", "container")
"""Which tritonserver: NVIDIA's container install (/opt/tritonserver) where present, else the
nvidia-pytriton wheel's (auto); or either one by name."""


class ServeError(RuntimeError):
    """A reason not to start (the repository, a port, a flag); the message says what to do."""


@dataclass(frozen=True)
class ServeConfig:
    """Everything `msk serve` accepts, as one typed value (the CLI only parses into it)."""

    repository: Path | str = Path("model_repository")
    """A folder, or an object-storage URL (s3://...) that tritonserver reads itself."""
    target: str = "cpu"
    host: str = DEFAULT_HOST
    grpc_port: int = DEFAULT_GRPC_PORT
    http_port: int = DEFAULT_HTTP_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    http_inference: bool = False
    allow_client_shm: bool = False
    """Client system shared memory (msk score --shared-memory): off unless asked."""
    tls: ServerTls | None = None
    startup_timeout: float = 600.0
    drain_timeout: float = 30.0
    """On SIGTERM: how long requests in flight may take before tritonserver stops."""
    restart: bool = True
    runtime: str = "auto"
    foreground: bool = True
    """tritonserver's log goes to this process's terminal (msk serve) or to a file (the API)."""
    log_path: Path | None = None

    def __post_init__(self) -> None:
        if self.target not in SERVE_TARGETS:
            raise ServeError(f"--target must be one of {', '.join(SERVE_TARGETS)}")
        if self.runtime not in RUNTIMES:
            raise ServeError(f"--runtime must be one of {', '.join(RUNTIMES)}")
        ports = {"--grpc-port": self.grpc_port, "--http-port": self.http_port,
                 "--metrics-port": self.metrics_port}
        given = [p for p in ports.values() if p]
        if len(given) != len(set(given)):
            raise ServeError(f"the ports must differ: {ports}")

    def public_ports(self) -> dict[str, int]:
        """flag -> port of the front door (0 = pick a free one)."""
        return {"--grpc-port": self.grpc_port, "--http-port": self.http_port,
                "--metrics-port": self.metrics_port}


@dataclass(frozen=True)
class Endpoints:
    """Where the front door listens, once it does."""

    grpc_url: str
    http_url: str
    metrics_url: str
    triton_version: str = ""
    workarounds: frozenset[str] = field(default_factory=frozenset)


def select_runtime(name: str) -> TritonRuntime:
    if name == "container":
        return container_runtime()
    if name == "wheel":
        return locate_runtime()
    return default_runtime()


def production_flags() -> tuple[str, ...]:
    """The tritonserver flags of a production server (NVIDIA's deployment guide,
    docs/customization_guide/deploy.md): the one place they are written. Triton listens on
    loopback only, behind mutual TLS (server.launcher); the front door is what users reach."""
    return (
        "--model-control-mode=none",
        "--exit-on-error=true",
        "--disable-auto-complete-config",
        "--allow-metrics=true",
        # Request/response objects kept for reuse: bounded (the front door bounds what is in
        # flight; every model's queue is bounded too, export/configs.py queue_policy).
        f"--grpc-infer-allocation-pool-size={QUEUE_MAX_SIZE}",
    )


def triton_server(config: ServeConfig, internal_tls: InternalTls,
                  runtime: TritonRuntime | None = None, log_path: Path | None = None):
    """The supervised tritonserver process of `config` (not started), on loopback ports of its
    own that answer only the holder of `internal_tls`'s client key."""
    from server.launcher import TritonServer

    return TritonServer(config.repository, host=DEFAULT_HOST, foreground=config.foreground,
                        log_path=log_path or config.log_path,
                        startup_timeout=config.startup_timeout,
                        extra_args=production_flags(), gpu=config.target == "gpu",
                        runtime=runtime or select_runtime(config.runtime),
                        internal_tls=internal_tls)


def print_command(config: ServeConfig) -> dict:
    """What `msk serve --print-command` prints: tritonserver's argv (internal ports and the
    per-start key folder shown as placeholders) and the front door's addresses. Needs no
    tritonserver here: a container's command is described on any machine."""
    try:
        runtime = select_runtime(config.runtime)
    except RuntimeError:                       # no wheel here: describe the container's
        runtime = container_runtime()
    server = triton_server(config, InternalTls(Path("<internal-tls>")), runtime,
                           log_path=Path(os.devnull))
    argv = [arg.replace(f"={server.grpc_port}", "=<internal>")
            .replace(f"={server.http_port}", "=<internal>")
            .replace(f"={server.metrics_port}", "=<internal>")
            .replace(server.shm_prefix, "<shm-prefix>") for arg in server.command()]
    return {"tritonserver": argv, "target": config.target,
            "front_door": {flag.removeprefix("--").removesuffix("-port"): f"{config.host}:{port}"
                           for flag, port in config.public_ports().items()}}


def check_repository(repository: Path | str) -> None:
    """Refuse a repository that cannot be served, saying what to do. (The manifest's deeper
    consistency check is export's: `msk serve` runs it too, export.consistency.)"""
    from server.launcher import is_remote

    if is_remote(repository):
        return                                     # tritonserver reads s3:// itself
    if not repository.is_dir():
        raise ServeError(f"repository folder {repository} does not exist; build one with "
                         "`msk export` (or `make demo`)")
    missing = sorted(cfg.parent.name for cfg in repository.glob("*/config.pbtxt")
                     if not any(p.is_dir() and p.name.isdigit() for p in cfg.parent.iterdir()))
    if missing:
        raise ServeError(f"{repository} has configs but no model files for {', '.join(missing)}; "
                         f"build them first with `msk export --repository {repository}` "
                         "(or `make demo`)")


def check_ports_free(config: ServeConfig) -> None:
    """Every public port the user named must be free now: a clear error naming the port and its
    flag, instead of a second server sharing it (gRPC's SO_REUSEPORT) or dying later."""
    for flag, port in config.public_ports().items():
        if not port:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((config.host, port))
            except OSError as exc:
                raise ServeError(f"{flag} {port}: {config.host}:{port} is already in use "
                                 f"({exc.strerror}); pick another {flag}") from exc


def triton_version(server) -> str:
    """The version the running tritonserver reports (KServe server metadata, over gRPC)."""
    client = server.grpc_client()
    try:
        return str(client.get_server_metadata(client_timeout=10).version)
    finally:
        client.close()


def serve(config: ServeConfig, stop: threading.Event, *,
          say: Callable[[str], None] = print,
          on_ready: Callable[[Endpoints], None] = lambda endpoints: None) -> int:
    """Run the whole stack until `stop` is set (0), or until it fails (1, said through `say`).

    The front door opens at once but says "not ready" (HTTP readiness 503, gRPC ServerReady
    false, inference UNAVAILABLE) until Triton is up and every pipeline has been warmed
    (server/warmup.py). When `stop` is set it drains: not ready again, new requests answered
    UNAVAILABLE (clients with several --url fail over), calls in flight finish within
    `config.drain_timeout`; only then is tritonserver stopped.
    Raises `ServeError` before anything starts when the repository or a port is unusable."""
    from server.grpc_guard import GrpcGuard
    from server.health import StubWatch
    from server.http_guard import HttpGuard
    from server.launcher import ServerStartError
    from server.metrics_door import MetricsDoor
    from server.shm_janitor import ShmJanitor
    from server.supervisor import Supervisor, SupervisorMetrics
    from server.warmup import warm_up
    from server.workarounds import describe, needed, parse_version

    check_ports_free(config)
    check_repository(config.repository)
    internal_tls = InternalTls.create()
    server = triton_server(config, internal_tls)
    metrics = SupervisorMetrics()
    doors: list = []
    try:
        metrics_door = MetricsDoor(server.metrics_port, config.host, config.metrics_port,
                                   metrics.registry)
        doors.append(metrics_door)
        guard = GrpcGuard(f"{DEFAULT_HOST}:{server.grpc_port}", config.host, config.grpc_port,
                          tls=config.tls, upstream_credentials=internal_tls.channel_credentials(),
                          client_shm=config.allow_client_shm)
        guard.accepting = False                              # until warmed
        guard.start()
        doors.append(guard)
        http_guard = HttpGuard(guard, config.host, config.http_port, config.http_inference)
        http_guard.accepting = False
        doors.append(http_guard)
    except (OSError, RuntimeError) as exc:
        for door in doors:
            door.stop()
        internal_tls.remove()
        raise ServeError(f"cannot open the front door on {config.host}: {exc}") from exc
    http_guard.start()
    metrics_door.start()
    stub_watch = StubWatch()
    decided: dict[str, frozenset[str]] = {}

    def health(srv) -> str | None:      # StubWatch only where the release needs it
        return stub_watch(srv) if "stub-watch" in decided.get("on", frozenset()) else None

    def ready() -> None:
        version = triton_version(server)
        on = needed(parse_version(version))
        decided["on"] = on
        guard.cancel_upstream = "grpc-no-cancel" not in on
        client = server.grpc_client()
        try:
            warmed = warm_up(client, config.startup_timeout)
        except Exception as exc:  # noqa: BLE001 - why: any failure means "not servable"
            raise RuntimeError(f"a pipeline did not answer its warm-up request: {exc}") from exc
        finally:
            client.close()
        guard.accepting = http_guard.accepting = True
        endpoints = Endpoints(guard.url, http_guard.url, metrics_door.url, version, on)
        warm = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in warmed.items())
        say(f"msk serve: ready  grpc={endpoints.grpc_url}  http={endpoints.http_url}  "
            f"metrics={endpoints.metrics_url}  ({describe(parse_version(version))}; warmed: "
            f"{warm or 'no pipeline'})")
        on_ready(endpoints)

    supervisor_stop = threading.Event()

    def drain() -> None:
        stop.wait()
        guard.accepting = http_guard.accepting = False
        if server.running:
            say(f"msk serve: draining (up to {config.drain_timeout:.0f} s for "
                f"{guard.busy()} requests in flight)")
            left = guard.drain(config.drain_timeout)
            if left:
                say(f"msk serve: {left} requests still running after --drain-timeout; "
                    "stopping anyway")
        supervisor_stop.set()

    threading.Thread(target=drain, name="msk-serve-drain", daemon=True).start()
    supervisor = Supervisor(server, restart=config.restart, metrics=metrics, say=say,
                            health_checks=(health, ShmJanitor(say=say)))
    try:
        return supervisor.run(supervisor_stop, on_ready=ready)
    except (ServerStartError, RuntimeError, OSError) as exc:
        say(f"msk serve: {exc}")
        server.stop()
        return 1
    finally:
        stop.set()
        supervisor_stop.set()
        for door in doors:
            door.stop()
        internal_tls.remove()


class Server:
    """The guarded server as a context manager: the documented Python API.

        with Server(ServeConfig(Path("model_repository"), grpc_port=0, http_port=0,
                                metrics_port=0)) as server:
            MuraClient(server.grpc_url).score(images)

    It runs `serve` (the same composition as `msk serve`) in a thread; ports 0 pick free ones.
    tritonserver's log goes to a file (`config.log_path`, else a temporary one)."""

    def __init__(self, config: ServeConfig, say: Callable[[str], None] = lambda _: None) -> None:
        if config.foreground:
            config = dataclasses.replace(config, foreground=False)
        self.config = config
        self.say = say
        self.endpoints: Endpoints | None = None
        self.code: int | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def grpc_url(self) -> str:
        return self._require().grpc_url

    @property
    def http_url(self) -> str:
        return self._require().http_url

    @property
    def metrics_url(self) -> str:
        return self._require().metrics_url

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def grpc_port(self) -> int:
        return int(self.grpc_url.rsplit(":", 1)[1])

    @property
    def http_port(self) -> int:
        return int(self.http_url.rsplit(":", 1)[1])

    def _require(self) -> Endpoints:
        if self.endpoints is None:
            raise RuntimeError("the server is not ready")
        return self.endpoints

    def _run(self) -> None:
        def ready(endpoints: Endpoints) -> None:
            self.endpoints = endpoints
            self._ready.set()
        try:
            self.code = serve(self.config, self._stop, say=self.say, on_ready=ready)
        except BaseException as exc:  # noqa: BLE001 - why: reported to start()
            self._error = exc
        finally:
            self._ready.set()

    def start(self) -> Server:
        self._thread = threading.Thread(target=self._run, name="msk-serve", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self.endpoints is None:
            self._thread.join(60)
            if self._error is not None:
                raise self._error
            raise ServeError(f"the server did not become ready (exit code {self.code})")
        return self

    def stop(self) -> int | None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(120)
        return self.code

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop()


def front_door(repository: Path | str, **settings) -> Server:
    """`Server` on free loopback ports: what the benchmarks and scripts start (the guarded
    server users get, not a bare tritonserver)."""
    return Server(ServeConfig(repository, grpc_port=0, http_port=0, metrics_port=0, **settings))
