"""Unit tests of the alert engine: every row of the SPEC §3 table, and the alert lifecycle."""

from __future__ import annotations

import json

import pytest

from alerts.engine import NOTHING, AlertEngine, ulid_factory
from alerts.model import Alert, AlertKind, AlertState, Change, Transition
from alerts.window import OcclusionWindow
from core.model import Severity
from core.params import RuleParams
from tests.support.alert_rig import T0, Rig, arm_params, ipc_params, leg_params
from tests.support.window_model import RollingMean

OP = AlertKind.OVER_PRESSURE
UP = AlertKind.UNDER_PRESSURE
OT = AlertKind.OVER_TIME
SR = AlertKind.SHORT_REPERFUSION
SO = AlertKind.SESSION_OVER_TIME
OFF = AlertKind.CUFF_OFFLINE
SF = AlertKind.SENSOR_FAULT
BAT = AlertKind.BATTERY_LOW


def only(transitions: tuple[Transition, ...] | list[Transition]) -> Transition:
    """The single transition of a reading or tick (fails on none or several)."""
    assert len(transitions) == 1, transitions
    return transitions[0]


def hold_until(
    rig: Rig, pressure: float, kind: AlertKind, *, limit: int = 100, target: float | None = None
) -> tuple[int, Transition]:
    """Feed 1 Hz readings until one yields a transition of `kind`; return (1-based index, it)."""
    for i in range(1, limit + 1):
        for t in rig.read(pressure, target=target).transitions:
            if t.alert.kind is kind:
                return i, t
    raise AssertionError(f"no {kind} transition in {limit} readings")


# -- over_pressure: hard ceiling ------------------------------------------------------------------


def test_hard_ceiling_is_critical_on_the_crossing_reading_then_falls_back_to_the_band_row() -> None:
    rig = Rig()
    assert rig.hold(132, 10) == []
    t = only(rig.read(312).transitions)
    assert t.change is Change.RAISED
    assert t.push
    assert not t.escalation
    a = t.alert
    assert (a.kind, a.severity, a.state) == (OP, Severity.CRITICAL, AlertState.FIRING)
    assert (a.value, a.threshold, a.unit) == (312.0, 300.0, "mmHg")
    assert a.message == "a-17 left_leg cuff at 312 mmHg (limit 300)"
    assert (a.team, a.cuff, a.athlete, a.limb) == ("t1", "c1", "a-17", "left_leg")
    assert a.started_at_ms == a.updated_at_ms == round((T0 + 11) * 1000)
    # 4 s later the 312 is still in the last 5 s: nothing new, although the value moved
    assert rig.hold(132, 4) == []
    # at 5 s the ceiling row lets go; the 5 s mean still holds the 312: lowered in place, unpushed
    t2 = only(rig.read(132).transitions)
    assert t2.change is Change.UPDATED
    assert not t2.push
    assert (t2.alert.id, t2.alert.severity) == (a.id, Severity.WARNING)
    assert t2.alert.value == pytest.approx((132 * 5 + 312) / 6)
    assert t2.alert.threshold == 147.0
    t3 = only(rig.read(132).transitions)
    assert (t3.change, t3.alert.id, t3.alert.state) == (Change.RESOLVED, a.id, AlertState.RESOLVED)


@pytest.mark.parametrize(
    ("params", "pressure", "critical"),
    [
        (leg_params(), 299.0, False),
        (leg_params(), 300.0, True),
        (arm_params(), 249.0, False),
        (arm_params(), 250.0, True),
        (ipc_params(), 299.0, False),
        (ipc_params(), 300.0, True),
    ],
    ids=["leg-299", "leg-300", "arm-249", "arm-250", "ipc-299", "ipc-300"],
)
def test_hard_ceiling_per_limb_and_protocol(
    params: RuleParams, pressure: float, critical: bool
) -> None:
    rig = Rig(params)
    rig.hold(params.target_mmhg or 100.0, 3)
    out = rig.read(pressure)
    severities = [t.alert.severity for t in out.transitions if t.alert.kind is OP]
    assert (Severity.CRITICAL in severities) is critical


