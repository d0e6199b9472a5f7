"""The gateway loop: receive (C-STORE, STOW-RS) -> wait for stability -> score
(`clients.gateway.scoring`: select -> score -> detect -> provenance -> call, typed steps of
`clients.gateway.steps`) -> build the SR and heatmaps (`clients.gateway.results`) -> deliver
(C-STORE and/or STOW-RS).

One worker thread walks the queue; the SCP threads only write files. Keeping the work in one
thread makes ordering and retries easy to reason about, and scoring is bound by Triton anyway.
Every study ends in exactly one audit outcome: `delivered`, `skipped` (nothing to score) or
`dead` (see the dead-letter folder); `retry` entries record each delayed attempt.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from clients.errors import Reason
from clients.gateway.audit import AuditLog
from clients.gateway.config import GatewayConfig
from clients.gateway.queue import StudyQueue
from clients.gateway.results import build_objects
from clients.gateway.scoring import PermanentError, StudyScorer, TransientError
from clients.gateway.scp import StoreSCP
from clients.gateway.scu import DeliveryError, send
from clients.gateway.stow_in import StowServer
from clients.gateway.stow_out import send_stow
from clients.routing import Router

log = logging.getLogger("msk.gateway")


class Gateway:
    """Owns the queue, the SCP, the scorer and the worker thread."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.queue = StudyQueue(config.data_dir, shared=config.shared_queue)
        self.audit = AuditLog(config.audit_log)
        self.router = Router.from_file(config.rules)
        self.scorer = StudyScorer(config.triton_url, self.router, wrist=config.wrist,
                                  tls=config.triton_tls(), ood_policy=config.ood)
        self.scp = StoreSCP(config, self.queue)
        self.stow = StowServer(config, self.queue) if config.dicomweb_port is not None else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self.config.metrics_port is not None:
            from clients.telemetry import start_metrics_server

            start_metrics_server(self.config.metrics_port, self.config.metrics_host)
        self.scp.start()
        if self.stow is not None:
            try:
                self.stow.start()
            except BaseException:
                self.scp.stop()           # never left half-started (DIMSE up, STOW-RS not)
                raise
        self._thread = threading.Thread(target=self._run, name="gateway-worker", daemon=True)
        self._thread.start()
        depth = self.queue.depth()
        log.info("gateway up: destination %s, Triton %s, stable after %.1fs, queue %s",
                 self.destinations, self.config.triton_url, self.config.stable_seconds, depth)

    @property
    def destinations(self) -> str:
        """Where results go, for logs and the audit: C-STORE and/or STOW-RS."""
        parts = [str(self.config.destination)] if self.config.destination else []
        if self.config.destination_dicomweb:
            parts.append(self.config.destination_dicomweb)
        return " + ".join(parts)

    def stop(self) -> None:
        self._stop.set()
        self.scp.stop()
        if self.stow is not None:
            self.stow.stop()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self.scorer.close()
        self.queue.close()
        log.info("gateway stopped")

    def wait(self) -> None:
        """Block until stop() (or Ctrl-C in the caller)."""
        while not self._stop.wait(1.0):
            pass

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # why: the loop must survive anything; the batch stays queued
                log.exception("gateway worker error (will retry)")
                self._stop.wait(self.config.backoff_base_s)
            self._stop.wait(self.config.poll_interval_s)

    def step(self, now: float | None = None) -> None:
        """One pass over the queue (public so tests and tools can drive it)."""
        for key in self.queue.stable(self.config.stable_seconds, now):
            batch = self.queue.promote(key, now)
            if batch:
                log.info("study uid:%s stable, queued as batch %s", key[:12], batch[-13:])
        for batch in self.queue.claimed("pending", now):  # held by us while processed
            if self._stop.is_set():
                return
            self._process(batch)
        for batch in self.queue.claimed("outbox", now):
            if self._stop.is_set():
                return
            self._deliver(batch)
        self._update_metrics()

    def _update_metrics(self) -> None:
        from clients.telemetry import GATEWAY_QUEUE_DEPTH

        for state, depth in self.queue.depth().items():
            GATEWAY_QUEUE_DEPTH.labels(state).set(depth)

    def _retry(self, state: str, batch: str, error: str, outage: bool, reason: str) -> None:
        st = self.queue.state(state, batch)
        delay = self.config.backoff(st.attempts + 1)
        dead = self.queue.failed(state, batch, error, self.config.max_attempts, delay,
                                 outage=outage)
        outcome = "dead" if dead else "retry"
        log.warning("batch %s %s at %s%s: %s%s", batch[-13:], outcome, state,
                    " (outage)" if outage else "", error,
                    "" if dead else f" (retry in {delay:.1f}s)")
        self.audit.record(outcome, input=batch, error=error, error_reason=reason, batch=batch,
                          stage=state, attempts=st.attempts + 1, outage=outage,
                          **({} if dead else {"retry_in_s": delay}))

    def _process(self, batch: str) -> None:
        files = self.queue.files("pending", batch)
        started = time.perf_counter()
        try:
            scored = self.scorer.score(files)
        except TransientError as exc:
            self._retry("pending", batch, str(exc), exc.outage, exc.reason)
            return
        except PermanentError as exc:
            self.queue.dead_letter("pending", batch, str(exc))
            log.error("batch %s dead-lettered: %s", batch[-13:], exc)
            self.audit.record("dead", input=batch, error=str(exc), error_reason=exc.reason,
                              batch=batch, stage="pending",
                              instances=len(files))
            return
        if scored is None:
            log.info("batch %s: nothing to score (%d instance(s)), not an error", batch[-13:],
                     len(files))
            self.audit.record("skipped", input=batch, batch=batch, instances=len(files),
                              detail="no instance routed for scoring")
            self.queue.done("pending", batch)
            return
        objects = build_objects(scored, batch, heatmaps=self.config.heatmaps,
                                destination=self.destinations)
        summary = objects.summary
        self.queue.stage_outbox(batch, objects.files, summary)
        self.audit.record("scored", input=batch, versions=_versions(summary),
                          latency_s=time.perf_counter() - started, **summary)
        log.info("batch %s scored: %d image(s), study probability %s", batch[-13:],
                 summary["images_scored"], summary["probability"])

    def _deliver(self, batch: str) -> None:
        paths = sorted(Path(p) for p in (self.queue.dir("outbox") / batch).glob("*.dcm"))
        config = self.config
        try:
            if config.destination is not None:
                tls = None
                if config.destination_tls:
                    from clients.gateway.tls import client_context

                    tls = client_context(config.dicom_tls_ca, config.dicom_tls_cert,
                                         config.dicom_tls_key)
                send(paths, config.destination, config.ae_title, config.dicom_timeout_s, tls)
            if config.destination_dicomweb:
                send_stow(paths, config.destination_dicomweb, config.dicom_timeout_s,
                          config.dicom_tls_ca)
        except DeliveryError as exc:
            self._retry("outbox", batch, str(exc), exc.outage,
                        Reason.DESTINATION_UNREACHABLE if exc.outage else Reason.DELIVERY_REFUSED)
            return
        except OSError as exc:   # network errors below pynetdicom: the PACS is unreachable
            self._retry("outbox", batch, f"cannot reach {self.destinations}: {exc}", True,
                        Reason.DESTINATION_UNREACHABLE)
            return
        summary = self.queue.summary(batch)
        attempts = self.queue.state("outbox", batch).attempts + 1
        self.audit.record("delivered", input=batch, versions=_versions(summary),
                          **{**summary, "delivery_attempts": attempts})
        self.queue.done("outbox", batch)
        log.info("batch %s delivered to %s", batch[-13:], self.destinations)


def run_gateway(config: GatewayConfig, ready_file: Path | None = None) -> int:
    """Start, block until SIGTERM/SIGINT, stop cleanly; for `msk gateway`."""
    import signal

    gateway = Gateway(config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    gateway.start()
    if ready_file is not None:
        ready_file.write_text("ready\n")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        gateway.stop()
    return 0


def _versions(summary: dict) -> dict[str, str]:
    """Model name -> version of a study summary's `models` (the audit's `versions`)."""
    return {m["name"]: m["version"] for m in summary.get("models", [])}
