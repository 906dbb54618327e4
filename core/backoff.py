"""Retry delays: one jittered exponential backoff for every reconnect and retry loop."""

from __future__ import annotations

import random
from collections.abc import Iterator


def backoff_delays(initial: float, cap: float, *, jitter: float = 0.5) -> Iterator[float]:
    """Delays that double from `initial` up to `cap`, each drawn from [1 − jitter, 1] × nominal.

    The jitter spreads clients that lost the same server (a broker restart drops them all at
    once) so that they do not come back in one burst.
    """
    nominal = initial
    while True:
        yield nominal * random.uniform(1.0 - jitter, 1.0)
        nominal = min(cap, nominal * 2.0)
