"""The one backoff (msk/backoff.py): every retrying part of the project waits by it."""

from __future__ import annotations

from clients.batch import RetryPolicy
from clients.failover import EndpointPool
from msk.backoff import backoff_delay


def test_doubles_from_the_first_wait_and_stops_at_the_cap() -> None:
    assert [backoff_delay(n, 1.0, 60.0) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff_delay(-3, 0.5, 10.0) == 0.5 and backoff_delay(10**6, 0.5, 10.0) == 10.0
    jittered = [backoff_delay(3, 1.0, 60.0, jitter=True) for _ in range(200)]
    assert all(4.0 <= d <= 8.0 for d in jittered) and len(set(jittered)) > 100


def test_the_clients_wait_by_it() -> None:
    policy = RetryPolicy(initial_s=0.2, max_s=5.0)
    assert all(0.5 * backoff_delay(n, 0.2, 5.0) <= policy.delay(n) <= backoff_delay(n, 0.2, 5.0)
               for n in range(10))
    pool = EndpointPool(["a:1"], cooldown_s=1.0, max_cooldown_s=30.0)
    endpoint = pool.endpoints[0]
    downs = []
    for _ in range(7):
        pool.failure(endpoint, now=0.0)
        downs.append(endpoint.down_until)
    assert downs == [backoff_delay(n, 1.0, 30.0) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
