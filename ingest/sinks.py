"""Where batches of line protocol go: InfluxDB 1.x (v1 API), 2.x/3.x (v2 API), or local files.

Every sink takes a whole batch (newline-terminated lines, timestamps in ns:
`lineproto.PRECISION`) and either stores all of it or raises one of our errors; library
errors are translated here, at the edge, and the class (`ingest.errors`, importable from
here too) decides the pipeline's policy:

- `TransientSinkError` — timeouts, refused connections, 5xx, 429: retry with backoff;
- `PermanentSinkError` — 401/403 (credentials), 404 (no such database/bucket): nothing
  changes until someone acts, so retry slowly and loudly;
- `RejectedBatchError` (a `PermanentSinkError`) — 400/413/422: the server refused the data
  itself; InfluxDB stores the good lines of a partial write, so retrying cannot help.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, Unpack

import aiohttp

from ingest.errors import PermanentSinkError, RejectedBatchError, SinkError, TransientSinkError
from ingest.lineproto import PRECISION

if TYPE_CHECKING:  # ingest imports only the model modules at run time (docs/architecture.md)
    from core.config import InfluxSettings

__all__ = [
    "FileSink",
    "HttpOptions",
    "InfluxV1Sink",
    "InfluxV2Sink",
    "PermanentSinkError",
    "RejectedBatchError",
    "Sink",
    "SinkError",
    "TransientSinkError",
    "error_for_status",
    "make_sink",
]

# Bodies above this are gzipped in a worker thread: compressing ~1 MiB takes milliseconds,
# too long to hold the event loop that answers the alert path.
GZIP_IN_THREAD_BYTES = 64 << 10
# Levels beyond 1 shrink line protocol little more and cost several times the CPU.
GZIP_LEVEL = 1
# A write's time limit, connect to answer, unless `[influx] timeout_s` says otherwise.
DEFAULT_TIMEOUT_S = 10.0
# One batch is in flight at a time; a spare connection covers a reconnect while one closes.
MAX_CONNECTIONS = 2
# The server's error text kept in our exceptions and logs: enough to name the bad line.
ERROR_TEXT_CHARS = 1000
# Retry-After can ask for anything; our backoff cap applies anyway, this guards parsing.
MAX_RETRY_AFTER_S = 3600.0

_DROPPED = re.compile(r"dropped=(\d+)")
_REJECTED_STATUSES = frozenset({400, 413, 422})  # bad line, body too large, outside retention
_TRANSIENT_STATUSES = frozenset({408, 425, 429})  # plus every 5xx


class Sink(Protocol):
    """Stores whole batches of line protocol (ms timestamps)."""

    async def write(self, body: bytes, lines: int) -> None:
        """Store `body` (`lines` newline-terminated lines) or raise a SinkError."""
        ...

    async def close(self) -> None:
        """Release connections; the sink is not used afterwards."""
        ...


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (only the delta-seconds form; a date is ignored)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def error_for_status(
    status: int, text: str, lines: int, retry_after: str | None = None, *, what: str = "write"
) -> SinkError:
    """The error a non-2xx answer to a write means (pure: the policy lives in the class)."""
    detail = " ".join(text.split())[:ERROR_TEXT_CHARS]
    message = f"{what} answered HTTP {status}: {detail}"
    if status in _REJECTED_STATUSES:
        # InfluxDB counts points it dropped (type conflicts, retention) as `dropped=N` and
        # names each unparsable line separately; with neither, count the whole batch
        match = _DROPPED.search(text)
        rejected = (int(match.group(1)) if match else 0) + text.count("unable to parse")
        rejected = rejected or lines
        return RejectedBatchError(message, status=status, rejected_lines=min(rejected, lines))
    if status >= 500 or status in _TRANSIENT_STATUSES:
        return TransientSinkError(message, status=status, retry_after_s=_retry_after(retry_after))
    return PermanentSinkError(message, status=status)


class HttpOptions(TypedDict, total=False):
    """How an InfluxDB sink talks HTTP: keywords both take (`make_sink` passes `[influx]`'s)."""

    timeout_s: float  # a whole write, connect to answer (default DEFAULT_TIMEOUT_S)
    gzip: bool  # compress request bodies (default off)
    ca_file: str | None  # a CA bundle to check an https server against (default: the system's)
    verify_ssl: bool  # check an https server's certificate at all (default on)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Http:
    """HttpOptions with the defaults filled in."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    gzip: bool = False
    ca_file: str | None = None
    verify_ssl: bool = True


def _ssl_option(url: str, ca_file: str | None, verify: bool) -> ssl.SSLContext | bool:
    """aiohttp's `ssl=` for a URL: default checks, our CA file, or no verification."""
    if not url.startswith("https://"):
        return True
    if not verify:
        return False
    return ssl.create_default_context(cafile=ca_file)


async def _maybe_gzip(body: bytes) -> bytes:
    if len(body) >= GZIP_IN_THREAD_BYTES:
        return await asyncio.to_thread(gzip.compress, body, GZIP_LEVEL)
    return gzip.compress(body, GZIP_LEVEL)


class InfluxV1Sink:
    """InfluxDB 1.x: POST /write?db=&rp=&precision=ns, basic auth when a username is given."""

    def __init__(
        self,
        url: str,
        database: str,
        *,
        retention_policy: str = "",
        username: str = "",
        password: str | None = None,
        **http: Unpack[HttpOptions],
    ) -> None:
        """Configure; the HTTP session opens on the first write (it needs the running loop)."""
        options = _Http(**http)
        self.url = url.rstrip("/")
        self.database = database
        self._params = {"db": database, "precision": PRECISION}
        if retention_policy:
            self._params["rp"] = retention_policy
        self._auth = aiohttp.BasicAuth(username, password or "") if username else None
        self._timeout = aiohttp.ClientTimeout(total=options.timeout_s)
        self._gzip = options.gzip
        self._ssl = _ssl_option(self.url, options.ca_file, options.verify_ssl)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(ssl=self._ssl, limit=MAX_CONNECTIONS)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, auth=self._auth
        )
        return self._session

    async def write(self, body: bytes, lines: int) -> None:
        """Store the batch in the database; raise a SinkError otherwise."""
        session = self._session or self._open()
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        data = body
        if self._gzip:
            data = await _maybe_gzip(body)
            headers["Content-Encoding"] = "gzip"
        try:
            async with session.post(
                f"{self.url}/write", params=self._params, data=data, headers=headers
            ) as response:
                if 200 <= response.status < 300:
                    return
                text = await response.text(errors="replace")
                status, retry_after = response.status, response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientSinkError(f"write to {self.url} failed: {exc!r}") from exc
        raise error_for_status(status, text, lines, retry_after, what=f"{self.url}/write")

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


