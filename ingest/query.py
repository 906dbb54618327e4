"""Analyst queries (SPEC §6): bouts, telemetry and alerts of a team as rows, over InfluxQL.

The stored measurements and their columns, the time window (`--since`, `--from`, `--to`),
the three queries and the `cuffwatch query` command. Talking to InfluxDB is
`ingest.influxql`; the rows and their output formats are `ingest.query_output`. Names
are normalized the way the writer stores them (`ingest.lineproto.normalize_name`), so a
hostile name finds its rows.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

from ingest.influxql import InfluxQLClient, QueryError, Series, quote_ident, quote_literal
from ingest.lineproto import ALERT, BOUT, TELEMETRY, normalize_name
from ingest.query_output import ColumnType, Format, Rows, write_rows

if TYPE_CHECKING:
    from core.config import Settings

__all__ = [
    "DEFAULT_SINCE",
    "Format",
    "InfluxQLClient",
    "Kind",
    "MeasurementQuery",
    "QueryError",
    "Rows",
    "alerts",
    "bouts",
    "parse_since",
    "parse_time",
    "query_command",
    "quote_ident",
    "quote_literal",
    "telemetry",
    "time_bounds",
    "write_rows",
]

Kind = Literal["bouts", "telemetry", "alerts"]
TimeArg = datetime | str | int

DEFAULT_SINCE = "7d"  # SPEC §6's example window: a training week
_SINCE_RE = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d|w)\s*$")
_UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}


@dataclass(frozen=True, slots=True)
class _Measurement:
    """A stored measurement (SPEC §4): its name and its columns in output order."""

    name: str
    columns: tuple[tuple[str, ColumnType], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.columns)


_TAGS: tuple[tuple[str, ColumnType], ...] = (
    ("team", "tag"),
    ("cuff", "tag"),
    ("athlete", "tag"),
)
MEASUREMENTS: dict[Kind, _Measurement] = {
    "telemetry": _Measurement(
        TELEMETRY,
        (
            ("time", "time"),
            *_TAGS,
            ("limb", "tag"),
            ("pressure_mmhg", "float"),
            ("elapsed_s", "float"),
            ("inflated", "bool"),
            ("target_mmhg", "float"),
            ("battery_pct", "float"),
            ("seq", "int"),
            ("clock_skew_s", "float"),
        ),
    ),
    "bouts": _Measurement(
        BOUT,
        (
            ("time", "time"),
            *_TAGS,
            ("limb", "tag"),
            ("duration_s", "float"),
            ("mean_pressure_mmhg", "float"),
            ("min_pressure_mmhg", "float"),
            ("max_pressure_mmhg", "float"),
            ("target_mmhg", "float"),
            ("time_in_band_pct", "float"),
            ("alerts", "int"),
        ),
    ),
    "alerts": _Measurement(
        ALERT,
        (
            ("time", "time"),
            *_TAGS,
            ("kind", "tag"),
            ("severity", "tag"),
            ("state", "string"),
            ("value", "float"),
            ("threshold", "float"),
            ("message", "string"),
            ("alert_id", "string"),
            ("acknowledged_by", "string"),
        ),
    ),
}


def parse_since(text: str | timedelta) -> timedelta:
    """`7d`, `24h`, `30m`, `90s`, `2w` (or a timedelta) as a positive timedelta."""
    if isinstance(text, timedelta):
        delta = text
    else:
        match = _SINCE_RE.match(text)
        if match is None:
            raise ValueError(f"--since {text!r}: use a number and a unit, e.g. 7d, 24h or 30m")
        delta = int(match.group(1)) * _UNITS[match.group(2)]
    if delta <= timedelta(0):
        raise ValueError("--since must be a positive duration")
    return delta


def parse_time(value: TimeArg) -> datetime:
    """RFC 3339 / ISO 8601 text (a date alone is midnight UTC), epoch ms, or a datetime."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, int):
        moment = datetime.fromtimestamp(value / 1000, tz=UTC)
    else:
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"{value!r}: not a date or RFC 3339 time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _epoch_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def time_bounds(
    since: str | timedelta | None,
    start: TimeArg | None,
    end: TimeArg | None,
    *,
    now: datetime | None = None,
) -> tuple[int, int | None]:
    """The query window in epoch ms: `[start or now - since, end)`; end None is open."""
    if since is not None and start is not None:
        raise ValueError("give either --since or --from, not both")
    now = now or datetime.now(UTC)
    first = parse_time(start) if start is not None else now - parse_since(since or DEFAULT_SINCE)
    last = parse_time(end) if end is not None else None
    if last is not None and last <= first:
        raise ValueError("--to must be later than --from")
    return _epoch_ms(first), (_epoch_ms(last) if last is not None else None)