def test_reading_above_600_raises_sensor_fault_and_critical_over_pressure_and_skips_the_mean() -> (
    None
):
    rig = Rig()
    rig.hold(132, 10)
    out = rig.read(650)
    by_kind = {t.alert.kind: t for t in out.transitions}
    assert set(by_kind) == {OP, SF}
    op, sf = by_kind[OP].alert, by_kind[SF].alert
    assert (op.severity, op.value, op.threshold) == (Severity.CRITICAL, 650.0, 300.0)
    assert (sf.severity, sf.value, sf.threshold) == (Severity.WARNING, 650.0, 600.0)
    assert rig.hold(132, 4) == []
    # had the 650 entered the 5 s mean, the band row would hold now ((5·132 + 650)/6 > 147)
    t = only(rig.read(132).transitions)
    assert (t.change, t.alert.kind) == (Change.RESOLVED, OP)


def test_reading_below_minus_20_is_a_sensor_fault_only() -> None:
    rig = Rig()
    rig.hold(132, 10)
    t = only(rig.read(-30).transitions)
    assert (t.alert.kind, t.alert.value, t.alert.threshold) == (SF, -30.0, -20.0)
    assert "outside the plausible -20 to 600" in t.alert.message
    assert rig.hold(132, 20) == []  # no under_pressure: -30 never entered the mean


# -- over_pressure: 2 s mean ≥ LOP --------------------------------------------------------------


def test_lop_mean_waits_for_its_window_at_bout_start_then_raises_critical() -> None:
    rig = Rig(leg_params(target_mmhg=210.0))  # band 225: only the LOP row can hold at 224
    rig.deflate(10)
    assert rig.read(224).transitions == ()  # bout start: the 2 s mean does not count yet
    assert rig.read(224).transitions == ()
    t = only(rig.read(224).transitions)  # 2 s of readings: the mean counts
    assert (t.change, t.alert.kind, t.alert.severity) == (Change.RAISED, OP, Severity.CRITICAL)
    assert (t.alert.value, t.alert.threshold) == (224.0, 220.0)
    assert "at or above LOP" in t.alert.message


def test_lop_row_does_not_apply_to_ipc() -> None:
    rig = Rig(ipc_params())
    assert rig.hold(220, 200) == []  # full occlusion is the point of ipc


def test_hard_and_lop_rows_swap_in_place_without_pushes() -> None:
    rig = Rig(leg_params(target_mmhg=210.0))
    _, raised = hold_until(rig, 230, OP)
    assert raised.alert.threshold == 220.0  # the LOP row
    up = only(rig.read(310).transitions)
    assert (up.change, up.push, up.alert.id) == (Change.UPDATED, False, raised.alert.id)
    assert (up.alert.severity, up.alert.threshold) == (Severity.CRITICAL, 300.0)
    assert rig.hold(230, 4) == []
    back = only(rig.read(230).transitions)  # the ceiling's 5 s are over: first row is LOP again
    assert (back.change, back.push, back.alert.threshold) == (Change.UPDATED, False, 220.0)


# -- over_pressure: 5 s mean above the band -------------------------------------------------------


def test_band_row_raises_a_warning_when_the_5s_mean_exceeds_target_plus_tolerance() -> None:
    rig = Rig()
    rig.hold(132, 10)
    # 1 Hz: the window holds 6 readings; (4·160 + 2·132)/6 = 150.7 > 147 on the 4th
    i, t = hold_until(rig, 160, OP)
    assert i == 4
    assert (t.alert.severity, t.alert.threshold) == (Severity.WARNING, 147.0)
    assert t.alert.value == pytest.approx((4 * 160 + 2 * 132) / 6)
    assert t.alert.message == "a-17 left_leg cuff at 150.7 mmHg over 5 s (limit 147)"
    # back ≤ the limit: (3·160 + 3·132)/6 = 146 on the 3rd reading at 132
    assert rig.hold(132, 2) == []
    assert only(rig.read(132).transitions).change is Change.RESOLVED


def test_band_row_without_a_target_uses_the_default_max() -> None:
    rig = Rig(leg_params(target_mmhg=None, lop_mmhg=None))
    assert rig.hold(235, 10) == []
    i, t = hold_until(rig, 250, OP)  # (3·250 + 3·235)/6 = 242.5 > 240
    assert i == 3
    assert (t.alert.severity, t.alert.threshold) == (Severity.WARNING, 240.0)


def test_the_prescription_overrides_the_readings_own_target() -> None:
    """SPEC v2 §3: a cuff set to another pressure than prescribed is judged by the
    prescription, and the message names both."""
    rig = Rig()  # prescription target 132
    rig.deflate(2)
    _, t = hold_until(rig, 165, OP, target=165.0)  # the cuff regulates to its own 165
    assert (t.alert.severity, t.alert.value, t.alert.threshold) == (Severity.WARNING, 165.0, 147.0)
    assert t.alert.message.endswith("cuff set to 165, prescribed 132")


