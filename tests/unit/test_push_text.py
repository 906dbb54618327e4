"""What a push says (SPEC §3: "written for a lock screen"): the exact text of every row of
the alert table and of every change, in the team's names and local time.

`alerts.render.render` is pure: these tests build the alert objects the engine publishes
(their `message` from `rules.describe`, as the engine's) and a directory of names; a few
take real transitions from the engine's rig. Delivery of these texts to real receivers:
tests/integration/test_push_receivers.py.
"""

from __future__ import annotations

from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import apprise
import pytest

from alerts import rules
from alerts.model import Alert, AlertKind, AlertState, Change, Transition
from alerts.push import PushDispatcher
from alerts.render import TITLE_MAX, Directory, TeamNames, duration, local_time, render, row_of
from alerts.rules import ROWS
from core.config import load_settings
from tests.support.alert_rig import Rig, leg_params

# 2026-12-07T13:12:03.661Z: 14:12 in Berlin, where the seniors train
T0_MS = 1_796_649_123_661
BERLIN = ZoneInfo("Europe/Berlin")
NAMES = Directory({"seniors": TeamNames("Senior squad", BERLIN, {"s-01": "Jamie Striker"})})
ROW = {row.key: row for row in ROWS}


def alert(
    key: str, value: float | None, threshold: float | None, *, note: str | None = None,
    lasted_s: float = 1.0, **changes: Any,
) -> Alert:
    """The alert the engine publishes for row `key` on cuff sc-01 (s-01's left leg)."""
    row = ROW[key]
    return Alert(
        id="01JD0000000000000000000000", team="seniors", cuff="sc-01", athlete="s-01",
        limb="left_leg", kind=row.kind, severity=row.severity, state=AlertState.FIRING,
        value=value, threshold=threshold, unit=row.unit,
        message=rules.describe(row, "s-01 left_leg", value, threshold, note),
        started_at_ms=T0_MS, updated_at_ms=T0_MS + round(lasted_s * 1000),
    ).evolve(**changes)


def done(a: Alert, lasted_s: float) -> Transition:
    """`a` resolved `lasted_s` after it started (value and threshold stay the last firing's)."""
    return Transition(
        a.evolve(state=AlertState.RESOLVED, updated_at_ms=T0_MS + round(lasted_s * 1000)),
        Change.RESOLVED, True,
    )


def text(t: Transition, directory: Directory = NAMES, **kw: Any) -> str:
    msg = render(t, directory, **kw)
    return f"{msg.title}\n{msg.body}"


# -- every row: raised, and resolved -------------------------------------------------------------

class Case(NamedTuple):
    """A row's alert (value, threshold, note), its push when raised and 3 min 15 s later."""

    key: str
    value: float | None
    threshold: float | None
    note: str | None
    raised: str
    resolved: str

    def alert(self) -> Alert:
        return alert(self.key, self.value, self.threshold, note=self.note)


