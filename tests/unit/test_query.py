"""Analyst queries (SPEC §6) without a server: --since and time parsing, InfluxQL quoting,
and the `query` command facing an unreachable InfluxDB.

Against a real InfluxDB 1.x: tests/integration/test_query_influxdb.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.config import load_settings
from ingest.query import (
    parse_since,
    parse_time,
    query_command,
    quote_ident,
    quote_literal,
    time_bounds,
)
from tests.support.servers import free_port

H0 = datetime(2025, 3, 3, tzinfo=UTC)  # a Monday
DAY = timedelta(days=1)


def ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime."""
    return round(moment.timestamp() * 1000)


# -- parsing and quoting ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", timedelta(days=7)),
        ("24h", timedelta(hours=24)),
        ("30m", timedelta(minutes=30)),
        ("90s", timedelta(seconds=90)),
        ("2w", timedelta(weeks=2)),
        (" 5 d ", timedelta(days=5)),
    ],
)
def test_parse_since(text: str, expected: timedelta) -> None:
    """A number and a unit."""
    assert parse_since(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "7x", "-1d", "0h", "1.5h"])
def test_parse_since_rejects(text: str) -> None:
    """Anything else is a ValueError naming the option."""
    with pytest.raises(ValueError, match="since"):
        parse_since(text)


def test_parse_time_and_bounds() -> None:
    """Dates are midnight UTC, naive times UTC; --since counts back from now."""
    assert parse_time("2025-03-03") == H0
    assert parse_time("2025-03-03T01:00:00+01:00") == H0
    assert parse_time(ms(H0)) == H0
    now = H0 + DAY
    assert time_bounds("24h", None, None, now=now) == (ms(H0), None)
    assert time_bounds(None, None, None, now=now) == (ms(now - 7 * DAY), None)
    assert time_bounds(None, "2025-03-03", "2025-03-04", now=now) == (ms(H0), ms(H0 + DAY))
    with pytest.raises(ValueError, match="either"):
        time_bounds("7d", "2025-03-03", None)
    with pytest.raises(ValueError, match="later"):
        time_bounds(None, "2025-03-04", "2025-03-03")
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_time("last tuesday")


def test_quoting() -> None:
    """Backslash first, then the quote; identifiers in double quotes."""
    assert quote_literal("o'b\\x") == "'o\\'b\\\\x'"
    assert quote_ident('we"ird') == '"we\\"ird"'


# -- the command, nothing listening ----------------------------------------------------------------


def test_query_command_unreachable_influxdb(capsys: pytest.CaptureFixture[str]) -> None:
    """Exit code 1 and the reason."""
    settings = load_settings(
        None, influx={"api": "v1", "url": f"http://127.0.0.1:{free_port()}", "database": "x"}
    )
    assert query_command(settings, "bouts", "t1") == 1
    assert "cannot query InfluxDB" in capsys.readouterr().err
    file_store = load_settings(None, influx={"api": "file"})
    assert query_command(file_store, "bouts", "t1") == 2
