"""Analyst queries (SPEC §6): bouts, telemetry and alerts of a team as rows, over InfluxQL.

The stored measurements and their columns, the time window (`--since`, `--from`, `--to`),
the three queries and the `cuffwatch query` command. Talking to InfluxDB is
`ingest.influxql`; the rows and their output formats are `ingest.query_output`. Names
are normalized the way the writer stores them (`ingest.lineproto.normalize_name`), so a
hostile name finds its rows.

The command tells an empty answer from a mistyped name: when nothing matched, a team (or
athlete) that is neither in the configuration nor stored in InfluxDB is refused with the
known ones (exit 2); a known one gets "no bouts for team T between … and …" on stderr
(exit 0). A table shows the latest `DEFAULT_TABLE_LIMIT` rows and says how many more
there are; CSV, JSON and Parquet carry every row.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Mapping
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
    "DEFAULT_TABLE_LIMIT",
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
    "stored_athletes",
    "stored_teams",
    "telemetry",
    "time_bounds",
    "write_rows",
]

Kind = Literal["bouts", "telemetry", "alerts"]
TimeArg = datetime | str | int

DEFAULT_SINCE = "7d"  # SPEC §6's example window: a training week
# A terminal table shows the latest this many rows (a week of one cuff's telemetry is
# 600,000): enough to read, and the line under it says how to get the rest.
DEFAULT_TABLE_LIMIT = 200
# Unknown-name messages list at most this many known names.
MAX_LISTED_NAMES = 20
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
    """A stored measurement (SPEC §4): its name, its columns in output order, and the field
    every one of its points has (what counting its rows counts)."""

    name: str
    columns: tuple[tuple[str, ColumnType], ...]
    required: str

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
        "pressure_mmhg",
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
        "duration_s",
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
        "state",
    ),
}

# Digits after the point a table shows per float column: the sensors' resolution (pressure
# 0.1 mmHg, times 0.1 s, percentages 0.1, battery whole percent, clock skew 1 ms). An
# alert's value and threshold are mmHg, seconds or percent, all shown to 0.1.
DECIMALS: dict[str, int] = {
    "pressure_mmhg": 1,
    "target_mmhg": 1,
    "mean_pressure_mmhg": 1,
    "min_pressure_mmhg": 1,
    "max_pressure_mmhg": 1,
    "elapsed_s": 1,
    "duration_s": 1,
    "time_in_band_pct": 1,
    "battery_pct": 0,
    "clock_skew_s": 3,
    "value": 1,
    "threshold": 1,
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


def _where(team: str, athlete: str | None, bounds: tuple[int, int | None]) -> str:
    """The WHERE condition of a team (or one athlete) over the window; values quoted."""
    where = [f"{quote_ident('team')} = {quote_literal(normalize_name(team))}"]
    if athlete is not None:
        where.append(f"{quote_ident('athlete')} = {quote_literal(normalize_name(athlete))}")
    where.append(f"time >= {bounds[0]}ms")
    if bounds[1] is not None:
        where.append(f"time < {bounds[1]}ms")
    return " AND ".join(where)


def _select(
    kind: Kind,
    team: str,
    athlete: str | None,
    bounds: tuple[int, int | None],
    limit: int | None = None,
) -> tuple[str, _Measurement]:
    """The SELECT of a query: every row oldest first, or the latest `limit` newest first."""
    m = MEASUREMENTS[kind]
    columns = ", ".join(quote_ident(name) for name in m.names if name != "time")
    statement = f"SELECT {columns} FROM {quote_ident(m.name)} WHERE {_where(team, athlete, bounds)}"  # noqa: S608 - every value above is quoted
    if limit is None:
        return statement + " ORDER BY time ASC", m
    return statement + f" ORDER BY time DESC LIMIT {int(limit)}", m


def _count(client: InfluxQLClient, m: _Measurement, where: str) -> int:
    """How many points of `m` match `where` (every point has its required field)."""
    statement = f"SELECT count({quote_ident(m.required)}) FROM {quote_ident(m.name)} WHERE {where}"  # noqa: S608 - the condition is built of quoted values
    return sum(int(v[1] or 0) for s in client.query(statement) for v in s.values)


def _typed(value: Any, kind: ColumnType) -> Any:
    """A JSON value as its column's Python type (InfluxDB's JSON writes 130.0 as 130)."""
    if value is None:
        return None
    if kind == "time":
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    if kind == "float":
        return float(value)
    return value


def _rows(series: list[Series], m: _Measurement, total: int | None = None) -> Rows:
    rows: list[dict[str, Any]] = []
    for s in series:
        for values in s.values:
            point = dict(zip(s.columns, values, strict=True))
            rows.append({n: _typed(point.get(n, s.tags.get(n)), k) for n, k in m.columns})
    rows.sort(key=lambda r: r["time"])
    decimals = {n: DECIMALS[n] for n, k in m.columns if k == "float" and n in DECIMALS}
    return Rows(
        rows, columns=m.names, types=[t for _, t in m.columns], decimals=decimals, total=total
    )


class MeasurementQuery:
    """A query of one stored measurement: its rows for a team (or one athlete), oldest first.

    `bouts`, `telemetry` and `alerts` are the three; call one as
    `bouts(client, team, athlete=None, *, since=None, start=None, end=None, limit=None)`.
    The window is `[start or now - since, end)` (`since` defaults to 7 d, `end` to open).
    With `limit`, only the latest `limit` rows come back (still oldest first), and the
    rows' `total` says how many matched.
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
        limit: int | None = None,
    ) -> Rows:
        """Run the query: rows oldest first (QueryError if InfluxDB fails it)."""
        if limit is not None and limit < 1:
            raise ValueError("limit must be at least 1 (None: every row)")
        bounds = time_bounds(since, start, end)
        statement, m = _select(self.kind, team, athlete, bounds, limit)
        series = client.query(statement)
        total = None
        if limit is not None and sum(len(s.values) for s in series) >= limit:
            total = _count(client, m, _where(team, athlete, bounds))
        return _rows(series, m, total)


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