EVERY_ROW = [Case(*case) for case in [
    ("hard_ceiling", 320.5, 300.0, None,
     "Pressure too high — Jamie Striker\n"
     "Left leg cuff at 320.5 mmHg, limit 300 mmHg\n"
     "Deflate the cuff now\n"
     "Senior squad · since 14:12",
     "Resolved: pressure too high — Jamie Striker\n"
     "Left leg: pressure back within limits\n"
     "Lasted 3 min 15 s, 14:12–14:15 · Senior squad"),
    ("lop_mean", 231.5, 220.0, None,
     "Pressure at or above LOP — Jamie Striker\n"
     "Left leg cuff at 231.5 mmHg for 2 s, LOP 220 mmHg\n"
     "Deflate the cuff now\n"
     "Senior squad · since 14:12",
     "Resolved: pressure at or above LOP — Jamie Striker\n"
     "Left leg: pressure back within limits\n"
     "Lasted 3 min 15 s, 14:12–14:15 · Senior squad"),
    ("above_band", 163.2, 147.0, "cuff set to 165, prescribed 132",
     "Pressure above target — Jamie Striker\n"
     "Left leg cuff at 163.2 mmHg for 5 s, limit 147 mmHg\n"
     "Cuff set to 165, prescribed 132\n"
     "Lower the cuff to its prescribed pressure\n"
     "Senior squad · since 14:12",
     "Resolved: pressure above target — Jamie Striker\n"
     "Left leg: pressure back within limits\n"
     "Lasted 3 min 15 s, 14:12–14:15 · Senior squad"),
    ("below_band", 101.0, 117.0, None,
     "Pressure below target — Jamie Striker\n"
     "Left leg cuff at 101 mmHg for 5 s, minimum 117 mmHg\n"
     "Check the cuff and its fit: leak or slipped cuff\n"
     "Senior squad · since 14:12",
     "Resolved: pressure below target — Jamie Striker\n"
     "Left leg: pressure back in range, or cuff deflated\n"
     "Lasted 3 min 15 s, 14:12–14:15 · Senior squad"),
    ("bout_warn", 601.0, 600.0, None,
     "Bout running long — Jamie Striker\n"
     "Left leg cuff inflated for 10 min 1 s, warning at 10 min\n"
     "Deflate at the end of this set\n"
     "Senior squad · since 14:12",
     "Resolved: bout running long — Jamie Striker\n"
     "Left leg: cuff deflated\n"
     "Lasted 3 min 15 s, 14:12–14:15 · Senior squad"),
    ("bout_max", 1200.0, 1200.0, None,
     "Cuff inflated too long — Jamie Striker\n"
     "Left leg cuff inflated for 20 min, limit 20 min\n"
     "Deflate the cuff now\n"
     "Senior squad · since 14:12",
     "Resolved: cuff inflated too long — Jamie Striker\n"
     "Left leg: cuff deflated\n"
     "Lasted 3 min 15 s, 14:12–14:15 · Senior squad"),
    ("short_rest", 42.0, 60.0, None,
     "Rest too short — Jamie Striker\n"
     "Left leg cuff re-inflated after 42 s of rest, minimum 1 min\n"
     "Deflate and let the limb rest\n"
     "Senior squad · since 14:12",
     "Resolved: rest too short — Jamie Striker\n"
     "Left leg: cuff deflated\n"
     "Lasted 3 min 15 s, 14:12–14:15 · Senior squad"),
    ("session_occlusion", 1801.0, 1800.0, None,
     "Too much occlusion this hour — Jamie Striker\n"
     "Left leg cuff occluded 30 min 1 s in the last 60 min, limit 30 min\n"
     "Deflate; no more bouts on this limb for now\n"
     "Senior squad · since 14:12",
     "Resolved: too much occlusion this hour — Jamie Striker\n"
     "Left leg: under 30 min of occlusion in the last 60 min\n"
     "Lasted 3 min 15 s, 14:12–14:15 · Senior squad"),
    ("session_bouts", 5.0, 4.0, None,
     "Too many bouts this hour — Jamie Striker\n"
     "Left leg cuff: bout 5 within 60 min, limit 4\n"
     "Deflate; no more bouts on this limb for now\n"
     "Senior squad · since 14:12",
     "Resolved: too many bouts this hour — Jamie Striker\n"
     "Left leg: 4 bouts or fewer in the last 60 min\n"
     "Lasted 3 min 15 s, 14:12–14:15 · Senior squad"),
    ("offline", 12.3, 10.0, None,
     "Cuff offline while inflated — Jamie Striker\n"
     "Left leg cuff silent for 12 s, limit 10 s; it may still be inflated\n"
     "Check the cuff now; deflate it by hand if needed\n"
     "Senior squad · since 14:12",
     "Resolved: cuff offline while inflated — Jamie Striker\n"
     "Left leg: a reading arrived\n"
     "Lasted 3 min 15 s, 14:12–14:15 · Senior squad"),
    ("offline", 3.4, None, None,  # the cuff's own `offline` status: no threshold
     "Cuff offline while inflated — Jamie Striker\n"
     "Left leg cuff went offline, last reading 3 s before; it may still be inflated\n"
     "Check the cuff now; deflate it by hand if needed\n"
     "Senior squad · since 14:12",
     "Resolved: cuff offline while inflated — Jamie Striker\n"
     "Left leg: a reading arrived\n"
     "Lasted 3 min 15 s, 14:12–14:15 · Senior squad"),
    ("implausible", 650.0, 600.0, None,
     "Cuff sensor fault — Jamie Striker\n"
     "Left leg cuff sensor reads 650 mmHg, outside -20 to 600 mmHg\n"
     "Check the cuff; swap it if this goes on\n"
     "Senior squad · since 14:12",
     "Resolved: cuff sensor fault — Jamie Striker\n"
     "Left leg: no fault for 30 s\n"
     "Lasted 3 min 15 s, 14:12–14:15 · Senior squad"),
    ("elapsed_backwards", 95.0, 312.0, None,
     "Cuff timer fault — Jamie Striker\n"
     "Left leg cuff bout timer went back from 5 min 12 s to 1 min 35 s\n"
     "Check the cuff; restart it if this goes on\n"
     "Senior squad · since 14:12",
     "Resolved: cuff timer fault — Jamie Striker\n"
     "Left leg: no fault for 30 s\n"
     "Lasted 3 min 15 s, 14:12–14:15 · Senior squad"),
    ("seq_backwards", None, None, None,
     "Cuff data fault — Jamie Striker\n"
     "Left leg cuff reading counter went backwards\n"
     "Check the cuff; restart it if this goes on\n"
     "Senior squad · since 14:12",
     "Resolved: cuff data fault — Jamie Striker\n"
     "Left leg: no fault for 30 s\n"
     "Lasted 3 min 15 s, 14:12–14:15 · Senior squad"),
    ("battery_low", 12.0, 15.0, None,
     "Cuff battery low — Jamie Striker\n"
     "Left leg cuff battery at 12 %, limit 15 %\n"
     "Swap or charge the battery\n"
     "Senior squad · since 14:12",
     "Resolved: cuff battery low — Jamie Striker\n"
     "Left leg: battery back at 20 % or more\n"
     "Lasted 3 min 15 s, 14:12–14:15 · Senior squad"),
]]
CASE_IDS = [f"{case.key}-{i}" for i, case in enumerate(EVERY_ROW)]


