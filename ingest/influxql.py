"""Talking InfluxQL to InfluxDB's `/query` endpoint (SPEC §6), for the analyst queries.

1.x answers it natively, 2.x/3.x through their v1 compatibility API (a `Token` header, the
bucket as the database). Every value a user types reaches a statement only through
`quote_ident` / `quote_literal`.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ingest.errors import QueryError

if TYPE_CHECKING:
    from core.config import Settings

__all__ = ["DEFAULT_TIMEOUT_S", "InfluxQLClient", "QueryError", "Series", "quote_ident",
           "quote_literal"]

DEFAULT_TIMEOUT_S = 30.0  # analyst queries scan weeks of points; the gateway's 10 s is too short


def quote_ident(name: str) -> str:
    """An InfluxQL identifier in double quotes, its `\\` and `"` escaped."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def quote_literal(value: str) -> str:
    """An InfluxQL string literal in single quotes, its `\\` and `'` escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


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
