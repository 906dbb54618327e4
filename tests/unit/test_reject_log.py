"""gateway/metrics.py RejectLog: every rejection counted; its lines bounded per cuff and in all."""

from __future__ import annotations

import logging

import pytest

from gateway.decode import RejectReason
from gateway.metrics import (
    REJECT_LOG_BUDGET,
    REJECT_LOG_DETAIL_MAX,
    REJECT_LOG_INTERVAL_S,
    REJECT_LOG_MAX_KEYS,
    Counters,
    RejectLog,
)

LOGGER = "cuffwatch.gateway"
UNKNOWN = RejectReason.UNKNOWN_CUFF
T0 = 1_800_000_000.0  # a wall-clock second; the tests pass the clock, nothing sleeps


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def rejected_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [m for m in lines(caplog) if m.startswith("rejected from ")]


def summaries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [m for m in lines(caplog) if m.startswith("rejections not logged")]


@pytest.fixture
def rejects(caplog: pytest.LogCaptureFixture) -> RejectLog:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    return RejectLog(Counters())


def flood(rejects: RejectLog, n: int, now_s: float, *, prefix: str = "fake",
          reason: RejectReason = UNKNOWN, step_s: float = 0.0) -> None:
    for i in range(n):
        cuff = f"{prefix}{i}"
        rejects.count(reason, "t1", cuff, f"cuff {cuff} is not in the roster", now_s + i * step_s)


def test_the_budget_bounds_lines_across_distinct_ids_but_not_counting(
    rejects: RejectLog, caplog: pytest.LogCaptureFixture,
) -> None:
    flood(rejects, 5_000, T0, step_s=0.001)  # 5,000 fake ids in 5 s
    assert len(rejected_lines(caplog)) == REJECT_LOG_BUDGET
    # one more line says the budget is spent; the summary waits for the interval's end
    assert len(lines(caplog)) == REJECT_LOG_BUDGET + 1
    assert "budget spent" in lines(caplog)[-1]
    assert rejects.counters.rejected == 5_000
    assert rejects.counters.rejected_by_reason[UNKNOWN] == 5_000


def test_one_summary_per_interval_says_how_many_from_how_many_ids_by_reason(
    rejects: RejectLog, caplog: pytest.LogCaptureFixture,
) -> None:
    flood(rejects, REJECT_LOG_BUDGET + 300, T0, step_s=0.01)
    flood(rejects, 200, T0 + 10, prefix="json", reason=RejectReason.INVALID_JSON)
    flood(rejects, 200, T0 + 11, prefix="json", reason=RejectReason.INVALID_JSON)  # same ids
    assert summaries(caplog) == []
    rejects.count(UNKNOWN, "t1", "late", "cuff late is not in the roster",
                  T0 + REJECT_LOG_INTERVAL_S)  # the first rejection of the next interval
    [summary] = summaries(caplog)
    assert ": 700, from 500 distinct ids;" in summary, summary
    assert summary.endswith("by reason: invalid_json 400, unknown_cuff 300"), summary
    assert f"{REJECT_LOG_BUDGET} lines per {REJECT_LOG_INTERVAL_S:.0f} s" in summary
    # and the new interval logs again
    assert rejected_lines(caplog)[-1].startswith("rejected from t1/late: unknown_cuff: ")
    assert rejects.counters.rejected == REJECT_LOG_BUDGET + 300 + 400 + 1


def test_flush_on_a_timer_logs_the_summary_once_the_interval_is_over(
    rejects: RejectLog, caplog: pytest.LogCaptureFixture,
) -> None:
    flood(rejects, REJECT_LOG_BUDGET + 5, T0)
    rejects.flush(T0 + REJECT_LOG_INTERVAL_S - 0.5)
    assert summaries(caplog) == []
    rejects.flush(T0 + REJECT_LOG_INTERVAL_S + 3)
    [summary] = summaries(caplog)
    assert "in the last 63 s: 5, from 5 distinct ids; by reason: unknown_cuff 5" in summary
    rejects.flush(T0 + 2 * REJECT_LOG_INTERVAL_S + 10)
    rejects.flush(T0 + 3 * REJECT_LOG_INTERVAL_S + 20)
    assert len(summaries(caplog)) == 1  # nothing held back since: nothing to say


def test_a_final_flush_summarises_the_interval_so_far(
    rejects: RejectLog, caplog: pytest.LogCaptureFixture,
) -> None:
    flood(rejects, REJECT_LOG_BUDGET + 7, T0)
    rejects.flush(T0 + 2, final=True)  # the gateway stopping
    [summary] = summaries(caplog)
    assert "in the last 2 s: 7, from 7 distinct ids; by reason: unknown_cuff 7" in summary
    rejects.flush(T0 + 3, final=True)
    assert len(summaries(caplog)) == 1