@pytest.mark.parametrize("case", EVERY_ROW, ids=CASE_IDS)
def test_every_row_raised_and_resolved(case: Case) -> None:
    a = case.alert()
    assert text(Transition(a, Change.RAISED, True)) == case.raised
    assert text(done(a, 195.0)) == case.resolved


def test_the_table_covers_every_row_and_kind() -> None:
    assert {case.key for case in EVERY_ROW} == {row.key for row in ROWS}
    assert set(rules.PUSH_WORDS) == {row.key for row in ROWS}


@pytest.mark.parametrize("case", EVERY_ROW, ids=CASE_IDS)
def test_a_lock_screen_push_is_short_plain_and_resolutions_do_not_repeat_the_danger(
    case: Case,
) -> None:
    a = case.alert()
    for t in (Transition(a, Change.RAISED, True), done(a, 195.0),
              Transition(a.evolve(escalated=True), Change.ESCALATED, True, escalation=True)):
        msg = render(t, NAMES)
        assert len(msg.title) <= TITLE_MAX, msg.title
        assert len(msg.body.splitlines()) <= 5
        assert all(len(line) <= 80 for line in msg.body.splitlines()), msg.body
        push = f"{msg.title}\n{msg.body}"
        codes = ("s-01", "sc-01", "seniors", "left_leg", a.kind.value, "_", "Z", ".661")
        for code in codes:  # ids, snake_case kinds and rows, UTC with milliseconds
            assert code not in push, (code, push)
    # the resolution says what ended it, not the value that was dangerous
    ended = render(done(a, 195.0), NAMES).body.splitlines()[0]
    raised_fact = render(Transition(a, Change.RAISED, True), NAMES).body.splitlines()[0]
    if case.value is not None:
        assert f"{case.value:g}" not in ended
    assert ended.split(": ", 1)[1] not in raised_fact


# -- every change of one alert --------------------------------------------------------------------


def test_every_change_of_a_critical_alert() -> None:
    a = alert("hard_ceiling", 320.5, 300.0)
    fact = "Left leg cuff at 320.5 mmHg, limit 300 mmHg\nDeflate the cuff now\n"
    acked = a.evolve(state=AlertState.ACKNOWLEDGED, acknowledged_by="Sam",
                     updated_at_ms=T0_MS + 40_000)
    assert text(Transition(acked, Change.ACKNOWLEDGED, True)) == (
        "Acknowledged: pressure too high — Jamie Striker\n" + fact
        + "Senior squad · since 14:12 · acknowledged by Sam at 14:12")
    refired = acked.evolve(state=AlertState.FIRING, updated_at_ms=T0_MS + 100_000)
    assert text(Transition(refired, Change.REFIRED, True)) == (
        "Still: pressure too high — Jamie Striker\n" + fact
        + "Senior squad · since 14:12 · acknowledged by Sam, still on")
    anonymous = refired.evolve(acknowledged_by=None)
    assert text(Transition(anonymous, Change.REFIRED, True)).endswith(
        "Senior squad · since 14:12 · acknowledged, still on")
    escalated = a.evolve(escalated=True, updated_at_ms=T0_MS + 60_000)
    assert text(Transition(escalated, Change.ESCALATED, True, escalation=True)) == (
        "Escalated: pressure too high — Jamie Striker\n" + fact
        + "Senior squad · since 14:12 · not acknowledged")
    reopened = a.evolve(updated_at_ms=T0_MS + 200_000)  # 14:15:23
    assert text(Transition(reopened, Change.REOPENED, True)) == (
        "Again: pressure too high — Jamie Striker\n" + fact
        + "Senior squad · back at 14:15, first at 14:12")


