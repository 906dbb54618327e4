"""aiohttp's lines about malformed requests: bounded, one line each (gateway.lowhttp)."""

from __future__ import annotations

import logging

from gateway.lowhttp import OneLineBudget


def _record(n: int) -> logging.LogRecord:
    try:
        raise ValueError(f"Bad status line 'GARBAGE {n}'")
    except ValueError as exc:
        return logging.LogRecord("cuffwatch.http", logging.ERROR, __file__, 1,
                                 "Error handling request from %s", ("10.0.0.9",),
                                 (type(exc), exc, exc.__traceback__))


def test_ten_a_minute_each_one_line_then_a_count_of_the_rest() -> None:
    now = [0.0]
    budget = OneLineBudget(per_minute=10, clock=lambda: now[0])
    passed = [r for r in (_record(n) for n in range(500)) if budget.filter(r)]
    assert len(passed) == 10
    first = passed[0]
    assert (first.levelname, first.exc_info, first.args) == ("WARNING", None, ())
    assert first.getMessage() == (
        "Error handling request from 10.0.0.9: ValueError(\"Bad status line 'GARBAGE 0'\")")
    assert budget.dropped == 490
    now[0] = 61.0  # a minute later: the next line says how many were left out
    later = _record(999)
    assert budget.filter(later)
    assert later.getMessage().endswith("(490 more such line(s) left out)")
    assert budget.dropped == 0
