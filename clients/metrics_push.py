"""Push this process's client metrics to a Prometheus Pushgateway (`--metrics-push URL`).

Why: batch pods (a Kubernetes Job, a cron run) often end before Prometheus scrapes them, so their
request counts and latencies would never reach the dashboard. They push instead: every
`interval_s` while running and once more at the end. Each process pushes its own group
(job `msk_score`, instance `<host>:<pid>`), so a retried pod adds a group instead of
overwriting the counts of the one it replaces; Prometheus scrapes the Pushgateway with
`honor_labels: true` and the dashboard's client panels sum over all of them.
"""

from __future__ import annotations

import os
import socket
import sys
import threading

from prometheus_client import REGISTRY, push_to_gateway

PUSH_JOB = "msk_score"


class MetricsPusher:
    """Push the default registry to `url` periodically and at `stop()`; never fails the run."""

    def __init__(self, url: str, job: str = PUSH_JOB, interval_s: float = 15.0,
                 grouping_key: dict[str, str] | None = None) -> None:
        self.url = url
        self.job = job
        self.interval_s = interval_s
        self.grouping_key = grouping_key or {"instance": f"{socket.gethostname()}:{os.getpid()}"}
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-push", daemon=True)

    def push(self) -> bool:
        try:
            push_to_gateway(self.url, job=self.job, registry=REGISTRY,
                            grouping_key=self.grouping_key, timeout=10)
            return True
        except OSError as exc:  # URLError and HTTP errors are OSErrors
            self.failures += 1
            if self.failures == 1:
                print(f"msk: cannot push metrics to {self.url}: {exc} (scoring goes on)",
                      file=sys.stderr)
            return False

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.push()

    def start(self) -> MetricsPusher:
        self._thread.start()
        return self

    def stop(self) -> bool:
        """Stop the periodic pushes and push the final values; True if that push worked."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)
        return self.push()