def _stored_tag_values(client: InfluxQLClient, key: str, where: str = "") -> set[str]:
    """Every value of tag `key` in the analysts' three measurements (any time)."""
    sources = ", ".join(quote_ident(m.name) for m in MEASUREMENTS.values())
    statement = f"SHOW TAG VALUES FROM {sources} WITH KEY = {quote_ident(key)}"
    if where:
        statement += f" WHERE {where}"
    found: set[str] = set()
    for s in client.query(statement):
        column = s.columns.index("value")
        found.update(str(v[column]) for v in s.values)
    return found


def stored_teams(client: InfluxQLClient) -> set[str]:
    """Every team with bouts, telemetry or alerts stored in InfluxDB, at any time."""
    return _stored_tag_values(client, "team")


def stored_athletes(client: InfluxQLClient, team: str) -> set[str]:
    """Every athlete with bouts, telemetry or alerts of `team` stored, at any time."""
    condition = f"{quote_ident('team')} = {quote_literal(normalize_name(team))}"
    return _stored_tag_values(client, "athlete", condition)


def _configured_athletes(settings: Settings, team: str) -> dict[str, str]:
    """The team's athletes in the configuration (its athletes and its cuffs' defaults): id
    to name, the name empty when none is configured."""
    config = settings.teams.get(team)
    if config is None:
        return {}
    athletes = {a: config.athletes[a].name for a in config.athletes}
    for cuff in config.cuffs.values():
        if cuff.athlete is not None:
            athletes.setdefault(cuff.athlete, "")
    return athletes


def _unknown(what: str, given: str, known: Mapping[str, str], scope: str = "") -> str:
    """One line refusing `given`: a close match, then the known ids (with their names)."""
    line = f"unknown {what} {given!r}{scope}"
    # Close matches among the ids and the names (a name suggests its id).
    candidates = {k.lower(): k for k in known} | {n.lower(): k for k, n in known.items() if n}
    close = difflib.get_close_matches(given.lower(), list(candidates), n=1, cutoff=0.6)
    if close:
        line += f" (did you mean {candidates[close[0]]!r}?)"
    if not known:
        return line + f": no {what} is configured or stored"
    # one line whatever the names hold
    listed = [f"{k} ({' '.join(known[k].split())})" if known[k] else k for k in sorted(known)]
    more = len(listed) - MAX_LISTED_NAMES
    text = ", ".join(listed[:MAX_LISTED_NAMES]) + (f" and {more} more" if more > 0 else "")
    return line + f"; known {what}s: {text}"


