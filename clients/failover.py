"""Several Triton endpoints and one outage budget per run, for clients that send many requests.

Why here and not in a load balancer: a cluster Service balances gRPC *connections*, not requests,
and a balancer is one more thing to run on a workstation. A client given several `--url`s spreads
its requests over them round-robin and, when one fails, takes it out for a short, growing
cooldown and sends the work to the others, so losing a replica costs retries, not rows.

Why a circuit breaker: retrying each image for its own time budget turned a dead server into
hours for a large batch. The run has ONE outage budget: it starts counting at
the first failure with every endpoint cooling down, after the last success anywhere (a failure
while another endpoint is healthy is a failover, not an outage); if nothing succeeds within it,
the circuit opens and every remaining image fails at once (as `server_unavailable`, which `--resume`
scores again later). Any success closes an outage, so an overloaded server that still answers
some requests never opens it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from msk.backoff import backoff_delay


@dataclass
class Endpoint:
    """One Triton gRPC address and what the client has seen from it."""

    url: str
    client: Any = None
    down_until: float = 0.0
    consecutive_failures: int = 0
    succeeded: int = 0
    failed: int = 0


class EndpointPool:
    """Round-robin over the endpoints that are not cooling down after a failure."""

    def __init__(self, urls: list[str], cooldown_s: float = 0.5, max_cooldown_s: float = 10.0
                 ) -> None:
        if not urls:
            raise ValueError("at least one Triton URL is needed")
        unique = list(dict.fromkeys(urls))
        self.endpoints = [Endpoint(u) for u in unique]
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self._next = 0

    def pick(self, now: float | None = None) -> Endpoint:
        """The next healthy endpoint; when all cool down, the one that recovers first."""
        now = time.monotonic() if now is None else now
        n = len(self.endpoints)
        for step in range(n):
            endpoint = self.endpoints[(self._next + step) % n]
            if endpoint.down_until <= now:
                self._next = (self._next + step + 1) % n
                return endpoint
        return min(self.endpoints, key=lambda e: e.down_until)

    def any_healthy(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return any(e.down_until <= now for e in self.endpoints)

    def failure(self, endpoint: Endpoint, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        endpoint.failed += 1
        endpoint.consecutive_failures += 1
        endpoint.down_until = now + backoff_delay(endpoint.consecutive_failures - 1,
                                                  self.cooldown_s, self.max_cooldown_s)

    def success(self, endpoint: Endpoint) -> None:
        endpoint.succeeded += 1
        endpoint.consecutive_failures = 0
        endpoint.down_until = 0.0

    def report(self) -> dict[str, dict[str, int]]:
        return {e.url: {"ok": e.succeeded, "failed_attempts": e.failed} for e in self.endpoints}


@dataclass
class CircuitBreaker:
    """One outage budget for a whole run (see the module docstring)."""

    budget_s: float
    outage_started: float | None = None
    opened_at: float | None = None
    outages: int = 0
    longest_outage_s: float = 0.0
    refused: int = 0
    """Images failed without a request because the circuit was open."""

    @property
    def open(self) -> bool:
        return self.opened_at is not None

    min_outage_s: float = 1.0
    """Shorter failure spells (one replica's failed probe among successes) are not outages."""

    def success(self, now: float | None = None) -> None:
        if self.outage_started is not None and not self.open:
            now = time.monotonic() if now is None else now
            self._close(now - self.outage_started)
            self.outage_started = None

    def _close(self, duration: float) -> None:
        if duration >= self.min_outage_s:
            self.outages += 1
            self.longest_outage_s = max(self.longest_outage_s, duration)

    def failure(self, now: float | None = None) -> bool:
        """Record an attempt that failed with no endpoint left to fail over to; True when the
        budget is spent (the circuit is open). A budget of 0 opens at the first such failure:
        each endpoint once, no waiting (the interactive clients' default)."""
        now = time.monotonic() if now is None else now
        if self.outage_started is None:
            self.outage_started = now
        if not self.open and now - self.outage_started >= self.budget_s:
            self.opened_at = now
            self._close(now - self.outage_started)
        return self.open

    def report(self) -> dict[str, Any]:
        return {
            "budget_s": self.budget_s, "outages": self.outages,
            "longest_outage_s": round(self.longest_outage_s, 1), "open": self.open,
            "refused_while_open": self.refused,
        }


def url_list(urls: str | Sequence[str]) -> list[str]:
    """One Triton address, or several (a list, or one string with commas): distinct, in order.

    Every client (`msk score/detect/web/gateway`, and a gateway config file's `triton_url`)
    accepts both forms, so one replica or many is the same code path.
    """
    items = [urls] if isinstance(urls, str) else list(urls)
    found = [u.strip() for item in items for u in str(item).split(",") if u.strip()]
    if not found:
        raise ValueError("at least one Triton URL is needed")
    return list(dict.fromkeys(found))