def test_the_readings_own_target_counts_where_nothing_is_prescribed() -> None:
    rig = Rig(leg_params(target_mmhg=None, lop_mmhg=None))
    assert rig.hold(200, 20, target=200.0) == []  # no prescription: the cuff's own 200
    _, t = hold_until(rig, 220, OP, target=200.0)
    assert (t.alert.threshold, t.alert.message.count("prescribed")) == (215.0, 0)


def test_band_mean_waits_for_5s_at_bout_start() -> None:
    rig = Rig()
    rig.deflate(10)
    i, t = hold_until(rig, 170, OP)
    assert i == 6  # readings 0..5 s of the bout: the first mean that spans 5 s
    assert t.alert.value == 170.0  # no deflated reading from before the bout in it


def test_after_a_gap_longer_than_the_window_an_open_alert_waits_for_a_full_window() -> None:
    rig = Rig()
    rig.hold(132, 10)
    hold_until(rig, 170, OP)
    assert rig.read(132, dt=10.0).transitions == ()  # the mean restarts: it cannot judge
    assert rig.hold(132, 4) == []
    assert only(rig.read(132).transitions).change is Change.RESOLVED  # 5 s after the gap


def test_a_sustained_excess_is_one_alert_over_hundreds_of_readings() -> None:
    rig = Rig()
    rig.hold(132, 10)
    assert [t.change for t in rig.hold(175, 300, hz=2.0)] == [Change.RAISED]  # 600 readings


# -- under_pressure --------------------------------------------------------------------------------


def test_under_pressure_needs_7s_below_the_band_then_resolves_within_tolerance() -> None:
    rig = Rig()
    rig.hold(132, 10)
    # the mean drops below 117 on the 3rd reading at 100 ((3·100 + 3·132)/6 = 116), 7 s later:
    i, t = hold_until(rig, 100, UP)
    assert i == 10
    assert (t.change, t.alert.severity) == (Change.RAISED, Severity.WARNING)
    assert (t.alert.value, t.alert.threshold) == (100.0, 117.0)
    assert "leak or slipped cuff" in t.alert.message
    assert rig.hold(132, 3) == []  # (3·132 + 3·100)/6 = 116: still below
    assert only(rig.read(132).transitions).change is Change.RESOLVED


def test_under_pressure_resolves_on_deflation_and_needs_a_target() -> None:
    rig = Rig()
    rig.hold(132, 10)
    hold_until(rig, 90, UP)
    t = only(rig.read(0, inflated=False).transitions)
    assert (t.change, t.alert.kind) == (Change.RESOLVED, UP)
    untargeted = Rig(leg_params(target_mmhg=None))
    assert untargeted.hold(60, 60) == []


# -- over_time ------------------------------------------------------------------------------------


def test_over_time_warning_then_critical_in_place_then_resolved_on_deflation() -> None:
    rig = Rig()
    assert rig.hold(132, 600) == []  # elapsed 0 … 599
    warn = only(rig.read(132).transitions)
    assert (warn.change, warn.alert.kind, warn.alert.severity) == (
        Change.RAISED, OT, Severity.WARNING,
    )
    assert (warn.alert.value, warn.alert.threshold, warn.alert.unit) == (600.0, 600.0, "s")
    assert warn.alert.message == "a-17 left_leg cuff inflated for 600 s (limit 600 s)"
    assert rig.hold(132, 599) == []  # elapsed grows every reading: no transition for that
    crit = only(rig.read(132).transitions)
    assert (crit.change, crit.push, crit.alert.id) == (Change.UPDATED, True, warn.alert.id)
    assert crit.alert.severity is Severity.CRITICAL
    # SPEC v2 §3: value and threshold are those of the row that sets the severity
    assert (crit.alert.value, crit.alert.threshold) == (1200.0, 1200.0)
    done = only(rig.read(0, inflated=False).transitions)
    assert (done.change, done.alert.id, done.push) == (Change.RESOLVED, warn.alert.id, True)


# -- short_reperfusion ----------------------------------------------------------------------------


