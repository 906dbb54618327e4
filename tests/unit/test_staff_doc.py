"""docs/staff.md shows the gateway's own push texts: each example is rendered here.

Each fenced block after a `<!-- push: NAME -->` marker must equal the title and body that
`alerts.render.render` gives for that NAME's transition, so the staff page cannot drift
from what phones really show.
"""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo

import pytest

from alerts import rules
from alerts.model import Alert, AlertState, Change, Transition
from alerts.render import Directory, TeamNames, render
from alerts.rules import ROWS
from tests.support.paths import REPO

DOC = REPO / "docs" / "staff.md"
# 2026-12-07T13:12:03.661Z: 14:12 in Berlin
T0_MS = 1_796_649_123_661
NAMES = Directory({"seniors": TeamNames("Senior squad", ZoneInfo("Europe/Berlin"),
                                        {"s-01": "Jamie Striker"})})
LINK = "https://club.example.org/cuffwatch/ack/eyJhIjoi…"
ROW = {row.key: row for row in ROWS}


def _alert(key: str, value: float, threshold: float, **changes: object) -> Alert:
    row = ROW[key]
    return Alert(
        id="01JD0000000000000000000000", team="seniors", cuff="sc-01", athlete="s-01",
        limb="left_leg", kind=row.kind, severity=row.severity, state=AlertState.FIRING,
        value=value, threshold=threshold, unit=row.unit,
        message=rules.describe(row, "s-01 left_leg", value, threshold, None),
        started_at_ms=T0_MS, updated_at_ms=T0_MS,
    ).evolve(**changes)


def _examples() -> dict[str, tuple[Transition, str | None]]:
    hard = _alert("hard_ceiling", 320.5, 300.0)
    acked = hard.evolve(acknowledged_by="Sam (physio)", updated_at_ms=T0_MS + 121_000)
    ended = hard.evolve(state=AlertState.RESOLVED, updated_at_ms=T0_MS + 195_000)
    return {
        "raised": (Transition(hard, Change.RAISED, True), LINK),
        "over time": (Transition(_alert("bout_max", 1200.0, 1200.0), Change.RAISED, True), LINK),
        "battery": (Transition(_alert("battery_low", 12.0, 15.0), Change.RAISED, True), None),
        "escalated": (Transition(hard.evolve(escalated=True, updated_at_ms=T0_MS + 60_000),
                                 Change.ESCALATED, True), LINK),
        "refired": (Transition(acked, Change.REFIRED, True), LINK),
        "resolved": (Transition(ended, Change.RESOLVED, True), None),
    }


def _blocks() -> dict[str, str]:
    text = DOC.read_text(encoding="utf-8")
    return dict(re.findall(r"<!-- push: ([a-z ]+) -->\n```\n(.*?)\n```", text, flags=re.S))


def test_the_page_shows_every_example_once() -> None:
    assert set(_blocks()) == set(_examples())


@pytest.mark.parametrize("name", sorted(_examples()))
def test_each_push_on_the_page_is_what_the_gateway_sends(name: str) -> None:
    transition, link = _examples()[name]
    push = render(transition, NAMES, ack_url=link)
    assert _blocks()[name] == f"{push.title}\n{push.body}"


def test_the_readme_links_the_page_and_shows_the_raised_push() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "(docs/staff.md)" in readme
    transition, link = _examples()["raised"]
    push = render(transition, NAMES, ack_url=link)
    assert f"```\n{push.title}\n{push.body}\n```" in readme
