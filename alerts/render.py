"""What one push says: the title, body and Apprise notification type of an alert transition."""

from __future__ import annotations

from dataclasses import dataclass

import apprise

from alerts.model import AlertState, Transition, iso_ms
from core.model import Severity

__all__ = ["PushMessage", "duration", "render"]


@dataclass(frozen=True, slots=True)
class PushMessage:
    """What one push says: title, body and Apprise notification type."""

    title: str
    body: str
    notify_type: apprise.NotifyType


_NOTIFY_TYPE = {
    Severity.CRITICAL: apprise.NotifyType.FAILURE,
    Severity.WARNING: apprise.NotifyType.WARNING,
    Severity.INFO: apprise.NotifyType.INFO,
}


def duration(seconds: float) -> str:
    """`42 s`, `3 min 5 s` or `2 h 10 min`, rounded to the second."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def render(transition: Transition, *, suppressed: int = 0) -> PushMessage:
    """Title `CRITICAL over_pressure — a-17 left_leg` (or `RESOLVED …`) and a short body.

    `suppressed`: pushes the rate limit left out since the route's last one; the body says so.
    """
    a = transition.alert
    who = " ".join(p for p in (a.athlete, a.limb) if p) or f"cuff {a.cuff}"
    where = f"team {a.team} · cuff {a.cuff}"
    if a.state is AlertState.RESOLVED:
        title = f"RESOLVED {a.kind.value} — {who}"
        lasted = duration((a.updated_at_ms - a.started_at_ms) / 1000.0)
        status = f"resolved {iso_ms(a.updated_at_ms)} after {lasted} · {where}"
        notify_type = apprise.NotifyType.SUCCESS
    else:
        title = f"{a.severity.name} {a.kind.value} — {who}"
        if transition.escalation:
            title += " (escalated)"
        status = f"{a.state.value} since {iso_ms(a.started_at_ms)} · {transition.change.value}"
        if a.acknowledged_by:
            status += f" · acknowledged by {a.acknowledged_by}"
        status += f" · {where}"
        notify_type = _NOTIFY_TYPE[a.severity]
    lines = [a.message, status] if a.message else [status]
    if suppressed:
        lines.append(
            f"(+{suppressed} earlier push(es) left out by the rate limit; see the dashboard)"
        )
    return PushMessage(title=title, body="\n".join(lines), notify_type=notify_type)
