"""Keep one tritonserver up for `msk serve`: say why it stopped, restart it with backoff, count it.

tritonserver 2.51 can die under us (segfaults around request cancellation were seen here, known
upstream as server issues #8034 and #7368), and an OOM killer may take it. A service that users
and PACS rely on restarts it, with exponential backoff so that a server that cannot start does
not spin, and exports how often it did so (`msk_serve_triton_restarts_total{reason}`) beside
`msk_serve_triton_up`, served with Triton's own on the metrics port (server/metrics_door.py).

`health_checks` are callables returning None (healthy) or a reason string; a reason restarts the
server like a crash does (e.g. a model whose backend process died while Triton stays "ready").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from msk.backoff import backoff_delay
from server.launcher import ServerStartError, TritonServer

log = logging.getLogger("msk.serve")
HealthCheck = Callable[[TritonServer], "str | None"]


class SupervisorMetrics:
    """The supervisor's own metrics (a registry of its own: nothing else shares the endpoint)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.restarts = Counter(
            "msk_serve_triton_restarts", "tritonserver restarts by msk serve, by reason",
            ["reason"], registry=self.registry)
        self.up = Gauge("msk_serve_triton_up", "1 while tritonserver is running and ready",
                        registry=self.registry)


class Supervisor:
    """Start `server`, watch it every `poll_s`, restart it on an unexpected exit (see module)."""

    def __init__(self, server: TritonServer, *, restart: bool = True,
                 metrics: SupervisorMetrics | None = None, first_backoff_s: float = 1.0,
                 max_backoff_s: float = 60.0, stable_after_s: float = 300.0,
                 poll_s: float = 0.5, health_checks: tuple[HealthCheck, ...] = (),
                 say: Callable[[str], None] = print) -> None:
        self.server = server
        self.restart = restart
        self.metrics = metrics or SupervisorMetrics()
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.stable_after_s = stable_after_s
        self.poll_s = poll_s
        self.health_checks = health_checks
        self.say = say

    def _problem(self) -> tuple[str, str] | None:
        """(metric reason, message) when the server needs a restart."""
        if not self.server.running:
            return "exit", f"tritonserver exited unexpectedly ({self.server.exit_description()})"
        for check in self.health_checks:
            reason = check(self.server)
            if reason:
                return "unhealthy", f"tritonserver is unhealthy: {reason}"
        return None

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(attempt, self.first_backoff_s, self.max_backoff_s)

    def _start(self, stop: threading.Event, *, retry: bool) -> bool:
        """Start the server; with `retry`, back off and try again until it is ready or `stop`."""
        attempt = 0
        while not stop.is_set():
            try:
                self.server.start()
                self.metrics.up.set(1)
                return True
            except ServerStartError as exc:
                if not retry:
                    raise
                backoff = self._backoff(attempt)
                attempt += 1
                self.say(f"msk serve: tritonserver did not start ({exc}); retrying in "
                         f"{backoff:.0f} s")
                self.server.stop()
                if stop.wait(backoff):
                    return False
        return False

    def run(self, stop: threading.Event, on_ready: Callable[[], None] = lambda: None) -> int:
        """Serve until `stop` is set (0) or, with restarts off, until the server fails (1).

        The first start is not retried (ServerStartError: a broken repository is the user's to
        fix, now); restarts after a crash are."""
        if not self._start(stop, retry=False):
            self.server.stop()
            return 0
        on_ready()
        restarts, started = 0, time.monotonic()
        while not stop.wait(self.poll_s):
            problem = self._problem()
            if problem is None:
                if time.monotonic() - started > self.stable_after_s:
                    restarts = 0
                continue
            reason, message = problem
            self.metrics.up.set(0)
            if not self.restart:
                self.say(f"msk serve: {message}; not restarting (--no-restart)")
                self.server.stop()
                return 1
            self.metrics.restarts.labels(reason).inc()
            backoff = self._backoff(restarts)
            restarts += 1
            self.say(f"msk serve: {message}; restarting in {backoff:.0f} s")
            self.server.stop()
            if stop.wait(backoff):
                break
            if not self._start(stop, retry=True):
                break
            started = time.monotonic()
            self.say(f"msk serve: ready again  grpc={self.server.grpc_url}")
        self.metrics.up.set(0)
        self.server.stop()
        return 0