def test_a_rise_in_severity_is_pushed_in_the_new_rows_words() -> None:
    warn = alert("bout_warn", 601.0, 600.0)
    worse = alert("bout_max", 1200.0, 1200.0, lasted_s=599.0)
    assert text(Transition(warn, Change.RAISED, True)).startswith("Bout running long")
    assert text(Transition(worse, Change.UPDATED, True)) == (
        "Cuff inflated too long — Jamie Striker\n"
        "Left leg cuff inflated for 20 min, limit 20 min\n"
        "Deflate the cuff now\n"
        "Senior squad · since 14:12")
    assert text(done(worse, 1210.0)) == (
        "Resolved: cuff inflated too long — Jamie Striker\n"
        "Left leg: cuff deflated\n"
        "Lasted 20 min 10 s, 14:12–14:32 · Senior squad")


def test_notification_types_follow_severity_and_a_resolution_is_a_success() -> None:
    types = {key: render(Transition(alert(key, 1.0, 2.0), Change.RAISED, True)).notify_type
             for key in ("hard_ceiling", "below_band", "battery_low")}
    assert types == {"hard_ceiling": apprise.NotifyType.FAILURE,
                     "below_band": apprise.NotifyType.WARNING,
                     "battery_low": apprise.NotifyType.INFO}
    assert render(done(alert("hard_ceiling", 320.5, 300.0), 5.0)).notify_type \
        is apprise.NotifyType.SUCCESS


def test_rate_limited_pushes_are_counted_in_the_next_one() -> None:
    a = alert("hard_ceiling", 320.5, 300.0)
    assert text(Transition(a, Change.RAISED, True), suppressed=4).endswith(
        "Senior squad · since 14:12\n"
        "(+4 earlier push(es) left out by the rate limit; see the dashboard)")


# -- names, times, fallbacks ---------------------------------------------------------------------


def test_without_names_a_push_shows_ids_and_utc() -> None:
    a = alert("hard_ceiling", 320.5, 300.0)
    assert text(Transition(a, Change.RAISED, True), Directory()) == (
        "Pressure too high — s-01\n"
        "Left leg cuff at 320.5 mmHg, limit 300 mmHg\n"
        "Deflate the cuff now\n"
        "seniors · since 13:12")
    # a team without a name, an athlete the roster does not name (an assignment's)
    partly = Directory({"seniors": TeamNames("", BERLIN, {"s-02": "Alex"})})
    assert text(Transition(a, Change.RAISED, True), partly).splitlines()[::3] == [
        "Pressure too high — s-01", "seniors · since 14:12"]
    nobody = a.evolve(athlete="", limb="", message="sc-01 cuff at 320.5 mmHg (limit 300)")
    assert text(Transition(nobody, Change.RAISED, True)) == (
        "Pressure too high — cuff sc-01\n"
        "Cuff at 320.5 mmHg, limit 300 mmHg\n"
        "Deflate the cuff now\n"
        "Senior squad · since 14:12")
    assert text(done(nobody, 8.0)) == (
        "Resolved: pressure too high — cuff sc-01\n"
        "Pressure back within limits\n"
        "Lasted 8 s, 14:12–14:12 · Senior squad")


def test_a_long_name_is_shortened_to_keep_the_title_on_a_lock_screen() -> None:
    names = Directory({"seniors": TeamNames(
        "Senior squad", BERLIN, {"s-01": "Maximiliane Alexandra Oxlade-Chamberlain-Smythe"})})
    a = alert("offline", 12.3, 10.0)
    title = render(done(a, 20.0), names).title
    assert title == "Resolved: cuff offline while inflated — Maximiliane Alexand…"
    assert len(title) == TITLE_MAX
    assert render(Transition(a, Change.RAISED, True), names).title == (
        "Cuff offline while inflated — Maximiliane Alexandra Oxlade-…")