def _check_names(
    client: InfluxQLClient, settings: Settings, team: str, athlete: str | None
) -> None:
    """Raise ValueError if the team, or the athlete in it, is neither configured nor stored.

    Storage counts: a team taken out of the configuration keeps its history, and an athlete
    assigned over MQTT need not be in the configuration.
    """
    configured_teams = {t: settings.teams[t].name for t in settings.teams}
    if team not in configured_teams:
        stored = stored_teams(client)
        if normalize_name(team) not in stored:
            known = dict.fromkeys(stored, "") | configured_teams
            raise ValueError(_unknown("team", team, known))
    if athlete is None:
        return
    configured = _configured_athletes(settings, team)
    if athlete in configured:
        return
    stored = stored_athletes(client, team)
    if normalize_name(athlete) not in stored:
        known = dict.fromkeys(stored, "") | configured
        raise ValueError(_unknown("athlete", athlete, known, f" in team {team}"))


def _moment(ms: int | None) -> str:
    """An epoch-ms window bound as RFC 3339 UTC; None (an open end) is now."""
    if ms is None:
        return "now"
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _no_data(kind: str, team: str, athlete: str | None, bounds: tuple[int, int | None]) -> str:
    """The line saying that a known team (or athlete) has nothing in the window."""
    who = f"team {team}" + (f", athlete {athlete}," if athlete else "")
    return f"no {kind} for {who} between {_moment(bounds[0])} and {_moment(bounds[1])}"


def _footer(rows: Rows) -> str:
    """The line under a bounded table: how many of how many, and how to get the rest."""
    if not rows.truncated:
        return ""
    return (
        f"showing the latest {len(rows):,} of {rows.total:,} rows; "
        "--limit N or --format csv for all"
    )


def _check_arguments(kind: str, fmt: str, out: Path | None, limit: int | None) -> None:
    """Raise ValueError with one clear line for a bad kind, format, limit or missing --out."""
    if kind not in _QUERIES:
        raise ValueError(f"unknown query {kind!r}: use bouts, telemetry or alerts")
    if fmt not in get_args(Format):
        raise ValueError(f"unknown format {fmt!r}: use table, csv, json or parquet")
    if fmt == "parquet" and out is None:
        raise ValueError("--format parquet needs --out FILE")
    if limit is not None and limit < 0:
        raise ValueError("--limit must be 0 (every row) or more")


def _row_limit(fmt: str, limit: int | None) -> int | None:
    """The rows to fetch: --limit N (0: all); by default a table's 200, every row otherwise."""
    if limit is None:
        return DEFAULT_TABLE_LIMIT if fmt == "table" else None
    return limit or None


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
    limit: int | None = None,
) -> int:
    """`cuffwatch query KIND --team T …`: the rows, or why there are none.

    Exit 0 with rows, and also when a known team (or athlete) has none in the window (stdout
    then holds an empty CSV or JSON document, or nothing for a table; stderr says "no … for
    team T between … and …"). Exit 2 on bad input, an unknown team or athlete included; 1
    if InfluxDB failed the query. `limit`: the latest N rows (0: all; default 200 for a
    table, all otherwise).
    """
    out = Path(out) if out is not None else None
    try:
        _check_arguments(kind, fmt, out, limit)
        bounds = time_bounds(since, start, end)
        client = InfluxQLClient.from_settings(settings)
        rows = _QUERIES[kind](
            client, team, athlete, start=bounds[0], end=bounds[1], limit=_row_limit(fmt, limit)
        )
        if not rows:
            _check_names(client, settings, team, athlete)
            print(f"query: {_no_data(kind, team, athlete, bounds)}", file=sys.stderr)
            if fmt == "table":
                return 0
        title = f"{kind} of team {team}" + (f", athlete {athlete}" if athlete else "")
        write_rows(rows, cast(Format, fmt), out, title=title, footer=_footer(rows))
    except ValueError as exc:
        print(f"query: {exc}", file=sys.stderr)
        return 2
    except (QueryError, OSError) as exc:
        print(f"query: {exc}", file=sys.stderr)
        return 1
    return 0
