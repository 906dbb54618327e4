"""Analyst queries (SPEC §6): bouts, telemetry and alerts of a team as rows, over InfluxQL.

`InfluxQLClient` speaks InfluxDB's `/query` endpoint, which 1.x answers and 2.x/3.x answer
through their v1 compatibility API (a `Token` header, the bucket as the database). Every
value a user types is escaped before it reaches InfluxQL; names are normalized the way the
writer stores them (`ingest.lineproto.normalize_name`), so a hostile name finds its rows.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, cast, get_args

from ingest.lineproto import ALERT, BOUT, TELEMETRY, normalize_name

if TYPE_CHECKING:
    # pandas ships no type information; pandas-stubs may or may not be installed.
    import pandas as pd  # type: ignore[import-untyped,unused-ignore]

    from core.config import Settings

__all__ = [
    "DEFAULT_SINCE",
    "Format",
    "InfluxQLClient",
    "Kind",
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
    "write_rows",
]

Kind = Literal["bouts", "telemetry", "alerts"]
Format = Literal["table", "csv", "json", "parquet"]
TimeArg = datetime | str | int

DEFAULT_SINCE = "7d"  # SPEC §6's example window: a training week
DEFAULT_TIMEOUT_S = 30.0  # analyst queries scan weeks of points; the gateway's 10 s is too short
_SINCE_RE = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d|w)\s*$")
_UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}

ColumnType = Literal["time", "tag", "float", "int", "bool", "string"]


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


class QueryError(Exception):
    """InfluxDB could not be reached, refused the request, or failed the statement."""


def quote_ident(name: str) -> str:
    """An InfluxQL identifier in double quotes, its `\\` and `"` escaped."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def quote_literal(value: str) -> str:
    """An InfluxQL string literal in single quotes, its `\\` and `'` escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


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


@dataclass(frozen=True, slots=True)
class Series:
    """One series of an InfluxQL result: its name, GROUP BY tags, columns and rows."""

    name: str
    tags: dict[str, str]
    columns: list[str]
    values: list[list[Any]]


@dataclass(frozen=True, slots=True, kw_only=True)
class InfluxQLClient:
    """A small synchronous client for InfluxQL over `/query` (1.x, or 2.x/3.x v1 API)."""

    url: str
    database: str
    username: str = ""
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    rp: str = ""
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def from_settings(cls, settings: Settings) -> InfluxQLClient:
        """The client for `[influx]`: v1 database and user, or v2 bucket and token."""
        influx = settings.influx
        if influx.api == "file":
            raise ValueError('[influx] api = "file" writes local files: there is nothing to query')
        if influx.api == "v1":
            return cls(
                url=influx.url,
                database=influx.database,
                username=influx.username,
                password=influx.secret_password(),
                rp=influx.retention_policy,
            )
        return cls(url=influx.url, database=influx.bucket, token=influx.secret_token())

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Token {self.token}"
        elif self.username:
            pair = f"{self.username}:{self.password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        return headers

    def query(self, influxql: str) -> list[Series]:
        """Run one statement with `epoch=ms`; raise QueryError on any failure."""
        params = {"q": influxql, "db": self.database, "epoch": "ms"}
        if self.rp:
            params["rp"] = self.rp
        url = self.url.rstrip("/") + "/query?" + urllib.parse.urlencode(params)
        request = urllib.request.Request(url, headers=self._headers(), method="GET")  # noqa: S310 - our configured InfluxDB URL
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace").strip()[:200]
            raise QueryError(f"InfluxDB answered {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise QueryError(f"cannot query InfluxDB at {self.url}: {exc}") from None
        out: list[Series] = []
        for result in body.get("results", []):
            if "error" in result:
                raise QueryError(f"InfluxQL failed: {result['error']}")
            for s in result.get("series", []):
                out.append(Series(s.get("name", ""), s.get("tags", {}), s["columns"], s["values"]))
        return out


class Rows(list[dict[str, Any]]):
    """Query results: one dict per point, columns in `columns` order, `time` a UTC datetime."""

    def __init__(
        self,
        rows: Iterable[dict[str, Any]] = (),
        *,
        columns: Sequence[str] = (),
        types: Sequence[ColumnType] = (),
    ) -> None:
        super().__init__(rows)
        self.columns = tuple(columns)
        self.types = tuple(types)

    def to_dataframe(self) -> pd.DataFrame:
        """The rows as a pandas DataFrame (needs pandas: `pip install cuffwatch[analyst]`)."""
        import pandas as pd  # type: ignore[import-untyped,unused-ignore]

        frame = pd.DataFrame.from_records(list(self), columns=list(self.columns))
        if "time" in frame.columns:
            frame["time"] = pd.to_datetime(frame["time"], utc=True)
        return frame


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


def _run(
    kind: Kind,
    client: InfluxQLClient,
    team: str,
    athlete: str | None,
    *,
    since: str | timedelta | None,
    start: TimeArg | None,
    end: TimeArg | None,
) -> Rows:
    statement, m = _select(kind, team, athlete, time_bounds(since, start, end))
    return _rows(client.query(statement), m)


def bouts(
    client: InfluxQLClient,
    team: str,
    athlete: str | None = None,
    *,
    since: str | timedelta | None = None,
    start: TimeArg | None = None,
    end: TimeArg | None = None,
) -> Rows:
    """Finished occlusion bouts of a team (or one athlete), oldest first; default last 7 d."""
    return _run("bouts", client, team, athlete, since=since, start=start, end=end)


def telemetry(
    client: InfluxQLClient,
    team: str,
    athlete: str | None = None,
    *,
    since: str | timedelta | None = None,
    start: TimeArg | None = None,
    end: TimeArg | None = None,
) -> Rows:
    """Accepted readings of a team (or one athlete), oldest first; default last 7 d."""
    return _run("telemetry", client, team, athlete, since=since, start=start, end=end)


def alerts(
    client: InfluxQLClient,
    team: str,
    athlete: str | None = None,
    *,
    since: str | timedelta | None = None,
    start: TimeArg | None = None,
    end: TimeArg | None = None,
) -> Rows:
    """Alert state changes of a team (or one athlete), oldest first; default last 7 d."""
    return _run("alerts", client, team, athlete, since=since, start=start, end=end)


# -- output ------------------------------------------------------------------------------


def _text(value: Any) -> str:
    """A cell as text: RFC 3339 UTC with ms for times, empty for missing, else str()."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _json_value(value: Any) -> Any:
    return _text(value) if isinstance(value, datetime) else value


