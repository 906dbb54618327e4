"""The gateway's decision core, driven directly: (topic, payload, retain, time) → Actions.

No broker, no spool, no event loop: `MessageHandler` is synchronous and does no I/O, so
each rule of what a message asks for (publish, reject, stage, store, acknowledge when) is
checked here on its own. tests/test_durability.py and the e2e tests check the edge that
carries the actions out.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from alerts.engine import AlertEngine
from alerts.engine import Outcome as EngineOutcome
from alerts.model import AlertKind, AlertState, Change
from core.config import Settings, load_settings
from core.model import CuffPhase, Reading, Severity
from core.params import RuleParams
from gateway.decode import RejectReason
from gateway.handler import NOTHING_TO_DO, MessageHandler, Store
from gateway.metrics import Counters, RejectLog
from gateway.state import Fleet
from tests.support.alert_rig import FakeClock

T0 = 1_900_000_000.0  # gateway clock, seconds
TELEMETRY = "bfr/t1/cuffs/c1/telemetry"


def _settings() -> Settings:
    return load_settings(teams={"t1": {"cuffs": {"c1": {"athlete": "a1", "limb": "left_arm"},
                                                 "c2": {"athlete": "a2", "limb": "left_arm"}}}})


class _Rig:
    def __init__(self, engine_cls: type[AlertEngine] = AlertEngine) -> None:
        self.clock = FakeClock(T0)
        self.settings = _settings()
        self.counters = Counters()
        self.fleet = Fleet(self.settings)
        self.handler = MessageHandler(self.settings, fleet=self.fleet,
                                      engine=engine_cls(clock=self.clock),
                                      counters=self.counters, rejects=RejectLog(self.counters))

    def send(self, topic: str, payload: bytes | dict[str, Any] | list[dict[str, Any]],
             *, retain: bool = False) -> Any:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.handler.handle(topic, body, retain, self.clock.t)


def reading(seq: int, pressure: float, *, elapsed: float = 10.0, dt_ms: int = 0) -> dict[str, Any]:
    return {"ts": int(T0 * 1000) + seq * 100 + dt_ms, "seq": seq, "pressure_mmhg": pressure,
            "elapsed_s": elapsed}


def test_a_quiet_reading_is_staged_and_formatted_only_when_taken() -> None:
    rig = _Rig()
    actions = rig.send(TELEMETRY, reading(1, 120.0))
    assert (actions.store, actions.alerts, actions.rejection) == (Store.STAGED, (), None)
    assert rig.counters.accepted == 1
    record = rig.handler.take_staged()
    assert record is not None
    assert not record.duplicates
    [line] = record.lines
    assert line.startswith("cuff_telemetry,")
    assert " seq=1i," in line
    assert rig.handler.take_staged() is None  # nothing staged since
    state = rig.fleet.cuffs["c1"]
    assert (state.phase, state.last_pressure, state.accepted) == (CuffPhase.INFLATED, 120.0, 1)


def test_a_reading_over_the_ceiling_asks_for_a_critical_before_its_line_is_stored() -> None:
    rig = _Rig()
    actions = rig.send(TELEMETRY, [reading(1, 120.0), reading(2, 262.0)])
    [t] = actions.alerts
    assert (t.alert.kind, t.alert.severity, t.change) == (
        AlertKind.OVER_PRESSURE, Severity.CRITICAL, Change.RAISED)
    assert actions.store is Store.STAGED
    record = rig.handler.take_staged()
    assert record is not None
    assert [line.split(",")[0] for line in record.lines] == [
        "cuff_telemetry", "cuff_telemetry", "alert"]


def test_a_redelivery_is_dropped_and_marks_the_record_as_owing_its_originals() -> None:
    rig = _Rig()
    rig.send(TELEMETRY, reading(1, 120.0))
    assert rig.handler.take_staged() is not None
    again = rig.send(TELEMETRY, reading(1, 120.0))
    assert again.store is Store.STAGED  # acknowledged only once its original is durable
    record = rig.handler.take_staged()
    assert record is not None
    assert (record.lines, record.duplicates) == ([], True)
    assert (rig.counters.duplicates, rig.counters.accepted) == (1, 1)


def test_a_restarted_cuff_is_new_data_not_a_duplicate() -> None:
    rig = _Rig()
    rig.send(TELEMETRY, reading(0, 120.0))
    actions = rig.send(TELEMETRY, reading(0, 300.0, elapsed=1.0, dt_ms=5000))
    assert [t.alert.severity for t in actions.alerts
            if t.alert.kind is AlertKind.OVER_PRESSURE] == [Severity.CRITICAL]
    assert not [t for t in actions.alerts if t.alert.kind is AlertKind.SENSOR_FAULT]
    assert rig.counters.duplicates == 0


@pytest.mark.parametrize(("topic", "payload", "retain", "reason"), [
    (TELEMETRY, reading(1, 300.0), True, RejectReason.RETAINED),
    ("bfr/t1/cuffs/nobody/telemetry", reading(1, 120.0), False, RejectReason.UNKNOWN_CUFF),
    ("bfr/t9/cuffs/c9/telemetry", reading(1, 120.0), False, RejectReason.UNKNOWN_TEAM),
    ("bfr/t9/cuffs/c1/telemetry", reading(1, 120.0), False, RejectReason.WRONG_TEAM),
    (TELEMETRY, b'{"seq": -1}', False, RejectReason.INVALID_READING),
    ("bfr/t1/alerts/c1/over_pressure/ack", b"", True, RejectReason.RETAINED),
    ("bfr/t1/cuffs/c1/assignment", b'{"athlete": 7}', False, RejectReason.INVALID_ASSIGNMENT),
])
def test_bad_input_is_rejected_counted_and_acknowledged_at_once(
    topic: str, payload: Any, retain: bool, reason: RejectReason,
) -> None:
    rig = _Rig()
    actions = rig.send(topic, payload, retain=retain)
    assert actions.rejection is not None
    assert actions.rejection.reason is reason
    assert (actions.store, actions.alerts) == (Store.NOTHING, ())
    assert rig.counters.rejected_by_reason[reason] == rig.counters.rejected == 1
    assert rig.handler.take_staged() is None
    assert rig.counters.accepted == 0


def test_an_invalid_id_in_a_topic_is_counted_and_a_foreign_topic_ignored() -> None:
    rig = _Rig()
    assert rig.send("bfr/t1/cuffs/c 1/telemetry", reading(1, 1.0)) is NOTHING_TO_DO
    assert rig.counters.rejected_by_reason[RejectReason.BAD_TOPIC] == 1
    assert rig.send("bfr/t1/cuffs/c1/telemetry/extra", reading(1, 1.0)) is NOTHING_TO_DO
    assert rig.send("elsewhere/t1/cuffs/c1/telemetry", reading(1, 1.0)) is NOTHING_TO_DO
    assert (rig.counters.rejected, rig.counters.accepted) == (1, 0)


def test_an_ack_silences_and_is_stored_as_a_record_of_its_own() -> None:
    rig = _Rig()
    rig.send(TELEMETRY, reading(1, 262.0))
    rig.handler.take_staged()
    actions = rig.send("bfr/t1/alerts/c1/over_pressure/ack", {"by": "coach"})
    [t] = actions.alerts
    assert (t.change, t.alert.state, t.alert.acknowledged_by) == (
        Change.ACKNOWLEDGED, AlertState.ACKNOWLEDGED, "coach")
    assert actions.store is Store.LINES
    assert [line.split(",")[0] for line in actions.lines] == ["alert"]
    assert actions.answer is not None
    assert json.loads(actions.answer.to_json()) == {"ok": True, "alert": t.alert.to_dict()}
    none_open = rig.send("bfr/t1/alerts/c2/over_pressure/ack", b"")
    assert (none_open.alerts, none_open.store) == ((), Store.NOTHING)  # nothing to store
    assert none_open.answer is not None
    assert json.loads(none_open.answer.to_json()) == {
        "ok": False, "reason": "no_open_alert",
        "detail": "no open over_pressure alert on t1/c2"}


def test_offline_while_inflated_raises_cuff_offline_and_an_assignment_only_changes_state() -> None:
    rig = _Rig()
    rig.send(TELEMETRY, reading(1, 120.0))
    rig.handler.take_staged()
    actions = rig.send("bfr/t1/cuffs/c1/status", b"offline")
    assert [t.alert.kind for t in actions.alerts] == [AlertKind.CUFF_OFFLINE]
    assert actions.store is Store.LINES
    assert rig.fleet.cuffs["c1"].phase is CuffPhase.OFFLINE
    assigned = rig.send("bfr/t1/cuffs/c1/assignment", {"athlete": "a2", "limb": "right_leg"})
    assert (assigned.alerts, assigned.store, assigned.rejection) == ((), Store.NOTHING, None)
    assert assigned.answer is not None
    assert json.loads(assigned.answer.to_json()) == {
        "ok": True, "detail": "t1/c1: assigned to a2 right_leg"}
    assert (rig.fleet.cuffs["c1"].athlete, rig.fleet.cuffs["c1"].limb.value) == ("a2", "right_leg")
    unknown = rig.send("bfr/t1/cuffs/c1/assignment", {"athlete": "a7"})  # not in the roster
    assert unknown.rejection is not None
    assert unknown.rejection.reason is RejectReason.UNKNOWN_ATHLETE
    assert rig.fleet.cuffs["c1"].athlete == "a2"  # unchanged


class _BrokenEngine(AlertEngine):
    def on_reading(self, r: Reading, p: RuleParams) -> EngineOutcome:
        if r.seq >= 13:
            raise RuntimeError("a bug")
        return super().on_reading(r, p)


def test_a_bug_costs_its_message_not_what_was_staged_before_it() -> None:
    rig = _Rig(_BrokenEngine)
    rig.send(TELEMETRY, reading(1, 120.0))
    broken = rig.send(TELEMETRY, reading(13, 120.0))
    assert broken.store is Store.STAGED  # acknowledged with the record of what came before
    assert rig.counters.internal_errors == 1
    record = rig.handler.take_staged()
    assert record is not None
    assert len(record.lines) == 1
    assert rig.send(TELEMETRY, reading(14, 120.0)) is NOTHING_TO_DO  # nothing staged: ack now


def test_tick_marks_a_silent_inflated_cuff_stale() -> None:
    rig = _Rig()
    rig.send(TELEMETRY, reading(1, 120.0))
    stale_after = rig.fleet.cuffs["c1"].params(rig.settings, "a1",
                                               rig.fleet.cuffs["c1"].limb).stale_after_s

    def phase() -> CuffPhase:
        return rig.fleet.cuffs["c1"].phase

    rig.clock.t = T0 + stale_after - 0.1
    assert rig.handler.tick() == ()
    assert phase() is CuffPhase.INFLATED
    rig.clock.t = T0 + stale_after
    [offline] = rig.handler.tick()  # the same rule raises cuff_offline
    assert offline.alert.kind is AlertKind.CUFF_OFFLINE
    assert phase() is CuffPhase.STALE


# -- issue #17: what a device can create, and one point per accepted reading ------------------


def _stamps(lines: list[str]) -> list[int]:
    return [int(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("cuff_telemetry")]


def _tag(line: str, key: str) -> str:
    return line.split(" ", 1)[0].split(f",{key}=", 1)[1].split(",", 1)[0]


def test_an_override_naming_a_roster_athlete_is_stored_under_that_athlete() -> None:
    rig = _Rig()
    actions = rig.send(TELEMETRY, [reading(1, 120.0) | {"athlete": "a2"},
                                   reading(2, 121.0) | {"athlete": "a1", "limb": "right_leg"}])
    assert actions.rejection is None
    record = rig.handler.take_staged()
    assert record is not None
    assert [(_tag(x, "athlete"), _tag(x, "limb")) for x in record.lines] == [
        ("a2", "left_arm"), ("a1", "right_leg")]
    # an assignment cannot bring in an athlete the roster lacks, so neither can a reading
    refused = rig.send("bfr/t1/cuffs/c1/assignment", {"athlete": "guest-1"})
    assert refused.rejection is not None
    assert refused.rejection.reason is RejectReason.UNKNOWN_ATHLETE
    assert rig.send(TELEMETRY, reading(3, 120.0) | {"athlete": "guest-1"}).rejection is not None


def test_an_override_naming_an_unknown_athlete_rejects_the_whole_message_untouched() -> None:
    rig = _Rig()
    actions = rig.send(TELEMETRY, [reading(1, 300.0), reading(2, 120.0) | {"athlete": "zz"}])
    assert actions.rejection is not None
    assert actions.rejection.reason is RejectReason.UNKNOWN_ATHLETE
    assert (actions.rejection.team, actions.rejection.cuff) == ("t1", "c1")
    assert "'zz'" in actions.rejection.detail
    assert (actions.store, actions.alerts) == (Store.NOTHING, ())  # the 300 never reached a rule
    assert rig.handler.take_staged() is None
    assert (rig.counters.accepted, rig.counters.rejected) == (0, 1)
    assert rig.fleet.cuffs["c1"].phase is CuffPhase.UNKNOWN
    # the same seqs, without the stranger, are new data (nothing was remembered for dedup)
    assert rig.send(TELEMETRY, [reading(1, 120.0), reading(2, 120.0)]).rejection is None
    assert rig.counters.accepted == 2


def test_a_flood_of_invented_athletes_grows_neither_the_cache_nor_the_tag_values() -> None:
    """Issue #17 (2a): 100k distinct `athlete`s on one cuff gave +44 MB and 100k tag values."""
    rig = _Rig()
    for i in range(5_000):
        payload = reading(i, 120.0) | {"athlete": f"x{i}", "limb": ("left_leg", "right_arm")[i % 2]}
        assert rig.send(TELEMETRY, payload).rejection is not None
    assert rig.counters.rejected_by_reason[RejectReason.UNKNOWN_ATHLETE] == 5_000
    assert rig.handler.take_staged() is None
    assert len(rig.fleet.cuffs["c1"]._params) == 0


