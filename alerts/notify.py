"""What the gateway hands alert transitions to: the `Notifier` protocol and its stats."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from alerts.model import Transition


@dataclass(frozen=True, slots=True)
class RouteStats:
    """One delivery route's counters and state, as /metrics shows them."""

    sent: int = 0
    failed: int = 0
    retried: int = 0
    dropped_full: int = 0  # the route's queue was full
    dropped_rate: int = 0  # over the route's rate limit
    superseded: int = 0  # a newer transition of the same alert replaced a queued one
    queue_depth: int = 0
    consecutive_failures: int = 0
    failing: bool = False
    last_error: str | None = None  # an exception class name, never a URL or a secret


class Notifier(Protocol):
    """Takes alert transitions without blocking; runs in the gateway's TaskGroup.

    Implemented by `alerts.push.PushDispatcher` (Apprise routes) and
    `alerts.console.ConsoleNotifier` (the demo's terminal lines). The gateway calls `submit()`
    from its event loop after each MQTT publish, runs `run()` as a task and awaits
    `aclose()` at shutdown.
    """

    def submit(self, transition: Transition) -> None:
        """Queue or show one transition; never blocks, never raises."""

    async def run(self) -> None:
        """Work until `aclose()` (return at once if there is nothing to run)."""

    async def aclose(self) -> None:
        """Stop; drop what is queued (MQTT and InfluxDB keep the alerts)."""

    def stats(self) -> Mapping[str, RouteStats]:
        """Per-route counters by route label (empty if the notifier has no routes)."""