def write_csv(rows: Rows, out: IO[str]) -> None:
    """CSV with a header row; times RFC 3339 UTC, missing values empty."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(rows.columns)
    writer.writerows([_text(row.get(c)) for c in rows.columns] for row in rows)


def write_json(rows: Rows, out: IO[str]) -> None:
    """A JSON array of objects, one per row, keys in column order; times RFC 3339 UTC."""
    out.write("[")
    for i, row in enumerate(rows):
        obj = {c: _json_value(row.get(c)) for c in rows.columns}
        out.write(("," if i else "") + "\n" + json.dumps(obj, ensure_ascii=False))
    out.write("\n]\n" if rows else "]\n")


def write_table(rows: Rows, out: IO[str], *, title: str = "") -> None:
    """A rich table for a terminal."""
    from rich.console import Console
    from rich.table import Table

    table = Table(*rows.columns, title=title or None)
    for row in rows:
        table.add_row(*(_text(row.get(c)) for c in rows.columns))
    Console(file=out, width=max(120, 16 * len(rows.columns)), soft_wrap=True).print(table)


def _arrow_type(kind: ColumnType) -> Any:
    import pyarrow as pa

    types: dict[ColumnType, Any] = {
        "time": pa.timestamp("ms", tz="UTC"),
        "tag": pa.string(),
        "string": pa.string(),
        "float": pa.float64(),
        "int": pa.int64(),
        "bool": pa.bool_(),
    }
    return types[kind]


def write_parquet(rows: Rows, path: Path) -> None:
    """A Parquet file with a typed schema (time as timestamp[ms, UTC])."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [pa.field(c, _arrow_type(t)) for c, t in zip(rows.columns, rows.types, strict=True)]
    )
    data = {c: [row.get(c) for row in rows] for c in rows.columns}
    pq.write_table(pa.Table.from_pydict(data, schema=schema), path)


def write_rows(rows: Rows, fmt: Format, out: Path | None, *, title: str = "") -> None:
    """Write rows as `fmt` to the file `out`, or to standard output when out is None."""
    if fmt == "parquet":
        if out is None:
            raise ValueError("--format parquet needs --out FILE")
        write_parquet(rows, out)
        return
    buffer = io.StringIO()
    if fmt == "csv":
        write_csv(rows, buffer)
    elif fmt == "json":
        write_json(rows, buffer)
    else:
        write_table(rows, buffer, title=title)
    if out is None:
        sys.stdout.write(buffer.getvalue())
    else:
        out.write_text(buffer.getvalue(), encoding="utf-8", newline="")


_QUERIES = {"bouts": bouts, "telemetry": telemetry, "alerts": alerts}


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