def test_under_the_budget_there_is_no_summary(
    rejects: RejectLog, caplog: pytest.LogCaptureFixture,
) -> None:
    flood(rejects, REJECT_LOG_BUDGET, T0)
    rejects.flush(T0 + 10 * REJECT_LOG_INTERVAL_S)
    assert len(lines(caplog)) == REJECT_LOG_BUDGET
    assert summaries(caplog) == []


def test_a_sustained_flood_logs_at_most_the_budget_plus_two_lines_per_interval(
    rejects: RejectLog, caplog: pytest.LogCaptureFixture,
) -> None:
    minutes = 5
    per_s = 200  # new fake ids every second
    for s in range(minutes * int(REJECT_LOG_INTERVAL_S)):
        flood(rejects, per_s, T0 + s, prefix=f"s{s}-")
    assert rejects.counters.rejected == minutes * int(REJECT_LOG_INTERVAL_S) * per_s
    assert len(rejected_lines(caplog)) == minutes * REJECT_LOG_BUDGET
    assert len(summaries(caplog)) == minutes - 1  # the last one is due with the next interval
    assert len(lines(caplog)) <= minutes * (REJECT_LOG_BUDGET + 2)


def test_the_per_cuff_limit_still_holds_under_the_budget(
    rejects: RejectLog, caplog: pytest.LogCaptureFixture,
) -> None:
    for i in range(10):
        rejects.count(RejectReason.INVALID_JSON, "t1", "c7", "not JSON", T0 + i)
    assert len(rejected_lines(caplog)) == 1
    rejects.count(RejectReason.INVALID_JSON, "t1", "c7", "not JSON", T0 + REJECT_LOG_INTERVAL_S)
    assert rejected_lines(caplog)[-1] == (
        "rejected from t1/c7: invalid_json: not JSON (+9 more since last logged)")
    assert rejects.counters.rejected == 11


def test_a_cuff_held_back_by_the_budget_is_logged_in_a_later_interval(
    rejects: RejectLog, caplog: pytest.LogCaptureFixture,
) -> None:
    flood(rejects, REJECT_LOG_BUDGET, T0)
    rejects.count(UNKNOWN, "t1", "held", "cuff held is not in the roster", T0 + 1)
    rejects.count(UNKNOWN, "t1", "held", "cuff held is not in the roster", T0 + 2)
    assert not any("t1/held" in m for m in rejected_lines(caplog))
    rejects.count(UNKNOWN, "t1", "held", "cuff held is not in the roster",
                  T0 + REJECT_LOG_INTERVAL_S + 1)
    assert rejected_lines(caplog)[-1] == (
        "rejected from t1/held: unknown_cuff: cuff held is not in the roster "
        "(+2 more since last logged)")


def test_memory_stays_bounded_under_a_flood_of_distinct_ids(
    rejects: RejectLog, caplog: pytest.LogCaptureFixture,
) -> None:
    n = 3 * REJECT_LOG_MAX_KEYS
    flood(rejects, n, T0)
    assert len(rejects._last) <= REJECT_LOG_MAX_KEYS
    assert len(rejects._held_ids) <= REJECT_LOG_MAX_KEYS
    rejects.flush(T0 + REJECT_LOG_INTERVAL_S)
    [summary] = summaries(caplog)
    held = n - REJECT_LOG_BUDGET
    assert f": {held}, from at least {REJECT_LOG_MAX_KEYS} distinct ids;" in summary, summary
    assert rejects.counters.rejected == n


def test_a_long_detail_is_cut_short(rejects: RejectLog, caplog: pytest.LogCaptureFixture) -> None:
    detail = "x" * 10_000
    rejects.count(RejectReason.INVALID_READING, "t1", "c7", detail, T0)
    [line] = rejected_lines(caplog)
    assert line.endswith(f"{'x' * REJECT_LOG_DETAIL_MAX}… (10000 chars)")
    assert len(line) < REJECT_LOG_DETAIL_MAX + 100


def test_a_clock_stepped_back_does_not_silence_logging(
    rejects: RejectLog, caplog: pytest.LogCaptureFixture,
) -> None:
    rejects.count(RejectReason.INVALID_JSON, "t1", "c7", "not JSON", T0)
    flood(rejects, REJECT_LOG_BUDGET, T0)  # the budget spent too
    rejects.count(RejectReason.INVALID_JSON, "t1", "c7", "not JSON", T0 - 3600)  # NTP step back
    assert rejected_lines(caplog)[-1] == "rejected from t1/c7: invalid_json: not JSON"
    assert len(rejected_lines(caplog)) == REJECT_LOG_BUDGET + 1