def _select(
    kind: Kind, team: str, athlete: str | None, bounds: tuple[int, int | None]
) -> tuple[str, _Measurement]:
    m = MEASUREMENTS[kind]
    columns = ", ".join(quote_ident(name) for name in m.names if name != "time")
    where = [f"{quote_ident('team')} = {quote_literal(normalize_name(team))}"]
    if athlete is not None:
        where.append(f"{quote_ident('athlete')} = {quote_literal(normalize_name(athlete))}")
    where.append(f"time >= {bounds[0]}ms")
    if bounds[1] is not None:
        where.append(f"time < {bounds[1]}ms")
    statement = f"SELECT {columns} FROM {quote_ident(m.name)} WHERE {' AND '.join(where)}"  # noqa: S608 - every value above is quoted
    return statement + " ORDER BY time ASC", m


def _typed(value: Any, kind: ColumnType) -> Any:
    """A JSON value as its column's Python type (InfluxDB's JSON writes 130.0 as 130)."""
    if value is None:
        return None
    if kind == "time":
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    if kind == "float":
        return float(value)
    return value


def _rows(series: list[Series], m: _Measurement) -> Rows:
    rows: list[dict[str, Any]] = []
    for s in series:
        for values in s.values:
            point = dict(zip(s.columns, values, strict=True))
            rows.append({n: _typed(point.get(n, s.tags.get(n)), k) for n, k in m.columns})
    rows.sort(key=lambda r: r["time"])
    return Rows(rows, columns=m.names, types=[t for _, t in m.columns])


class MeasurementQuery:
    """A query of one stored measurement: its rows for a team (or one athlete), oldest first.

    `bouts`, `telemetry` and `alerts` are the three; call one as
    `bouts(client, team, athlete=None, *, since=None, start=None, end=None)`. The window
    is `[start or now - since, end)` (`since` defaults to 7 d, `end` to open).
    """

    def __init__(self, kind: Kind, doc: str) -> None:
        """The query of `kind`; `doc` is what help() shows for it."""
        self.kind = kind
        self.__doc__ = doc

    def __repr__(self) -> str:
        """Name the query."""
        return f"<ingest.query.{self.kind}>"

    def __call__(
        self,
        client: InfluxQLClient,
        team: str,
        athlete: str | None = None,
        *,
        since: str | timedelta | None = None,
        start: TimeArg | None = None,
        end: TimeArg | None = None,
    ) -> Rows:
        """Run the query: rows oldest first (QueryError if InfluxDB fails it)."""
        statement, m = _select(self.kind, team, athlete, time_bounds(since, start, end))
        return _rows(client.query(statement), m)


bouts = MeasurementQuery(
    "bouts", "Finished occlusion bouts of a team (or one athlete), oldest first; default last 7 d."
)
telemetry = MeasurementQuery(
    "telemetry", "Accepted readings of a team (or one athlete), oldest first; default last 7 d."
)
alerts = MeasurementQuery(
    "alerts", "Alert state changes of a team (or one athlete), oldest first; default last 7 d."
)
_QUERIES: dict[str, MeasurementQuery] = {q.kind: q for q in (bouts, telemetry, alerts)}


def _check_arguments(kind: str, fmt: str, out: Path | None) -> None:
    """Raise ValueError with one clear line for a bad kind, format or missing --out."""
    if kind not in _QUERIES:
        raise ValueError(f"unknown query {kind!r}: use bouts, telemetry or alerts")
    if fmt not in get_args(Format):
        raise ValueError(f"unknown format {fmt!r}: use table, csv, json or parquet")
    if fmt == "parquet" and out is None:
        raise ValueError("--format parquet needs --out FILE")


def query_command(  # noqa: PLR0917 - the CLI passes its options in this order
    settings: Settings,
    kind: str,
    team: str,
    athlete: str | None = None,
    since: str | None = None,
    start: str | None = None,
    end: str | None = None,
    fmt: str = "table",
    out: Path | str | None = None,
) -> int:
    """`cuffwatch query KIND --team T …`: 0 on success, 1 if the query failed, 2 on bad input."""
    out = Path(out) if out is not None else None
    try:
        _check_arguments(kind, fmt, out)
        client = InfluxQLClient.from_settings(settings)
        rows = _QUERIES[kind](client, team, athlete, since=since, start=start, end=end)
        title = f"{kind} of team {team}" + (f", athlete {athlete}" if athlete else "")
        write_rows(rows, cast(Format, fmt), out, title=title)
    except ValueError as exc:
        print(f"query: {exc}", file=sys.stderr)
        return 2
    except (QueryError, OSError) as exc:
        print(f"query: {exc}", file=sys.stderr)
        return 1
    return 0