def test_readings_in_one_millisecond_are_distinct_points_in_seq_order() -> None:
    """Issue #17 (5): whole-second RFC 3339 times at 5 Hz stored 5 of 20 readings."""
    rig = _Rig()
    second = "2030-03-17T17:46:40Z"  # T0
    batch = [{"ts": second, "seq": 40 + i, "pressure_mmhg": 120.0 + i, "elapsed_s": 1.0 + i / 5}
             for i in range(5)]
    batch += [{"ts": int(T0 * 1000) + 1000, "seq": 45 + i, "pressure_mmhg": 125.0,
               "elapsed_s": 2.0} for i in range(3)]  # an array stamped alike, in epoch ms
    assert rig.send(TELEMETRY, batch).rejection is None
    record = rig.handler.take_staged()
    assert record is not None
    stamps = _stamps(record.lines)
    assert len(set(stamps)) == len(stamps) == 8
    assert stamps == sorted(stamps)
    ns = 1_000_000
    assert [s // ns for s in stamps] == [int(T0 * 1000)] * 5 + [int(T0 * 1000) + 1000] * 3


def test_clock_skewed_readings_are_stored_at_their_receive_time_each_a_point() -> None:
    """Issue #17 (6a): flagged readings crawled a ms apart past the receive time."""
    rig = _Rig()
    ahead = int(T0 * 1000) + 3_600_000  # an hour ahead: flagged
    batch = [{"ts": ahead + i, "seq": i, "pressure_mmhg": 120.0, "elapsed_s": 1.0}
             for i in range(5)]
    rig.send(TELEMETRY, batch)
    rig.clock.t = T0 + 0.0004  # a second message in the same ms
    rig.send(TELEMETRY, {"ts": ahead + 5, "seq": 5, "pressure_mmhg": 120.0, "elapsed_s": 1.0})
    record = rig.handler.take_staged()
    assert record is not None
    stamps = _stamps(record.lines)
    assert [s // 1_000_000 for s in stamps] == [int(T0 * 1000)] * 6  # all at the receive ms
    assert stamps == sorted(set(stamps))
    assert all("clock_skew_s=3600.0" in x for x in record.lines)


@pytest.mark.parametrize(("topic", "answered_on"), [
    ("bfr/t.1/cuffs/c1/telemetry", ("t1", "c1")),  # a roster cuff: its own team's topic
    ("bfr/$SYS/alerts/c2/over_pressure/ack", ("t1", "c2")),
    ("bfr/t.1/cuffs/c9/telemetry", None),  # no roster cuff: no team to answer under
    ("bfr/t1/cuffs/c 1/telemetry", None),  # an invalid cuff: no topic can name it
    ("bfr/t1/cuffs/c+/status", None),
])
def test_a_bad_topic_is_answered_on_rejected_only_under_valid_ids(
    topic: str, answered_on: tuple[str, str] | None,
) -> None:
    """Issue #17 (6b): bad topics were counted but never published on `rejected`."""
    rig = _Rig()
    actions = rig.send(topic, reading(1, 120.0))
    assert rig.counters.rejected_by_reason[RejectReason.BAD_TOPIC] == 1
    assert (actions.store, actions.alerts) == (Store.NOTHING, ())
    if answered_on is None:
        assert actions is NOTHING_TO_DO
        return
    assert actions.rejection is not None
    assert actions.rejection.reason is RejectReason.BAD_TOPIC
    assert (actions.rejection.team, actions.rejection.cuff) == answered_on
    echo = json.loads(actions.rejection.to_json())
    assert echo["code"] == "bad_topic"
    assert "invalid id" in echo["reason"]


def test_an_assignment_whose_target_every_bout_would_alarm_on_is_refused() -> None:
    """Config refuses such a prescription (core.roster_checks); over MQTT too: a target not
    below the hard ceiling, or a bfr target not below LOP, changes nothing."""
    rig = _Rig()
    for body, said in [
        ({"athlete": "a2", "target_mmhg": 260}, "not below the left_arm hard ceiling of 250"),
        ({"athlete": "a2", "lop_mmhg": 200, "target_pct_lop": 100}, "not below LOP 200"),
        ({"athlete": "a2", "limb": "left_leg", "target_mmhg": 300}, "hard ceiling of 300"),
    ]:
        refused = rig.send("bfr/t1/cuffs/c1/assignment", body)
        assert refused.rejection is not None, body
        assert refused.rejection.reason is RejectReason.INVALID_ASSIGNMENT
        assert said in refused.rejection.detail, refused.rejection.detail
        assert rig.fleet.cuffs["c1"].assignment is None
    # ipc may occlude fully: at LOP, below the ceiling, it stands
    fine = rig.send("bfr/t1/cuffs/c1/assignment",
                    {"athlete": "a2", "protocol": "ipc", "lop_mmhg": 200, "target_pct_lop": 100})
    assert fine.rejection is None
    assert rig.fleet.cuffs["c1"].assignment is not None
