"""What one push says: the title, body and Apprise notification type of an alert transition.

Pushes are written for a lock screen (SPEC §3): the athlete's and the team's names, the
team's local time, the kind in plain words, the value against its limit and what to do now;
a resolution says what ended it and how long it lasted, never the dangerous value as if it
were current. The words of each row are `alerts.rules.PUSH_WORDS`; the names and time zones
come from a `Directory` built from the configuration. `render` is a pure function.

    Pressure too high — Jamie Striker
    Left leg cuff at 320.5 mmHg, limit 300 mmHg
    Deflate the cuff now
    Senior squad · since 14:12

    Resolved: pressure too high — Jamie Striker
    Left leg: pressure back within limits
    Lasted 3 min 15 s, 14:12–14:15 · Senior squad

A push about a firing alert on a service without a button of its own for it (e-mail, Slack,
Telegram, a webhook) ends with its one-tap ack link (`ack_url`, signed by alerts.ackpush):

    Acknowledge: https://club.example.org/cuffwatch/ack/eyJhIjoi…

The alert's `message` (MQTT, InfluxDB) is a contract of its own and is not what a push says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Final

import apprise

from alerts import rules
from alerts.model import Alert, AlertState, Change, Transition
from alerts.rules import PushWords, Row
from core.model import Severity

if TYPE_CHECKING:  # alerts/ imports core.model only at run time (docs/architecture.md)
    from core.config import Settings

__all__ = [
    "ACK_LINE",
    "TITLE_MAX",
    "Directory",
    "PushMessage",
    "TeamNames",
    "duration",
    "local_time",
    "render",
    "row_of",
]

# A lock screen shows about this much of a title; a long athlete name is shortened to fit.
TITLE_MAX: Final = 60
# The last line of a push that carries its ack link as text, before the link.
ACK_LINE: Final = "Acknowledge:"


@dataclass(frozen=True, slots=True)
class PushMessage:
    """What one push says: title, body and Apprise notification type."""

    title: str
    body: str
    notify_type: apprise.NotifyType


@dataclass(frozen=True, slots=True)
class TeamNames:
    """One team's display name, time zone and athletes' display names (empty: use the id)."""

    name: str = ""
    zone: tzinfo = UTC
    athletes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Directory:
    """What pushes call teams and athletes, and each team's time zone.

    A team, athlete or name it does not know is shown by its id, and times in UTC.
    """

    teams: Mapping[str, TeamNames] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> Directory:
        """Names and zones from `teams.<team>.name`, `.timezone` and `.athletes.<a>.name`."""
        return cls({
            team_id: TeamNames(
                name=team.name,
                zone=team.zone,
                athletes={a_id: a.name for a_id, a in team.athletes.items() if a.name},
            )
            for team_id, team in settings.teams.items()
        })

    def team(self, team_id: str) -> str:
        names = self.teams.get(team_id)
        return names.name if names is not None and names.name else team_id

    def athlete(self, team_id: str, athlete_id: str) -> str:
        names = self.teams.get(team_id)
        return (names.athletes.get(athlete_id) if names is not None else None) or athlete_id

    def zone(self, team_id: str) -> tzinfo:
        names = self.teams.get(team_id)
        return names.zone if names is not None else UTC


_NOTIFY_TYPE = {
    Severity.CRITICAL: apprise.NotifyType.FAILURE,
    Severity.WARNING: apprise.NotifyType.WARNING,
    Severity.INFO: apprise.NotifyType.INFO,
}

# What the title says before the kind, by change (raised and updated say the kind alone).
_TITLE_PREFIX: Final[Mapping[Change, str]] = {
    Change.REOPENED: "Again",
    Change.REFIRED: "Still",
    Change.ESCALATED: "Escalated",
    Change.ACKNOWLEDGED: "Acknowledged",
    Change.RESOLVED: "Resolved",
}

_NO_DIRECTORY: Final = Directory()


def duration(seconds: float) -> str:
    """`42 s`, `3 min 5 s`, `20 min`, `2 h 10 min` or `2 h`, rounded to the second."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def local_time(epoch_ms: int, zone: tzinfo, *, day_of: int | None = None) -> str:
    """`14:12` in `zone`; `Mon 23:58` when that is another day than `day_of` (epoch ms) there."""
    at = datetime.fromtimestamp(epoch_ms / 1000.0, tz=zone)
    if day_of is not None and datetime.fromtimestamp(day_of / 1000.0, tz=zone).date() != at.date():
        return at.strftime("%a %H:%M")
    return at.strftime("%H:%M")


def _quantity(x: float | None, unit: str | None) -> str:
    """A value in its row's unit, as a physio reads it: `320.5 mmHg`, `20 min`, `12 %`."""
    if x is None:
        return "?"
    if unit == "s":
        return duration(x)
    if unit in ("mmHg", "%"):
        return f"{rules.number(x)} {unit}"
    return rules.number(x)  # counts (bouts) and unit-less numbers


