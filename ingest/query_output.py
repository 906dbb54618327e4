"""Query results (`Rows`) and writing them out: a terminal table, CSV, JSON or Parquet.

The table is for reading: numbers are shown to their sensor's resolution (`Rows.decimals`),
and when the rows are a bounded part of a longer result (`Rows.total`) a line under the
table says so. CSV, JSON and Parquet are for tools: they carry the values as stored.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    # pandas ships no type information; pandas-stubs may or may not be installed.
    import pandas as pd  # type: ignore[import-untyped,unused-ignore]

__all__ = [
    "ColumnType",
    "Format",
    "Rows",
    "write_csv",
    "write_json",
    "write_parquet",
    "write_rows",
    "write_table",
]

Format = Literal["table", "csv", "json", "parquet"]
ColumnType = Literal["time", "tag", "float", "int", "bool", "string"]


class Rows(list[dict[str, Any]]):
    """Query results: one dict per point, columns in `columns` order, `time` a UTC datetime.

    `total` is how many rows the query matched: more than `len(rows)` when a limit kept
    only the latest. `decimals` gives, per float column, the digits a table shows (the
    sensor's resolution); the values themselves are never rounded.
    """

    def __init__(
        self,
        rows: Iterable[dict[str, Any]] = (),
        *,
        columns: Sequence[str] = (),
        types: Sequence[ColumnType] = (),
        decimals: Mapping[str, int] | None = None,
        total: int | None = None,
    ) -> None:
        super().__init__(rows)
        self.columns = tuple(columns)
        self.types = tuple(types)
        self.decimals = dict(decimals or {})
        self._total = total

    @property
    def total(self) -> int:
        """How many rows the query matched (these rows, unless a limit kept fewer)."""
        return max(len(self), self._total or 0)

    @property
    def truncated(self) -> bool:
        """Whether the query matched more rows than these."""
        return self.total > len(self)

    def to_dataframe(self) -> pd.DataFrame:
        """The rows as a pandas DataFrame (needs pandas: `pip install cuffwatch[analyst]`)."""
        import pandas as pd  # type: ignore[import-untyped,unused-ignore]

        frame = pd.DataFrame.from_records(list(self), columns=list(self.columns))
        if "time" in frame.columns:
            frame["time"] = pd.to_datetime(frame["time"], utc=True)
        return frame


def _text(value: Any, decimals: int | None = None) -> str:
    """A cell as text: RFC 3339 UTC with ms for times, empty for missing, else str().

    A float with `decimals` is shown with exactly that many digits after the point
    (142.70000000000005 at 1 decimal is 142.7); without, it keeps every digit it has.
    """
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and decimals is not None:
        text = f"{value:.{decimals}f}"
        return text.lstrip("-") if float(text) == 0 else text  # never "-0.0"
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


def write_table(rows: Rows, out: IO[str], *, title: str = "", footer: str = "") -> None:
    """A rich table for a terminal, numbers to their resolution; `footer` on a line below."""
    from rich.console import Console
    from rich.table import Table

    table = Table(*rows.columns, title=title or None)
    for row in rows:
        table.add_row(*(_text(row.get(c), rows.decimals.get(c)) for c in rows.columns))
    Console(file=out, width=max(120, 16 * len(rows.columns)), soft_wrap=True).print(table)
    if footer:
        out.write(footer + "\n")


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


def write_rows(
    rows: Rows, fmt: Format, out: Path | None, *, title: str = "", footer: str = ""
) -> None:
    """Write rows as `fmt` to the file `out`, or to standard output when out is None.

    `title` and `footer` are the table's (above and below it); the other formats have none.
    """
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
        write_table(rows, buffer, title=title, footer=footer)
    if out is None:
        sys.stdout.write(buffer.getvalue())
    else:
        out.write_text(buffer.getvalue(), encoding="utf-8", newline="")
