"""The capacity model of docs/scale-out.md, as code: replicas for a load, and the p99 it predicts.

Why one module: `bench/bench_capacity.py` checks this model against open-loop arrivals and
`msk bench` recommends a replica count with it; two copies of the arithmetic would drift from
each other and from the document. Inputs are what one replica measures: its throughput `mu`
(images/s, closed loop at the concurrency it will see) and its single-image latency `S`
(seconds, alone). Standard library only.
"""

from __future__ import annotations

import math

P99_FACTOR = 4.6
"""-ln(0.01): the p99 of an exponential response time, in means (M/M/1 per replica: pessimistic
for a fixed-size network's nearly constant service time)."""

DEFAULT_UTILISATION = 0.6
"""The target utilisation rho of docs/scale-out.md: 0.6 keeps queues short."""

SPARE_REPLICAS = 1
"""One more than the load needs: a rolling update or a lost node (the PDB keeps one)."""

SECONDS_PER_HOUR = 3600


def arrival_rate(images_per_hour: float) -> float:
    """lambda in images/s for a peak-hour load given in images per hour."""
    return images_per_hour / SECONDS_PER_HOUR


def busy_replicas(rate: float, mu: float, utilisation: float = DEFAULT_UTILISATION) -> int:
    """N = ceil(lambda / (rho * mu)): replicas that carry `rate` images/s at utilisation rho
    (at least one), without the spare."""
    _check_utilisation(utilisation)
    if mu <= 0:
        raise ValueError(f"throughput mu must be > 0, got {mu}")
    return max(1, math.ceil(rate / (utilisation * mu) - 1e-9))


def p99_model(service_s: float, utilisation: float = DEFAULT_UTILISATION) -> float:
    """p99 ~= 4.6 * S / (1 - rho): the model's p99 response time in seconds at utilisation rho."""
    _check_utilisation(utilisation)
    return P99_FACTOR * service_s / (1.0 - utilisation)


def images_per_hour_per_core(images_per_s: float, cores: int) -> float:
    """The README's capacity unit: throughput x 3600 / the cores that produced it."""
    if cores < 1:
        raise ValueError(f"cores must be >= 1, got {cores}")
    return images_per_s * SECONDS_PER_HOUR / cores


def _check_utilisation(utilisation: float) -> None:
    if not 0.0 < utilisation < 1.0:
        raise ValueError(f"utilisation must be in (0, 1), got {utilisation}")