def test_times_are_the_teams_local_time_with_the_day_when_it_is_another() -> None:
    sydney = ZoneInfo("Australia/Sydney")  # UTC+11 in December
    assert local_time(T0_MS, sydney) == "00:12"
    assert local_time(T0_MS, sydney, day_of=T0_MS + 3_600_000) == "00:12"
    assert local_time(T0_MS, BERLIN, day_of=T0_MS + 11 * 3_600_000) == "Mon 14:12"
    a = alert("battery_low", 12.0, 15.0)
    overnight = done(a, 11 * 3600.0)
    assert text(overnight).splitlines()[-1] == (
        "Lasted 11 h, Mon 14:12–01:12 · Senior squad")
    london = Directory({"seniors": TeamNames("Senior squad", ZoneInfo("Europe/London"))})
    summer = a.evolve(started_at_ms=T0_MS - 180 * 86_400_000,  # June: BST, UTC+1
                      updated_at_ms=T0_MS - 180 * 86_400_000)
    assert text(Transition(summer, Change.RAISED, True), london).endswith("since 14:12")


def test_durations_read_as_minutes_and_hours() -> None:
    assert [duration(s) for s in (0.4, 42, 60, 185, 1200, 3600, 7830, -3)] == [
        "0 s", "42 s", "1 min", "3 min 5 s", "20 min", "1 h", "2 h 10 min", "0 s"]


def test_directory_from_settings_and_the_dispatcher_built_from_them() -> None:
    settings = load_settings(None, teams={
        "seniors": {"name": "Senior squad", "timezone": "Europe/Berlin",
                    "athletes": {"s-01": {"name": "Jamie Striker"}, "s-02": {}},
                    "routes": [{"url": "json://127.0.0.1:9/unused"}]},
        "u18": {},
    })
    names = Directory.from_settings(settings)
    assert (names.team("seniors"), names.team("u18"), names.team("gone")) == (
        "Senior squad", "u18", "gone")
    assert (names.athlete("seniors", "s-01"), names.athlete("seniors", "s-02")) == (
        "Jamie Striker", "s-02")
    assert names.athlete("u18", "s-01") == "s-01"
    assert (names.zone("seniors"), names.zone("u18"), names.zone("gone")) == (
        BERLIN, ZoneInfo("UTC"), names.zone("gone"))
    d = PushDispatcher.from_settings(settings)
    assert d._directory == names
    assert list(d.stats()) == ["seniors/0-json"]


# -- the row behind an alert, as the engine publishes it -------------------------------------------


def test_the_row_is_found_from_real_engine_alerts() -> None:
    """The hard ceiling and the LOP mean are both critical over_pressure in mmHg: the message
    tells them apart. Two rows of over_time read alike: the severity does."""
    rig = Rig(leg_params(), athlete="s-01")
    rig.hold(226.0, 3)  # 2 s mean ≥ LOP 220 (the band's 5 s mean does not span yet)
    [lop] = [t for t in rig.log if t.change is Change.RAISED]
    assert row_of(lop.alert) == (rules.LOP_MEAN, None)
    rig.read(310.0)
    [hard] = [t for t in rig.log if t.change is Change.UPDATED]
    assert row_of(hard.alert) == (rules.HARD_CEILING, None)
    t1 = Directory({"t1": TeamNames("Senior squad", BERLIN, {"s-01": "Jamie Striker"})})
    assert text(hard, t1).splitlines()[:2] == [
        "Pressure too high — Jamie Striker", "Left leg cuff at 310 mmHg, limit 300 mmHg"]

    warn = alert("bout_warn", 1200.0, 1200.0)  # numbers alike: the severity decides
    assert row_of(warn)[0] is rules.BOUT_WARN
    assert row_of(alert("bout_max", 1200.0, 1200.0))[0] is rules.BOUT_MAX


def test_a_restored_alert_whose_message_matches_no_row_gets_its_kinds_words() -> None:
    """An alert re-adopted from an older gateway's retained message keeps that message."""
    old = alert("hard_ceiling", 265.0, 250.0).evolve(message="a-1 left_arm: 265 over 250")
    assert row_of(old) == (rules.HARD_CEILING, None)
    assert text(Transition(old, Change.UPDATED, True)).splitlines()[:2] == [
        "Pressure too high — Jamie Striker", "Left leg cuff at 265 mmHg, limit 250 mmHg"]
    fault = alert("implausible", None, None).evolve(message="?")
    assert row_of(fault)[0] is rules.IMPLAUSIBLE  # of the kind's rows, the one of its unit
    assert row_of(fault.evolve(unit="s"))[0] is rules.ELAPSED_BACK
    for kind in AlertKind:
        rows = [r for r in ROWS if r.kind is kind]
        odd = alert(rows[0].key, 1.0, 2.0).evolve(message="restored")
        assert row_of(odd)[0] in rows


def test_every_row_is_found_from_its_own_message() -> None:
    for row in ROWS:
        for value, threshold in ((1.0, 2.0), (650.0, 600.0), (None, None)):
            assert row_of(alert(row.key, value, threshold))[0] is row, (row.key, value)