class InfluxV2Sink:
    """InfluxDB 2.x/3.x through influxdb-client's async write API (token auth)."""

    def __init__(
        self,
        url: str,
        org: str,
        bucket: str,
        token: str | None,
        **http: Unpack[HttpOptions],
    ) -> None:
        """Configure; the client opens on the first write (it needs the running loop)."""
        self.url = url.rstrip("/")
        self.org = org
        self.bucket = bucket
        self._token = token
        self._http = _Http(**http)
        self._client: Any = None  # InfluxDBClientAsync, imported on first use
        self._write_api: Any = None

    def _open(self) -> Any:
        # imported here: influxdb-client costs ~0.25 s of start-up, and only v2 needs it
        from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

        http = self._http
        kwargs: dict[str, Any] = {"verify_ssl": http.verify_ssl}
        if http.ca_file:
            kwargs["ssl_ca_cert"] = http.ca_file
        self._client = InfluxDBClientAsync(
            url=self.url,
            token=self._token or "",  # empty: no Authorization header
            org=self.org,
            timeout=int(http.timeout_s * 1000),
            enable_gzip=http.gzip,
            **kwargs,
        )
        self._write_api = self._client.write_api()
        return self._write_api

    async def write(self, body: bytes, lines: int) -> None:
        """Store the batch in the bucket; raise a SinkError otherwise."""
        from influxdb_client.client.exceptions import InfluxDBError
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        write_api = self._write_api or self._open()
        try:
            await write_api.write(
                bucket=self.bucket, org=self.org, record=body,
                write_precision=WritePrecision.NS,  # lineproto.PRECISION (a unit test holds it)
            )
        except ApiException as exc:
            status = int(exc.status or 0)
            text = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else str(
                exc.body or exc.reason or ""
            )
            headers: Any = exc.headers or {}
            if status == 0:
                raise TransientSinkError(f"write to {self.url} failed: {text}") from exc
            raise error_for_status(
                status, text, lines, headers.get("Retry-After"), what=f"{self.url}/api/v2/write"
            ) from exc
        except (aiohttp.ClientError, TimeoutError, InfluxDBError) as exc:
            raise TransientSinkError(f"write to {self.url} failed: {exc!r}") from exc

    async def close(self) -> None:
        """Close the client and its HTTP session."""
        if self._client is not None:
            client, self._client, self._write_api = self._client, None, None
            await client.close()


