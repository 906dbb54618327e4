"""Topic parsing and per-cuff state: roster checks, dedup, clock skew."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.config import Assignment, load_settings
from core.model import Limb
from core.topics import BadTopic, TopicKind, Topics
from gateway.decode import ReadingIn, Rejected, RejectReason
from gateway.state import DEDUP_SLOTS, PARAMS_CACHE_SIZE, Fleet
from ingest import lineproto


def test_parse_topics() -> None:
    t = Topics("bfr")
    p = t.parse("bfr/t1/cuffs/c7/telemetry")
    assert p is not None
    assert (p.kind, p.team, p.cuff) == (TopicKind.TELEMETRY, "t1", "c7")
    ack = t.parse("bfr/t1/alerts/c7/over_pressure/ack")
    assert ack is not None
    assert (ack.kind, ack.alert_kind) == (TopicKind.ACK, "over_pressure")
    alert = t.parse("bfr/t1/alerts/c7/over_time")
    assert alert is not None
    assert alert.kind is TopicKind.ALERT
    assert t.parse("bfr/t1/cuffs/c7/rejected") is None
    assert t.parse("bfr/_gateway/gw-1/status") is None
    assert t.parse("other/t1/cuffs/c7/telemetry") is None
    with pytest.raises(BadTopic):
        t.parse("bfr/t.1/cuffs/c7/telemetry")
    with pytest.raises(BadTopic):
        t.parse("bfr/t1/cuffs/" + "c" * 65 + "/telemetry")
    nested = Topics("clubs/north")
    assert nested.parse("clubs/north/t1/cuffs/c1/status") is not None


@pytest.mark.parametrize(("topic", "team", "cuff"), [
    ("bfr/t.1/cuffs/c7/telemetry", None, "c7"),
    ("bfr/t1/cuffs/c 7/telemetry", "t1", None),
    ("bfr/t+/cuffs/#/status", None, None),
    ("bfr//alerts/c7/over_pressure/ack", None, "c7"),
    ("bfr/t1/alerts/" + "c" * 65 + "/over_time", "t1", None),
])
def test_a_bad_topic_says_which_of_its_ids_are_valid(
    topic: str, team: str | None, cuff: str | None
) -> None:
    """Only a valid id may go into a topic built in answer (issue #17, 6b)."""
    with pytest.raises(BadTopic) as info:
        Topics("bfr").parse(topic)
    assert (info.value.team, info.value.cuff) == (team, cuff)
    assert "invalid id" in str(info.value)


def test_subscriptions_partition_by_team() -> None:
    t = Topics("bfr")
    assert "bfr/+/cuffs/+/telemetry" in t.subscriptions()
    subs = t.subscriptions(("t1", "t2"))
    assert "bfr/t1/cuffs/+/telemetry" in subs
    assert "bfr/t2/alerts/+/+/ack" in subs
    assert not any("/+/cuffs" in s for s in subs)


@pytest.fixture
def fleet() -> Fleet:
    s = load_settings(teams={
        "t1": {"athletes": {"a1": {}, "a5": {}},
               "cuffs": {"c1": {"athlete": "a1", "limb": "left_leg"}}},
        "t2": {"cuffs": {"c2": {"limb": "right_arm"}}},
    })
    return Fleet(s)


def test_roster_checks(fleet: Fleet) -> None:
    assert fleet.lookup("t1", "c1").athlete == "a1"
    with pytest.raises(Rejected) as info:
        fleet.lookup("t1", "c2")
    assert info.value.reason is RejectReason.WRONG_TEAM
    with pytest.raises(Rejected) as info:
        fleet.lookup("t1", "zz")
    assert info.value.reason is RejectReason.UNKNOWN_CUFF
    with pytest.raises(Rejected) as info:
        fleet.lookup("t9", "zz")
    assert info.value.reason is RejectReason.UNKNOWN_TEAM


def test_dedup_by_seq_and_device_time(fleet: Fleet) -> None:
    c = fleet.lookup("t1", "c1")
    assert not c.is_duplicate(5, 1000, 150.0, 3.0)
    assert c.is_duplicate(5, 1000, 150.0, 3.0)
    assert not c.is_duplicate(5, 9000, 150.0, 3.0)  # a rebooted cuff reusing seq 5 later
    assert not c.is_duplicate(5, 9000, 380.0, 3.0)  # same seq and time, other values: new
    for i in range(DEDUP_SLOTS):
        c.is_duplicate(100 + i, 2000 + i, 150.0, 3.0)
    assert not c.is_duplicate(5, 1000, 150.0, 3.0)  # the memory is bounded


@pytest.mark.parametrize(
    "restart_ts",
    [5_000, 1_000_000 + 99 * 100, 1_000_000 + 99 * 100 - 2_000, 1_000_000 + 100 * 100],
    ids=["clock-reset", "same-time-as-last", "2s-earlier", "running-clock"],
)
def test_a_restarted_cuff_is_never_a_duplicate(fleet: Fleet, restart_ts: int) -> None:
    """Issue: 100 readings, then seq 0 again at 380 mmHg was dropped as a redelivery."""
    c = fleet.lookup("t1", "c1")
    for seq in range(100):
        assert not c.is_duplicate(seq, 1_000_000 + seq * 100, 150.0, seq / 10)
    assert not c.is_duplicate(0, restart_ts, 380.0, 1.0)
    assert not c.is_duplicate(1, restart_ts + 100, 380.0, 1.1)
    assert c.is_duplicate(1, restart_ts + 100, 380.0, 1.1)  # its own redelivery still drops


def test_a_far_future_reading_does_not_poison_dedup(fleet: Fleet) -> None:
    c = fleet.lookup("t1", "c1")
    assert not c.is_duplicate(7, 253_402_300_799_999, 150.0, 1.0)
    for seq in range(3):  # then a normal restart
        assert not c.is_duplicate(seq, 1_000_000 + seq * 100, 150.0, 0.1 * seq)


def test_assignment_changes_identity_and_params(fleet: Fleet) -> None:
    c = fleet.lookup("t1", "c1")
    raw = ReadingIn(ts=1_000, seq=1, pressure_mmhg=100.0, elapsed_s=3.0)
    assert fleet.to_reading(c, raw, received_ms=1_000).athlete == "a1"
    c.set_assignment(Assignment(athlete="a9", limb=Limb.RIGHT_LEG, target_mmhg=140))
    r = fleet.to_reading(c, raw, received_ms=1_000)
    assert (r.athlete, r.limb) == ("a9", Limb.RIGHT_LEG)
    assert c.params(fleet.settings, r.athlete, r.limb).target_mmhg == 140.0
    override = ReadingIn(ts=1_000, seq=2, pressure_mmhg=1.0, elapsed_s=0.0, athlete="a5",
                         limb=Limb.LEFT_ARM)
    r = fleet.to_reading(c, override, received_ms=1_000)
    assert (r.athlete, r.limb) == ("a5", Limb.LEFT_ARM)


def test_an_athlete_override_must_name_a_known_athlete(fleet: Fleet) -> None:
    """Issue #17 (2a): every distinct `athlete` a device sent became a tag value and a cache
    entry, until InfluxDB refused new tag values, real athletes' included."""
    c = fleet.lookup("t1", "c1")
    c.check_athlete("a1")  # the cuff's roster owner
    c.check_athlete("a5")  # an athlete of the team's roster
    with pytest.raises(Rejected) as info:
        c.check_athlete("a9")
    assert info.value.reason is RejectReason.UNKNOWN_ATHLETE
    assert "'a9'" in info.value.detail
    c.set_assignment(Assignment(athlete="a5"))  # (the handler refuses others: test_handler)
    with pytest.raises(Rejected):
        c.check_athlete("a9")
    with pytest.raises(Rejected):  # another team's athlete is no athlete of this team
        fleet.lookup("t2", "c2").check_athlete("a1")


def test_the_params_cache_is_bounded(fleet: Fleet) -> None:
    c = fleet.lookup("t1", "c1")
    for i in range(3 * PARAMS_CACHE_SIZE):
        for limb in Limb:
            c.params(fleet.settings, f"x{i}", limb)
            assert len(c._params) <= PARAMS_CACHE_SIZE
    assert c.params(fleet.settings, "a1", Limb.LEFT_LEG) == fleet.settings.rule_params(
        "t1", "a1", Limb.LEFT_LEG)


def test_clock_skew_uses_receive_time(fleet: Fleet) -> None:
    c = fleet.lookup("t1", "c1")
    now = 1_800_000_000_000
    ahead = ReadingIn(ts=now + 301_000, seq=1, pressure_mmhg=1.0, elapsed_s=0.0)
    r = fleet.to_reading(c, ahead, received_ms=now)
    assert (r.ts_ms, r.clock_skew_s) == (now, 301.0)
    backlog = ReadingIn(ts=now - 3_000_000, seq=2, pressure_mmhg=1.0, elapsed_s=0.0)
    r = fleet.to_reading(c, backlog, received_ms=now)
    assert (r.ts_ms, r.clock_skew_s) == (now - 3_000_000, None)  # within max_backlog_s
    ancient = ReadingIn(ts=now - 3_700_000, seq=3, pressure_mmhg=1.0, elapsed_s=0.0)
    r = fleet.to_reading(c, ancient, received_ms=now)
    assert (r.ts_ms, r.clock_skew_s) == (now, -3700.0)  # the receive time itself (SPEC §2)
    # an array of skewed readings arriving together: all at the receive time (issue #17,
    # 6a: it used to crawl a ms per reading), distinct points by their seq
    readings = [fleet.to_reading(c, ReadingIn(ts=now + 10**7, seq=4 + i, pressure_mmhg=1.0,
                                              elapsed_s=0.0), received_ms=now)
                for i in range(5)]
    assert [r.ts_ms for r in readings] == [now] * 5
    stamps = [int(lineproto.telemetry_line(r).rsplit(" ", 1)[1]) for r in readings]
    assert stamps == [now * lineproto.NS_PER_MS + 4 + i for i in range(5)]


def test_dedup_wraps_at_2_32_and_accepts_out_of_order_new_readings(fleet: Fleet) -> None:
    c = fleet.lookup("t1", "c1")
    top = 2**32 - 2

    def dup(seq: int, ts: int) -> bool:
        return c.is_duplicate(seq, ts, 100.0, 0.0)

    assert not dup(top, 1_000)
    assert not dup(top + 1, 1_001)
    assert not dup(0, 1_002)  # wrapped
    assert not dup(1, 1_003)
    assert dup(top + 1, 1_001)  # a redelivery from before the wrap
    assert dup(0, 1_002)
    assert not dup(5, 1_007)  # a gap...
    assert not dup(3, 1_005)  # ...filled late: new, not a duplicate
    assert dup(3, 1_005)


@given(
    st.lists(
        st.tuples(st.integers(0, 300), st.integers(0, 2), st.sampled_from([150.0, 380.0])),
        max_size=200,
    )
)
def test_dedup_matches_a_reference_within_the_window(
    events: list[tuple[int, int, float]],
) -> None:
    """Readings of a cuff that restarts (boots 0-2 reuse seqs with another clock); a reading
    is a duplicate exactly when the same (seq, device time, values) was the last one seen
    with that seq."""
    s = load_settings(teams={"t1": {"cuffs": {"c1": {"limb": "left_arm"}}}})
    c = Fleet(s).lookup("t1", "c1")
    last: dict[int, tuple[int, float]] = {}
    for seq, boot, pressure in events:
        ts = 1_000_000 * boot + seq * 100  # each boot's clock gives a seq its own time
        assert c.is_duplicate(seq, ts, pressure, 1.0) == (last.get(seq) == (ts, pressure))
        last[seq] = (ts, pressure)


def test_parse_memo_is_bounded_and_keeps_rejecting_bad_names() -> None:
    from core import topics as topics_mod

    t = Topics("bfr")
    first = t.parse("bfr/t1/cuffs/c7/telemetry")
    assert t.parse("bfr/t1/cuffs/c7/telemetry") is first  # memoised: the same object
    for i in range(topics_mod.PARSE_CACHE_SIZE + 10):
        assert t.parse(f"bfr/t1/cuffs/c{i}/status") is not None
    assert len(t._parsed) <= topics_mod.PARSE_CACHE_SIZE
    for _ in range(2):  # a bad name raises every time; it is never remembered
        with pytest.raises(BadTopic):
            t.parse("bfr/t.1/cuffs/c7/telemetry")
    assert t.parse("bfr/t1/cuffs/c7/rejected") is None
    assert "bfr/t1/cuffs/c7/rejected" not in t._parsed
