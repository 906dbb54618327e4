"""Alert types (SPEC §3): kinds, lifecycle states, the alert object and its transitions."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from alerts.evidence import BoutSummary
from alerts.rules import AlertKind
from core.model import Severity

__all__ = [
    "Alert", "AlertKind", "AlertState", "BoutSummary", "Change", "Transition", "iso_ms",
    "parse_iso_ms",
]


class AlertState(enum.StrEnum):
    FIRING = "firing"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Change(enum.StrEnum):
    """What happened to an alert; every change is published, stored and (maybe) pushed."""

    RAISED = "raised"  # a new alert
    REOPENED = "reopened"  # flap guard: the condition came back within reraise_after_s
    UPDATED = "updated"  # severity (or value/threshold of the worst row) changed in place
    ACKNOWLEDGED = "acknowledged"
    REFIRED = "refired"  # ack silence ran out and the condition still holds
    ESCALATED = "escalated"  # critical, unacknowledged for escalate_after_s
    RESOLVED = "resolved"


def iso_ms(epoch_ms: int) -> str:
    """RFC 3339 UTC with milliseconds, as in the SPEC's alert object."""
    dt = datetime.fromtimestamp(epoch_ms / 1000.0, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def parse_iso_ms(text: str) -> int:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return round(dt.timestamp() * 1000)


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """One alert as published on MQTT and stored (SPEC §3 alert object)."""

    id: str  # ULID: unique and sortable by start time
    team: str
    cuff: str
    athlete: str
    limb: str
    kind: AlertKind
    severity: Severity
    state: AlertState
    value: float | None
    threshold: float | None
    unit: str | None
    message: str
    started_at_ms: int
    updated_at_ms: int
    acknowledged_by: str | None = None
    escalated: bool = False

    def evolve(self, **changes: Any) -> Alert:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "team": self.team,
            "cuff": self.cuff,
            "athlete": self.athlete,
            "limb": self.limb,
            "kind": self.kind.value,
            "severity": self.severity.label,
            "state": self.state.value,
            "value": self.value,
            "threshold": self.threshold,
            "unit": self.unit,
            "message": self.message,
            "started_at": iso_ms(self.started_at_ms),
            "updated_at": iso_ms(self.updated_at_ms),
            "acknowledged_by": self.acknowledged_by,
            "escalated": self.escalated,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, d: Any) -> Alert:
        """Inverse of `to_dict`; ValueError or TypeError for anything `to_dict` would not write."""
        if not isinstance(d, dict):
            raise TypeError("an alert is a JSON object")

        def text(key: str) -> str:
            value = d.get(key)
            if not isinstance(value, str):
                raise TypeError(f"alert {key} must be a string")
            return value

        def opt_text(key: str) -> str | None:
            return None if d.get(key) is None else text(key)

        def number(key: str) -> float | None:
            value = d.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"alert {key} must be a number")
            return float(value)

        escalated = d.get("escalated", False)
        if not isinstance(escalated, bool):
            raise TypeError("alert escalated must be a boolean")
        try:
            severity = Severity.parse(text("severity"))
        except KeyError:
            raise ValueError("unknown alert severity") from None
        return cls(
            id=text("id"),
            team=text("team"),
            cuff=text("cuff"),
            athlete=opt_text("athlete") or "",
            limb=opt_text("limb") or "",
            kind=AlertKind(text("kind")),
            severity=severity,
            state=AlertState(text("state")),
            value=number("value"),
            threshold=number("threshold"),
            unit=opt_text("unit"),
            message=opt_text("message") or "",
            started_at_ms=parse_iso_ms(text("started_at")),
            updated_at_ms=parse_iso_ms(text("updated_at")),
            acknowledged_by=opt_text("acknowledged_by"),
            escalated=escalated,
        )


@dataclass(frozen=True, slots=True)
class Transition:
    """An alert's state change, for the delivery stage to publish, store and push."""

    alert: Alert
    change: Change
    push: bool  # False for backlog readings older than alert_max_age_s, and for silenced refreshes
    escalation: bool = False  # True: also goes to the team's escalation routes