FILE_PATTERN = "cuffwatch-%Y%m%d-%H.lp"
# How an earlier gateway's files, whose timestamps are in ms, begin.
LEGACY_MS_HEADER = b"# cuffwatch line protocol (SPEC \xc2\xa74), timestamps in ms."


class FileSink:
    """Line protocol appended to hourly files `cuffwatch-YYYYMMDD-HH.lp` (UTC), fsynced.

    Each file starts with a header that `influx -import -path=F -precision=ns` (1.x)
    needs; `influx write --precision ns -f F` (2.x) reads it as comments. An hour's file
    begun by an earlier gateway, in ms (`LEGACY_MS_HEADER`), is left as it is: that hour's
    later lines go to `cuffwatch-YYYYMMDD-HH-ns.lp` beside it.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        database: str = "bfr",
        retention_policy: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Write into `directory` (created if missing); the header names `database`."""
        self.directory = Path(directory)
        self.database = database
        self.retention_policy = retention_policy
        self._clock = clock
        self._target: tuple[Path, Path] | None = None  # an hour's file -> where its lines go

    def header(self) -> bytes:
        """The comment block a new file starts with."""
        lines = [
            f"# cuffwatch line protocol (SPEC §4), timestamps in {PRECISION}. Import with",
            f"#   InfluxDB 1.x: influx -import -path=FILE -precision={PRECISION}",
            f"#   InfluxDB 2.x: influx write --bucket {self.database} --precision {PRECISION}"
            " --file FILE",
            "# DML",
            f"# CONTEXT-DATABASE: {self.database}",
        ]
        if self.retention_policy:
            lines.append(f"# CONTEXT-RETENTION-POLICY: {self.retention_policy}")
        return ("\n".join(lines) + "\n").encode()

    def path_for(self, epoch_s: float) -> Path:
        """The file a batch written at `epoch_s` goes to."""
        return self.directory / datetime.fromtimestamp(epoch_s, tz=UTC).strftime(FILE_PATTERN)

    def _file_for(self, path: Path) -> Path:
        """`path`, or its `-ns` sibling if an earlier gateway began it with ms timestamps."""
        known = self._target
        if known is not None and known[0] == path:
            return known[1]
        target = path
        try:
            with path.open("rb") as f:
                if f.read(len(LEGACY_MS_HEADER)) == LEGACY_MS_HEADER:
                    target = path.with_name(f"{path.stem}-ns{path.suffix}")
        except FileNotFoundError:
            pass
        self._target = (path, target)
        return target

    def _append(self, body: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._file_for(self.path_for(self._clock()))
        if body and not body.endswith(b"\n"):
            body += b"\n"
        with path.open("ab") as f:
            created = f.tell() == 0
            if created:
                f.write(self.header())
            f.write(body)
            f.flush()
            os.fdatasync(f.fileno())
        if created:  # the new file's name must survive a power loss too
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    async def write(self, body: bytes, lines: int) -> None:
        """Append the batch to the current hour's file; a disk error is transient."""
        try:
            await asyncio.to_thread(self._append, body)
        except OSError as exc:
            raise TransientSinkError(f"writing to {self.directory} failed: {exc}") from exc

    async def close(self) -> None:
        """Nothing to release: every write opens and closes its file."""


def make_sink(settings: InfluxSettings) -> Sink:
    """The sink `[influx]` describes (SPEC §7: api = v2 | v1 | file)."""
    http = HttpOptions(
        timeout_s=settings.timeout_s,
        gzip=settings.gzip,
        ca_file=settings.ca_file,
        verify_ssl=settings.verify_ssl,
    )
    if settings.api == "v1":
        return InfluxV1Sink(
            settings.url,
            settings.database,
            retention_policy=settings.retention_policy,
            username=settings.username,
            password=settings.secret_password(),
            **http,
        )
    if settings.api == "v2":
        return InfluxV2Sink(
            settings.url, settings.org, settings.bucket, settings.secret_token(), **http
        )
    return FileSink(
        settings.file_dir, database=settings.database, retention_policy=settings.retention_policy
    )
