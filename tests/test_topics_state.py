"""Topic parsing and per-cuff state: roster checks, dedup, clock skew."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import Assignment, load_settings
from gateway.decode import ReadingIn, Rejected, RejectReason
from gateway.model import Limb
from gateway.state import DEDUP_WINDOW, Fleet
from gateway.topics import BadTopic, TopicKind, Topics


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
        "t1": {"cuffs": {"c1": {"athlete": "a1", "limb": "left_leg"}}},
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
    assert not c.is_duplicate(5, 1000)
    assert c.is_duplicate(5, 1000)
    assert not c.is_duplicate(5, 9000)  # a rebooted cuff reusing seq 5 later is new data
    for i in range(DEDUP_WINDOW):
        c.is_duplicate(100 + i, 2000 + i)
    assert not c.is_duplicate(5, 1000)  # the window is bounded


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
    assert (r.ts_ms, r.clock_skew_s) == (now, -3700.0)
    # an array of skewed readings arriving together still gets distinct timestamps
    times = [fleet.to_reading(c, ReadingIn(ts=now + 10**7, seq=4 + i, pressure_mmhg=1.0,
                                           elapsed_s=0.0), received_ms=now).ts_ms
             for i in range(5)]
    assert times == [now + 1 + i for i in range(5)]


def test_dedup_wraps_at_2_32_and_accepts_out_of_order_new_readings(fleet: Fleet) -> None:
    c = fleet.lookup("t1", "c1")
    top = 2**32 - 2
    assert not c.is_duplicate(top, 1_000)
    assert not c.is_duplicate(top + 1, 1_001)
    assert not c.is_duplicate(0, 1_002)  # wrapped
    assert not c.is_duplicate(1, 1_003)
    assert c.is_duplicate(top + 1, 1_001)  # a redelivery from before the wrap
    assert c.is_duplicate(0, 1_002)
    assert not c.is_duplicate(5, 1_007)  # a gap...
    assert not c.is_duplicate(3, 1_005)  # ...filled late: new, not a duplicate
    assert c.is_duplicate(3, 1_005)


@given(st.lists(st.tuples(st.integers(0, 300), st.booleans()), max_size=200))
def test_dedup_matches_a_reference_within_the_window(events: list[tuple[int, bool]]) -> None:
    """Readings of a cuff whose device time rises with seq; some are redelivered later."""
    s = load_settings(teams={"t1": {"cuffs": {"c1": {"limb": "left_arm"}}}})
    c = Fleet(s).lookup("t1", "c1")
    seen: set[int] = set()
    for seq, _ in events:
        ts = 1_000_000 + seq * 100  # one device clock: a seq always has the same time
        assert c.is_duplicate(seq, ts) == (seq in seen)
        seen.add(seq)


def test_parse_memo_is_bounded_and_keeps_rejecting_bad_names() -> None:
    from gateway import topics as topics_mod

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
