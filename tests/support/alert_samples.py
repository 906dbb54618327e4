"""Alerts, their transitions and push routes, as the push tests build them.

One over-pressure alert on cuff c7 of team t1 (athlete a-17, left leg), 312 mmHg against a
limit of 300, first raised at T0_MS; every field can be changed. NAMES is what pushes call
them: team t1 is the "Senior squad", training in Berlin, a-17 is "Jamie Striker".
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from alerts.model import Alert, AlertKind, AlertState, Change, Transition
from alerts.render import Directory, TeamNames
from alerts.routes import RouteSpec
from core.model import Severity

T0_MS = 1_795_000_000_000  # 2026-11-18, 12:06:40 in Berlin
NAMES = Directory(
    {"t1": TeamNames("Senior squad", ZoneInfo("Europe/Berlin"), {"a-17": "Jamie Striker"})}
)


def alert(
    alert_id: str = "A1",
    *,
    team: str = "t1",
    athlete: str = "a-17",
    severity: Severity = Severity.CRITICAL,
    state: AlertState = AlertState.FIRING,
    kind: AlertKind = AlertKind.OVER_PRESSURE,
    at_s: float = 0.0,
) -> Alert:
    """The sample alert, `at_s` seconds after it was first raised."""
    return Alert(
        id=alert_id,
        team=team,
        cuff="c7",
        athlete=athlete,
        limb="left_leg",
        kind=kind,
        severity=severity,
        state=state,
        value=312.0,
        threshold=300.0,
        unit="mmHg",
        message=f"{athlete} left_leg cuff at 312 mmHg (limit 300)",
        started_at_ms=T0_MS,
        updated_at_ms=T0_MS + int(at_s * 1000),
    )


def raised(a: Alert, *, push: bool = True) -> Transition:
    """`a` raised (pushed unless push=False)."""
    return Transition(a, Change.RAISED, push)


def resolved(a: Alert, *, at_s: float = 60.0) -> Transition:
    """`a` resolved `at_s` seconds after T0_MS."""
    done = a.evolve(state=AlertState.RESOLVED, updated_at_ms=T0_MS + int(at_s * 1000))
    return Transition(done, Change.RESOLVED, True)


def spec(label: str, url: str, **kwargs: Any) -> RouteSpec:
    """A push route."""
    return RouteSpec(label=label, url=url, **kwargs)
