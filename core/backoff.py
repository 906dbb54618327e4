"""Retry delays: one jittered exponential backoff for every reconnect and retry loop."""

from __future__ import annotations

import random
from collections.abc import Iterator

MAX_DOUBLINGS = 60  # 2^60 × any initial delay is past every cap: no float overflow


def nominal_delay(attempt: int, initial: float, cap: float) -> float:
    """The delay before retry `attempt` (1, 2, …) before jitter: doubling from `initial`."""
    return min(cap, initial * 2.0 ** min(attempt - 1, MAX_DOUBLINGS))


def jittered(nominal: float, jitter: float = 0.5) -> float:
    """`nominal` × a factor drawn from [1 − jitter, 1].

    The jitter spreads clients that lost the same server (a broker restart drops them all at
    once) so that they do not come back in one burst.
    """
    return nominal * random.uniform(1.0 - jitter, 1.0)


def backoff_delays(initial: float, cap: float, *, jitter: float = 0.5) -> Iterator[float]:
    """Delays that double from `initial` up to `cap`, each jittered (see `jittered`)."""
    attempt = 1
    while True:
        yield jittered(nominal_delay(attempt, initial, cap), jitter)
        attempt += 1