def test_short_reperfusion_raises_at_bout_start_and_resolves_at_bout_end() -> None:
    rig = Rig()
    rig.hold(132, 60)
    rig.deflate(30)
    t = only(rig.read(132).transitions)
    assert (t.change, t.alert.kind, t.alert.severity) == (Change.RAISED, SR, Severity.WARNING)
    assert (t.alert.value, t.alert.threshold) == (30.0, 60.0)
    assert rig.hold(132, 30) == []
    done = only(rig.read(0, inflated=False).transitions)
    assert (done.change, done.alert.id) == (Change.RESOLVED, t.alert.id)


def test_a_full_minimum_rest_is_fine() -> None:
    rig = Rig()
    rig.hold(132, 60)
    rig.deflate(60)
    assert rig.hold(132, 30) == []


def test_after_a_bout_that_hit_max_the_rest_must_be_longer() -> None:
    rig = Rig()
    rig.hold(132, 1201)  # reaches elapsed 1200 = max_bout_s
    rig.deflate(120)
    t = [x for x in rig.read(132).transitions if x.alert.kind is SR]
    assert [(x.alert.value, x.alert.threshold) for x in t] == [(120.0, 180.0)]
    rested = Rig()
    rested.hold(132, 1201)
    rested.deflate(180)
    assert rested.read(132).transitions == ()


# -- session_over_time ----------------------------------------------------------------------------


def test_session_occlusion_cap_raises_then_decays_by_tick() -> None:
    rig = Rig()
    for _ in range(2):
        rig.hold(132, 600)  # elapsed 0 … 599
        rig.deflate(60)
    assert rig.log == []
    assert rig.hold(132, 600) == []  # 1799 s occluded so far
    t = only(rig.read(0, inflated=False).transitions)  # the bout ends: 3 × 600 s
    assert (t.change, t.alert.kind, t.alert.severity) == (Change.RAISED, SO, Severity.WARNING)
    assert (t.alert.value, t.alert.threshold, t.alert.unit) == (1800.0, 1800.0, "s")
    # the first bout began 1920 s ago; it starts leaving the 60 min window 1680 s from now
    assert rig.tick(1680.0) == ()
    done = only(rig.tick(1.0))
    assert (done.change, done.alert.id) == (Change.RESOLVED, t.alert.id)


def test_ipc_allows_full_occlusion_four_times_an_hour_but_not_a_fifth() -> None:
    rig = Rig(ipc_params())
    for _ in range(4):
        rig.hold(220, 230)  # full occlusion, under warn_bout_s 240
        rig.deflate(300)  # exactly min_rest_s
    assert rig.log == []
    t = only(rig.read(220).transitions)
    assert (t.alert.kind, t.alert.value, t.alert.threshold, t.alert.unit) == (
        SO, 5.0, 4.0, "bouts",
    )


def test_ipc_still_caps_pressure_and_bout_time() -> None:
    rig = Rig(ipc_params())
    rig.hold(220, 10)
    t = only(rig.read(301).transitions)
    assert (t.alert.kind, t.alert.severity, t.alert.threshold) == (OP, Severity.CRITICAL, 300.0)
    long = Rig(ipc_params())
    long.hold(220, 300)  # elapsed 0 … 299
    crit = only(long.read(220).transitions)
    assert (crit.change, crit.alert.kind, crit.alert.severity) == (
        Change.UPDATED, OT, Severity.CRITICAL,
    )
    assert long.changes(OT) == [Change.RAISED, Change.UPDATED]  # warned at 240 s
    short = Rig(ipc_params())
    short.hold(220, 100)
    short.deflate(299)
    assert [x.alert.kind for x in short.read(220).transitions] == [SR]


# -- cuff_offline ---------------------------------------------------------------------------------


def test_offline_status_while_inflated_is_critical_and_a_reading_resolves_it() -> None:
    rig = Rig()
    rig.hold(132, 10)
    t = only(rig.status(False))
    assert (t.change, t.push, t.alert.kind, t.alert.severity) == (
        Change.RAISED, True, OFF, Severity.CRITICAL,
    )
    assert t.alert.threshold is None
    assert t.alert.message == (
        "a-17 left_leg cuff went offline while inflated (last reading 0 s ago)"
    )
    assert rig.status(False) == ()  # already open
    assert rig.status(True) == ()  # online is not a reading
    done = only(rig.read(132).transitions)
    assert (done.change, done.alert.id) == (Change.RESOLVED, t.alert.id)


