"""Analyst queries (SPEC §6) without a server: --since and time parsing, InfluxQL quoting,
and the `query` command facing an unreachable InfluxDB.

Against a real InfluxDB 1.x: tests/integration/test_query_influxdb.py.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest

from core.config import load_settings
from ingest.query import (
    DEFAULT_TABLE_LIMIT,
    _footer,
    _row_limit,
    _unknown,
    parse_since,
    parse_time,
    query_command,
    quote_ident,
    quote_literal,
    time_bounds,
)
from ingest.query_output import Rows, write_csv, write_table
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


# -- issue 15: a table for reading, the other formats for tools ------------------------------------


def test_table_shows_each_column_to_its_resolution() -> None:
    """Floats with a resolution get exactly its digits (never -0.0); CSV keeps every digit."""
    rows = Rows(
        [{"pressure_mmhg": 142.70000000000005, "battery_pct": 86.6, "elapsed_s": -0.04,
          "seq": 7, "other": 0.1 + 0.2}],
        columns=("pressure_mmhg", "battery_pct", "elapsed_s", "seq", "other"),
        types=("float", "float", "float", "int", "float"),
        decimals={"pressure_mmhg": 1, "battery_pct": 0, "elapsed_s": 1},
    )
    table = io.StringIO()
    write_table(rows, table, footer="the footer")
    cells = [c.strip() for c in table.getvalue().splitlines()[3].split("│")[1:-1]]
    assert cells == ["142.7", "87", "0.0", "7", "0.30000000000000004"]
    assert table.getvalue().endswith("\nthe footer\n")
    text = io.StringIO()
    write_csv(rows, text)
    assert text.getvalue().splitlines()[1] == "142.70000000000005,86.6,-0.04,7,0.30000000000000004"


def test_rows_total_and_the_default_limits() -> None:
    """total: the rows matched (at least the rows held); a table 200 by default, others all."""
    rows = Rows([{"a": 1}] * 3, columns=("a",), types=("int",), total=1700)
    assert (rows.total, rows.truncated) == (1700, True)
    assert Rows([{"a": 1}], columns=("a",), types=("int",)).truncated is False
    assert _row_limit("table", None) == DEFAULT_TABLE_LIMIT == 200
    assert _row_limit("csv", None) is None
    assert (_row_limit("table", 0), _row_limit("json", 5)) == (None, 5)
    assert _footer(Rows([{"a": 1}] * 200, total=1700)) == (
        "showing the latest 200 of 1,700 rows; --limit N or --format csv for all"
    )


def test_unknown_names_suggest_and_list_what_is_known() -> None:
    """A close id or name, then the known ids with their names; a long list is cut short."""
    assert _unknown("team", "senoirs", {"seniors": "Seniors", "t1": ""}) == (
        "unknown team 'senoirs' (did you mean 'seniors'?); known teams: seniors (Seniors), t1"
    )
    assert _unknown("athlete", "jo exampel", {"a-17": "Jo Example"}, " in team t1") == (
        "unknown athlete 'jo exampel' in team t1 (did you mean 'a-17'?); "
        "known athletes: a-17 (Jo Example)"
    )
    assert _unknown("team", "x", {}) == "unknown team 'x': no team is configured or stored"
    many = {f"t{n:02}": "" for n in range(25)}
    assert _unknown("team", "zzz", many).endswith("t19 and 5 more")
