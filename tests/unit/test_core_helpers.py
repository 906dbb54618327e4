"""core/seq.py and core/backoff.py: the one seq arithmetic and the one retry backoff."""

from __future__ import annotations

import itertools

import pytest

from core.backoff import backoff_delays, jittered, nominal_delay
from core.seq import SEQ_MODULUS, next_seq, seq_went_back


def test_seq_wraps_forward_at_2_32() -> None:
    assert next_seq(SEQ_MODULUS - 1) == 0
    assert next_seq(41) == 42
    assert not seq_went_back(0, SEQ_MODULUS - 1)  # the wrap is a step forward
    assert not seq_went_back(5, 5)


@pytest.mark.parametrize(("seq", "last", "back"), [
    (99, 100, True), (0, 100, True), (100, 99, False),
    ((1 << 31) + 100, 100, True),  # half the circle ahead reads as behind (RFC 1982)
    ((1 << 31) + 99, 100, False),
])
def test_seq_went_back_is_serial_number_arithmetic(seq: int, last: int, back: bool) -> None:
    assert seq_went_back(seq, last) is back


def test_backoff_doubles_to_its_cap_with_jitter_below_nominal() -> None:
    delays = list(itertools.islice(backoff_delays(0.5, 4.0, jitter=0.5), 200))
    nominal = [min(4.0, 0.5 * 2**i) for i in range(200)]
    assert all(n * 0.5 <= d <= n for d, n in zip(delays, nominal, strict=True))
    assert len({round(d, 6) for d in delays[10:]}) > 100  # jittered, not a constant
    assert list(itertools.islice(backoff_delays(1.0, 8.0, jitter=0.0), 5)) == [1, 2, 4, 8, 8]


def test_nominal_delay_doubles_per_attempt_and_never_overflows() -> None:
    assert [nominal_delay(n, 0.5, 30.0) for n in (1, 2, 3, 7, 8)] == [0.5, 1.0, 2.0, 30.0, 30.0]
    assert nominal_delay(10**9, 1.0, 60.0) == 60.0  # a huge attempt count: the cap, no error


def test_jittered_stays_within_its_band() -> None:
    draws = [jittered(10.0, 0.5) for _ in range(500)]
    assert all(5.0 <= d <= 10.0 for d in draws)
    assert max(draws) - min(draws) > 2.0
    assert jittered(10.0, 0.0) == 10.0