def test_offline_status_of_a_deflated_or_unknown_cuff_is_not_an_alert() -> None:
    rig = Rig()
    rig.hold(132, 10)
    rig.deflate(2)
    assert rig.status(False) == ()
    assert rig.engine.on_status("t1", "c9", False, athlete="a-1", limb="left_arm") == ()


def test_a_silent_inflated_cuff_goes_offline_after_stale_after_s() -> None:
    rig = Rig()
    rig.hold(132, 10)
    assert rig.tick(9.5) == ()
    t = only(rig.tick(0.5))
    assert (t.change, t.alert.kind, t.alert.severity) == (Change.RAISED, OFF, Severity.CRITICAL)
    assert (t.alert.value, t.alert.threshold) == (10.0, 10.0)
    assert rig.tick(5.0) == ()  # still silent: nothing new
    assert only(rig.read(132).transitions).change is Change.RESOLVED


def test_a_silent_deflated_cuff_is_not_offline() -> None:
    rig = Rig()
    rig.hold(132, 10)
    rig.deflate(1)
    assert rig.tick(600.0) == ()


# -- sensor_fault ---------------------------------------------------------------------------------


def test_seq_going_backwards_is_a_fault_that_clears_after_30s() -> None:
    rig = Rig()
    rig.hold(132, 10)
    t = only(rig.read(132, seq=3).transitions)
    assert (t.alert.kind, t.alert.value, t.alert.threshold, t.alert.unit) == (SF, None, None, None)
    assert t.alert.message == "a-17 left_leg cuff sequence number went backwards"
    assert rig.hold(132, 29, tick=True) == []  # seq 4, 5, …: no new fault
    assert only(rig.hold(132, 1, tick=True)).change is Change.RESOLVED  # 30 s after the fault


def test_seq_wrapping_at_2_32_is_not_a_fault() -> None:
    rig = Rig()
    rig.read(132, seq=(1 << 32) - 2)
    assert rig.hold(132, 5) == []  # …, 2^32 − 1, 0, 1, …
    assert rig.seq == 3


def test_elapsed_going_backwards_within_a_bout_is_a_fault() -> None:
    rig = Rig()
    rig.hold(132, 20)  # elapsed 0 … 19
    out = rig.read(132, elapsed=5.0)
    t = only(out.transitions)
    assert (t.alert.kind, t.alert.value, t.alert.threshold, t.alert.unit) == (SF, 5.0, 19.0, "s")
    assert out.bout is None


def test_elapsed_restarting_near_zero_is_a_new_bout_not_a_fault() -> None:
    rig = Rig()
    rig.hold(132, 20)
    out = rig.read(132, elapsed=0.5)
    assert out.bout is not None
    assert out.bout.duration_s == 19.0
    # re-inflated without deflating: no rest at all, which is what short_reperfusion is for
    t = only(out.transitions)
    assert (t.alert.kind, t.alert.value) == (SR, 0.5)  # from the last reading to the restart


def test_a_later_fault_row_keeps_the_alert_and_clears_30s_after_the_last_fault() -> None:
    rig = Rig()
    rig.hold(132, 10)
    first = only(rig.read(132, seq=1).transitions)
    assert rig.hold(132, 19, tick=True) == []
    assert rig.read(132, seq=1).transitions == ()  # a fault of the same row: no transition
    assert rig.hold(132, 29, tick=True) == []
    assert only(rig.hold(132, 1, tick=True)).alert.id == first.alert.id


# -- battery_low ----------------------------------------------------------------------------------


def test_battery_low_has_hysteresis() -> None:
    rig = Rig()
    assert rig.read(132, battery=15.0).transitions == ()
    t = only(rig.read(132, battery=14.5).transitions)
    assert (t.alert.kind, t.alert.severity, t.alert.value, t.alert.threshold, t.alert.unit) == (
        BAT, Severity.INFO, 14.5, 15.0, "%",
    )
    for pct in (13.0, 17.0, 19.9, None):
        assert rig.read(132, battery=pct).transitions == ()
    assert only(rig.read(132, battery=20.0).transitions).change is Change.RESOLVED


# -- lifecycle ------------------------------------------------------------------------------------