def row_of(a: Alert) -> tuple[Row | None, str | None]:
    """The row of the table that set the alert, and the note its message carries, if any.

    The alert object names its kind and severity, not its row; its `message` is the row's
    (rules.describe, with the alert's own numbers), which tells apart rows of one kind and
    severity (the hard ceiling from the LOP mean). An alert whose message matches no row
    (restored from an older message) gets the first row of its kind with its severity and unit.
    """
    who = f"{a.athlete or a.cuff} {a.limb}".strip()
    candidates = [row for row in rules.ROWS if row.kind is a.kind]
    for row in candidates:
        if row.severity is not a.severity:  # warning and critical over_time read alike
            continue
        text = rules.describe(row, who, a.value, a.threshold)
        if a.message == text:
            return row, None
        if a.message.startswith(text + "; "):
            return row, a.message[len(text) + 2:]
    for match in (
        lambda r: r.severity is a.severity and r.unit == a.unit,
        lambda r: r.severity is a.severity,
        lambda r: True,
    ):
        for row in candidates:
            if match(row):
                return row, None
    return None, None  # unreachable while every kind has rows (tests/unit/test_rule_table.py)


def _words(a: Alert, row: Row | None) -> PushWords:
    if row is None:
        return PushWords(a.kind.value.replace("_", " ").capitalize(), "{cuff}: {v}, limit {t}",
                         "Check the cuff", "condition cleared")
    if row is rules.OFFLINE and a.threshold is None:
        return rules.OFFLINE_STATUS_PUSH
    return rules.PUSH_WORDS[row.key]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _title(prefix: str | None, what: str, who: str) -> str:
    """`{prefix}: {what} — {who}`, the name shortened with `…` to keep within TITLE_MAX."""
    head = f"{prefix}: {what[:1].lower()}{what[1:]}" if prefix else what
    title = f"{head} — {who}"
    if len(title) > TITLE_MAX:
        room = TITLE_MAX - len(head) - len(" — …")
        if room >= 4:
            title = f"{head} — {who[:room].rstrip()}…"
    return title


def render(
    transition: Transition, directory: Directory = _NO_DIRECTORY, *, suppressed: int = 0,
    ack_url: str | None = None,
) -> PushMessage:
    """The push for one transition, in the team's names and local time (see the module doc).

    `suppressed`: pushes the rate limit left out since the route's last one; the body says so.
    `ack_url`: the push's one-tap ack link, its last line (never on a resolution).
    """
    a = transition.alert
    row, note = row_of(a)
    words = _words(a, row)
    unit = row.unit if row is not None else a.unit
    zone = directory.zone(a.team)
    team = directory.team(a.team)
    who = directory.athlete(a.team, a.athlete) if a.athlete else f"cuff {a.cuff}"
    limb = a.limb.replace("_", " ")
    since = local_time(a.started_at_ms, zone, day_of=a.updated_at_ms)
    at = local_time(a.updated_at_ms, zone)
    resolved = a.state is AlertState.RESOLVED or transition.change is Change.RESOLVED

    if resolved:
        prefix: str | None = _TITLE_PREFIX[Change.RESOLVED]
        ended = words.ended.format(t=_quantity(a.threshold, unit))
        lasted = duration((a.updated_at_ms - a.started_at_ms) / 1000.0)
        lines = [
            f"{_sentence(limb)}: {ended}" if limb else _sentence(ended),
            f"Lasted {lasted}, {since}–{at} · {team}",
        ]
        notify_type = apprise.NotifyType.SUCCESS
    else:
        prefix = _TITLE_PREFIX.get(transition.change)
        cuff = f"{_sentence(limb)} cuff" if limb else "Cuff"
        lines = [words.fact.format(cuff=cuff, v=_quantity(a.value, unit),
                                   t=_quantity(a.threshold, unit))]
        if note:
            lines.append(_sentence(note))
        lines.append(words.action)
        by = f" by {a.acknowledged_by}" if a.acknowledged_by else ""
        if transition.change is Change.REOPENED:
            status = f"back at {at}, first at {since}"
        else:
            status = f"since {since}"
        if transition.change is Change.ESCALATED:
            status += " · not acknowledged"
        elif transition.change is Change.REFIRED:
            status += f" · acknowledged{by}, still on"
        elif a.state is AlertState.ACKNOWLEDGED:
            status += f" · acknowledged{by} at {at}"
        lines.append(f"{team} · {status}")
        notify_type = _NOTIFY_TYPE[a.severity]
    if suppressed:
        lines.append(
            f"(+{suppressed} earlier push(es) left out by the rate limit; see the dashboard)"
        )
    if ack_url is not None and not resolved:
        lines.append(f"{ACK_LINE} {ack_url}")
    return PushMessage(title=_title(prefix, words.what, who), body="\n".join(lines),
                       notify_type=notify_type)
