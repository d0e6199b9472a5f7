"""The one exponential backoff of the project: clients, the gateway and the supervisor wait by it.

Why one: four copies (batch retries, the gateway's delivery queue, the supervisor's restarts,
the client failover's cool-down) differed in where the count started and how the cap applied;
one function keeps "the n-th wait" meaning the same everywhere.
"""

from __future__ import annotations

import random


def backoff_delay(attempt: int, first_s: float, max_s: float, *, jitter: bool = False) -> float:
    """Seconds to wait before retry number `attempt` (0 = the first retry): `first_s` doubled
    per attempt, capped at `max_s`. With `jitter`, scaled by a uniform factor in [0.5, 1] so that
    clients retrying together do not come back together."""
    delay = min(max_s, first_s * 2.0 ** min(max(attempt, 0), 60))
    return delay * random.uniform(0.5, 1.0) if jitter else delay