def test_ack_silences_pushes_then_the_alert_refires() -> None:
    rig = Rig()
    rig.hold(132, 10)
    raised = only(rig.hold(160, 6))  # band warning
    ack = only(rig.ack(OP, by="jo"))
    assert (ack.change, ack.push, ack.alert.id) == (Change.ACKNOWLEDGED, True, raised.alert.id)
    assert (ack.alert.state, ack.alert.acknowledged_by) == (AlertState.ACKNOWLEDGED, "jo")
    up = only(rig.read(320).transitions)  # severity rises while silenced: published, not pushed
    assert (up.change, up.push, up.alert.severity) == (Change.UPDATED, False, Severity.CRITICAL)
    assert up.alert.state is AlertState.ACKNOWLEDGED
    for _ in range(58):
        rig.read(170)
        assert rig.tick() == ()  # no refire, and an acknowledged alert does not escalate
    rig.read(170)
    refire = only(rig.tick())  # 60 s after the ack
    assert (refire.change, refire.push, refire.alert.id) == (Change.REFIRED, True, raised.alert.id)
    assert refire.alert.state is AlertState.FIRING


def test_an_alert_that_resolves_during_its_silence_does_not_refire() -> None:
    rig = Rig()
    rig.hold(132, 10)
    rig.hold(160, 6)
    rig.ack(OP)
    assert [t.change for t in rig.hold(132, 120, tick=True)] == [Change.RESOLVED]


def test_an_ack_without_an_open_alert_returns_nothing() -> None:
    rig = Rig()
    rig.hold(132, 10)
    assert rig.ack(OP) == ()
    assert rig.engine.on_ack("t1", "nope", OP, "jo") == ()
    rig.hold(160, 6)
    rig.hold(132, 10)  # resolved
    assert rig.ack(OP) == ()


def test_an_unacknowledged_critical_alert_escalates_once() -> None:
    rig = Rig()
    rig.hold(132, 10)
    raised = only(rig.read(320).transitions)
    for _ in range(59):
        rig.read(320)
        assert rig.tick() == ()
    rig.read(320)
    esc = only(rig.tick())
    assert (esc.change, esc.push, esc.escalation) == (Change.ESCALATED, True, True)
    assert (esc.alert.id, esc.alert.escalated, esc.alert.state) == (
        raised.alert.id, True, AlertState.FIRING,
    )
    for _ in range(120):
        rig.read(320)
        assert rig.tick() == ()


def test_warnings_do_not_escalate() -> None:
    rig = Rig()
    rig.hold(132, 10)
    assert [t.change for t in rig.hold(170, 300, tick=True)] == [Change.RAISED]


def test_flap_guard_reopens_the_same_alert_within_reraise_after_s() -> None:
    rig = Rig()
    rig.hold(132, 10)
    rig.hold(160, 6)
    rig.hold(132, 6)
    rig.hold(160, 6)
    ts = rig.of(OP)
    assert [t.change for t in ts] == [Change.RAISED, Change.RESOLVED, Change.REOPENED]
    assert len({t.alert.id for t in ts}) == 1
    assert (ts[-1].push, ts[-1].alert.state) == (True, AlertState.FIRING)


def test_after_reraise_after_s_a_new_alert_is_raised() -> None:
    rig = Rig()
    rig.hold(132, 10)
    rig.hold(160, 6)
    rig.hold(132, 40)
    rig.hold(160, 6)
    ts = rig.of(OP)
    assert [t.change for t in ts] == [Change.RAISED, Change.RESOLVED, Change.RAISED]
    assert ts[0].alert.id != ts[2].alert.id
    assert ts[0].alert.id < ts[2].alert.id  # ULIDs sort by start time


def test_a_reopened_critical_alert_may_escalate_again() -> None:
    rig = Rig()
    rig.hold(132, 10)
    rig.read(320)
    assert [t.change for t in rig.hold(320, 60, tick=True)] == [Change.ESCALATED]
    assert [t.change for t in rig.hold(132, 6)] == [Change.UPDATED, Change.RESOLVED]
    reopened = only(rig.read(320).transitions)
    assert (reopened.change, reopened.alert.escalated) == (Change.REOPENED, False)
    assert [t.change for t in rig.hold(320, 60, tick=True)] == [Change.ESCALATED]


def test_backlog_readings_emit_unpushed_transitions_and_do_not_escalate() -> None:
    rig = Rig()
    rig.hold(132, 10)
    rig.away(300)  # the broker holds the cuff's readings meanwhile
    rig.hold(132, 10, arrive_dt=0.01)
    raised = only(rig.read(320, arrive_dt=0.01).transitions)
    assert (raised.change, raised.push) == (Change.RAISED, False)
    assert raised.alert.started_at_ms == round((T0 + 21) * 1000)  # when it happened
    assert rig.hold(320, 120, tick=True, arrive_dt=0.01) == []  # backlog does not escalate
    changes = [(t.change, t.push) for t in rig.hold(132, 6, arrive_dt=0.01)]
    assert changes == [(Change.UPDATED, False), (Change.RESOLVED, False)]


