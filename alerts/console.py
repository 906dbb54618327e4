"""The demo's notifier: one coloured line per alert transition on the terminal."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime

from rich.console import Console
from rich.text import Text

from alerts.model import AlertState, Change, Transition
from alerts.notify import RouteStats
from core.logsafe import escape_controls
from core.model import Severity

__all__ = ["ConsoleNotifier", "format_transition"]

log = logging.getLogger(__name__)

_SEVERITY_STYLE = {
    Severity.CRITICAL: "bold white on red",
    Severity.WARNING: "bold yellow",
    Severity.INFO: "cyan",
}
_RESOLVED_STYLE = "bold green"
_QUIET_CHANGES = frozenset({Change.ACKNOWLEDGED, Change.RESOLVED})


def format_transition(transition: Transition) -> Text:
    """`10:02:03 CRITICAL raised over_pressure t1/c7 a-17 left_leg — message`, styled."""
    a = transition.alert
    clock = datetime.fromtimestamp(a.updated_at_ms / 1000.0).strftime("%H:%M:%S")
    resolved = a.state is AlertState.RESOLVED
    line = Text(no_wrap=False)
    line.append(f"{clock} ", style="dim")
    line.append(
        f"{'RESOLVED' if resolved else a.severity.name:<8}",
        style=_RESOLVED_STYLE if resolved else _SEVERITY_STYLE[a.severity],
    )
    change = transition.change.value
    if transition.escalation:
        change += " ↑escalated"
    line.append(f" {change:<12} ", style="bold" if transition.change not in _QUIET_CHANGES else "")
    line.append(f"{a.kind.value} ", style="bold")
    line.append(f"{a.team}/{a.cuff} ")
    # athlete names, messages naming them and ack names come from MQTT: one line each still
    who = " ".join(p for p in (a.athlete, a.limb) if p)
    if who:
        line.append(f"{escape_controls(who)} ")
    if a.message:
        line.append(f"— {escape_controls(a.message)}")
    if a.acknowledged_by:
        line.append(f" (ack: {escape_controls(a.acknowledged_by)})", style="italic")
    if not transition.push:
        line.append(" [not pushed]", style="dim")
    return line


class ConsoleNotifier:
    """Prints each transition as one coloured line; a `Notifier` with nothing to run or count.

    `submit()` never raises; after `aclose()` it prints nothing more.
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False)
        self._closed = False

    def submit(self, transition: Transition) -> None:
        """Print the transition's line (every transition, pushed or not)."""
        if self._closed:
            return
        try:
            self.console.print(format_transition(transition), highlight=False)
        except Exception:  # a broken terminal must not break the alert path
            log.exception("console notifier could not print a transition")

    async def run(self) -> None:
        """Return at once: printing happens in `submit()`, there is no worker."""

    async def aclose(self) -> None:
        """Stop printing (nothing is queued)."""
        self._closed = True

    def stats(self) -> Mapping[str, RouteStats]:
        """No routes, so no counters."""
        return {}