def test_a_backlog_alert_is_pushed_and_escalates_once_live_readings_confirm_it() -> None:
    rig = Rig()
    rig.hold(132, 10)
    rig.away(300)
    rig.hold(320, 120, tick=True, arrive_dt=0.01)
    # the catch-up reaches readings within alert_max_age_s: the condition holds now
    live = only([t for t in rig.catch_up(320) if t.push])
    assert (live.change, live.alert.state) == (Change.UPDATED, AlertState.FIRING)
    assert rig.hold(320, 58, tick=True) == []
    assert only(rig.hold(320, 3, tick=True)).change is Change.ESCALATED


def test_a_reading_just_within_alert_max_age_is_pushed() -> None:
    rig = Rig()
    rig.hold(132, 10)
    rig.away(58)
    assert only(rig.read(320, arrive_dt=0.01).transitions).push
    rig = Rig()
    rig.hold(132, 10)
    rig.away(62)
    assert not only(rig.read(320, arrive_dt=0.01).transitions).push


@pytest.mark.parametrize("lag_s", [120.0, 3000.0, -200.0])
def test_a_cuff_whose_clock_is_off_gets_pushes_for_what_happens_now(lag_s: float) -> None:
    """SPEC v2 §3: a lagging (or leading) cuff clock no longer silences pushes."""
    rig = Rig()
    rig.hold(132, 3, lag_s=lag_s)
    raised = only(rig.read(320, lag_s=lag_s).transitions)
    assert (raised.change, raised.push) == (Change.RAISED, True)


def test_a_clock_that_lags_from_the_first_reading_is_pushed_within_a_second() -> None:
    rig = Rig()
    first = only(rig.read(320, lag_s=120.0).transitions)  # no history: it looks 2 min old
    assert (first.change, first.push) == (Change.RAISED, False)
    live = only(rig.read(320, lag_s=120.0).transitions)  # 1 s later, at live pace
    assert (live.change, live.push, live.alert.id) == (Change.UPDATED, True, first.alert.id)


def test_a_clock_step_back_keeps_pushes_coming() -> None:
    rig = Rig()
    rig.hold(132, 10)
    rig.hold(132, 5, lag_s=120.0)  # SNTP stepped the cuff's clock back 2 min
    assert only(rig.read(320, lag_s=120.0).transitions).push


def test_restore_adopts_a_retained_alert_and_resolves_it_with_the_same_id() -> None:
    before = Rig()
    before.hold(132, 700)
    retained = before.engine.open_alerts()
    assert [a.kind for a in retained] == [OT]
    alert = Alert.from_dict(json.loads(retained[0].to_json()))
    after = Rig()  # a restarted gateway: new engine, same cuff, the bout still running
    after.engine.restore(alert)
    assert [a.id for a in after.engine.open_alerts()] == [alert.id]
    # the first live verdict publishes the alert as it stands (a retained message proves
    # nothing), with the same id; later readings add nothing
    live = only(after.read(132, elapsed=720.0).transitions)
    assert (live.change, live.push, live.alert.id) == (Change.UPDATED, True, alert.id)
    assert after.read(132, elapsed=721.0).transitions == ()
    done = only(after.read(0, inflated=False).transitions)
    assert (done.change, done.alert.id) == (Change.RESOLVED, alert.id)
    assert after.engine.open_alerts() == []


def test_restore_keeps_acknowledgement_and_is_idempotent() -> None:
    before = Rig()
    before.hold(132, 10)
    before.status(False)
    before.ack(OFF, by="sam")
    [alert] = before.engine.open_alerts()
    after = Rig()
    after.engine.restore(alert)
    after.engine.restore(alert)
    after.engine.restore(alert.evolve(id="01OTHER", state=AlertState.FIRING))
    [kept] = after.engine.open_alerts()
    assert (kept.id, kept.state, kept.acknowledged_by) == (alert.id, AlertState.ACKNOWLEDGED, "sam")
    done = only(after.read(132).transitions)
    assert (done.change, done.alert.id) == (Change.RESOLVED, alert.id)


def test_restore_ignores_resolved_alerts() -> None:
    rig = Rig()
    rig.hold(132, 10)
    rig.status(False)
    [alert] = rig.engine.open_alerts()
    fresh = Rig()
    fresh.engine.restore(alert.evolve(state=AlertState.RESOLVED))
    assert fresh.engine.open_alerts() == []


def test_a_restored_sensor_fault_clears_30s_after_restore() -> None:
    rig = Rig()
    rig.hold(132, 5)
    rig.read(132, seq=1)
    [alert] = rig.engine.open_alerts()
    after = Rig()
    after.engine.restore(alert)
    assert after.tick(29.5) == ()
    assert only(after.tick(0.5)).alert.id == alert.id


# -- bouts -----------------------------------------------------------------------------------------


def test_bout_summary_at_deflation() -> None:
    rig = Rig()
    rig.deflate(5)
    start = rig.read(120)
    assert start.bout is None
    for p in (130, 140, 650, 150):  # 650: implausible, out of the statistics
        rig.read(p)
    out = rig.read(0, inflated=False)
    b = out.bout
    assert b is not None
    assert (b.team, b.cuff, b.athlete, b.limb) == ("t1", "c1", "a-17", "left_leg")
    assert b.start_ms == round((T0 + 6) * 1000)
    assert b.duration_s == 4.0
    assert b.mean_pressure_mmhg == 135.0
    assert (b.min_pressure_mmhg, b.max_pressure_mmhg, b.target_mmhg) == (120.0, 150.0, 132.0)
    assert b.time_in_band_pct == 75.0  # 120, 130, 140 within 132 ± 15; 150 is not
    assert b.alerts == 2  # the 650: sensor_fault and over_pressure
    assert rig.read(0, inflated=False).bout is None


def test_bout_start_is_inferred_from_elapsed_across_a_restart() -> None:
    rig = Rig(leg_params(target_mmhg=None))
    first = rig.read(150, elapsed=300.0)
    rig.hold(150, 9)
    b = rig.read(0, inflated=False).bout
    assert first.bout is None
    assert b is not None
    assert b.start_ms == round((T0 + 1 - 300) * 1000)
    assert (b.duration_s, b.target_mmhg, b.time_in_band_pct) == (309.0, None, None)


# -- engine plumbing ------------------------------------------------------------------------------


def test_a_quiet_reading_returns_the_shared_empty_outcome() -> None:
    rig = Rig()
    assert rig.read(132) is NOTHING


def test_ulid_factory_is_monotonic_within_a_millisecond() -> None:
    new_id = ulid_factory()
    ids = [new_id(1_900_000_000_000) for _ in range(100)]
    assert len(set(ids)) == 100
    assert ids == sorted(ids)
    assert all(len(i) == 26 for i in ids)
    assert new_id(1_900_000_000_001) > ids[-1]


def test_injected_ids_and_forget() -> None:
    rig = Rig()
    engine = rig.engine = AlertEngine(clock=rig.clock, new_id=lambda ms: f"id-{ms}")
    out = rig.read(320)
    assert only(out.transitions).alert.id == f"id-{round((T0 + 1) * 1000)}"
    assert engine.open_alert("t1", "c1", OP) is not None
    engine.forget("t1", "c1")
    assert engine.open_alerts() == []
    assert engine.open_alert("t1", "c1", OP) is None
    assert engine.tick() == ()


# -- windows ---------------------------------------------------------------------------------------


def test_rolling_mean_spans_evicts_and_resets_on_gaps() -> None:
    m = RollingMean(5.0)
    for i in range(5):
        m.add(i * 1000, float(i))
        assert m.mean() is None
    m.add(5000, 5.0)
    assert m.mean() == 2.5
    assert len(m) == 6
    m.add(6000, 6.0)
    assert m.mean() == 3.5
    assert len(m) == 6  # 0 evicted
    m.add(11_001, 7.0)  # a gap of 5.001 s
    assert m.mean() is None
    assert len(m) == 1


def test_occlusion_window_clips_the_oldest_bout() -> None:
    w = OcclusionWindow(3600.0)
    w.start(0)
    w.end(600_000)
    w.start(1_000_000)
    assert w.occluded_ms(1_200_000, 1_200_000) == 800_000
    assert w.occluded_ms(3_900_000, 1_300_000) == 300_000 + 300_000
    assert w.starts_within(3_900_000) == 1
