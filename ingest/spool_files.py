"""The spool's files: segments, the written mark, the directory lock; recovery and reading.

Layout: a directory of append-only segment files `<base>.seg`, where `<base>` (20 digits)
is the global position of the segment's first byte, plus `written.mark` (the position up
to which everything is in InfluxDB) and a `LOCK` file held with flock while open.

`recover()` runs when a spool opens: every segment is scanned, a torn or corrupt tail
(short header, bad magic, impossible length, bad CRC) is counted and cut off, so appends
continue cleanly after any crash, and fully written segments are deleted. `read_records()`
reads records back from a snapshot of the segments. Both stream the files and keep only a
few numbers per segment, so memory is bounded whatever the backlog. The writer, which
owns the live segments, is `ingest.spool.Spool`.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ingest.errors import CorruptRecordError, SpoolError
from ingest.spool_record import HEADER_BYTES, read_header, read_payload, upgrade_payload

__all__ = [
    "DISK_FULL_ERRNOS",
    "LOCK_FILE",
    "MARK_FILE",
    "SEGMENT_SUFFIX",
    "Recovery",
    "Segment",
    "lock_directory",
    "read_records",
    "recover",
    "segment_name",
    "write_mark",
]

log = logging.getLogger("ingest.spool")  # one logger for the spool, whichever module speaks

SEGMENT_SUFFIX = ".seg"
MARK_FILE = "written.mark"
LOCK_FILE = "LOCK"
_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")
_MARK_FORMAT = "cuffwatch-spool-mark 1 {position} {ordinal}\n"
_MARK_PARSE = re.compile(r"^cuffwatch-spool-mark 1 (\d+) (\d+)\n?$")
# How a filesystem says "no room" (quota, or a file-size limit: RLIMIT_FSIZE, the
# filesystem's largest file): the spool holds its records and tries again (`DiskFull`).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@dataclass(slots=True)
class Segment:
    """One segment file: where it starts, how many good bytes and records it holds."""

    base: int
    path: Path
    size: int = 0
    records: int = 0

    @property
    def end(self) -> int:
        return self.base + self.size


def segment_name(base: int) -> str:
    """The file name of the segment whose first byte is at position `base`."""
    return f"{base:020d}{SEGMENT_SUFFIX}"


def lock_directory(directory: Path) -> int:
    """Take the spool directory's LOCK (flock) and return its descriptor; SpoolError if taken."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise SpoolError(f"spool {directory} is in use by another process") from exc
    return fd


# -- the written mark ---------------------------------------------------------------------


def read_mark(directory: Path) -> tuple[int, int] | None:
    """The stored (position, ordinal) mark, or None if missing or unreadable."""
    try:
        text = (directory / MARK_FILE).read_text("ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("spool %s: unreadable %s (%s): replaying everything", directory, MARK_FILE,
                    exc)
        return None
    match = _MARK_PARSE.match(text)
    if match is None:
        log.warning("spool %s: malformed %s: replaying everything", directory, MARK_FILE)
        return None
    return int(match.group(1)), int(match.group(2))


def write_mark(directory: Path, position: int, ordinal: int) -> None:
    """Replace the mark file atomically (no fsync: a stale mark only replays extra)."""
    path = directory / MARK_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(_MARK_FORMAT.format(position=position, ordinal=ordinal), "ascii")
    tmp.replace(path)


# -- recovery -----------------------------------------------------------------------------


@dataclass(slots=True)
class _ScanResult:
    """What recovery found in one segment."""

    good_bytes: int = 0
    records: int = 0
    last_ordinal: int = 0
    pending_records: int = 0
    corrupt: str | None = None  # why the scan stopped before the file's end
    mark_boundary: int | None = None  # the record boundary at or below the mark, if inside


@dataclass(slots=True)
class Recovery:
    """The state a spool opens with: its live segments and positions, and what was cut."""

    segments: list[Segment] = field(default_factory=list)  # pending ones, oldest first
    mark: int = 0  # everything up to here is in InfluxDB
    mark_ordinal: int = 0
    next_ordinal: int = 1
    pending_records: int = 0
    end: int = 0  # position after the last record
    corrupt_records: int = 0
    truncated_bytes: int = 0


def scan_segment(seg: Segment, limit: int | None, mark: int) -> _ScanResult:
    """Walk a segment's records, checking each one, up to the first bad one.

    Payloads are CRC-checked in chunks, never held whole. `limit` is where the next
    segment begins (nothing past it counts).
    """
    result = _ScanResult()
    with seg.path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if limit is not None:
            size = min(size, limit - seg.base)
        offset = 0
        while offset < size:
            try:
                header = read_header(f, offset, size)
                read_payload(f, header, keep=False)
            except CorruptRecordError as exc:
                result.corrupt = exc.reason
                break
            end = offset + HEADER_BYTES + header.length
            if seg.base + offset < mark < seg.base + end:
                result.mark_boundary = seg.base + offset
            offset = end
            result.good_bytes = offset
            result.records += 1
            result.last_ordinal = header.ordinal
            if seg.base + offset > mark:
                result.pending_records += 1
        if result.good_bytes:
            os.fsync(f.fileno())  # what a killed process left in the page cache, on disk now
    return result


def _list_segments(directory: Path) -> list[Segment]:
    """The segment files in `directory`, oldest first; leftovers of a mark write removed."""
    found: list[Segment] = []
    for path in directory.iterdir():
        match = _SEGMENT_NAME.match(path.name)
        if match is not None and path.is_file():
            found.append(Segment(base=int(match.group(1)), path=path))
        elif path.suffix == ".tmp":
            path.unlink(missing_ok=True)  # an interrupted mark write
    found.sort(key=lambda s: s.base)
    return found


def _scan_all(directory: Path, found: list[Segment], out: Recovery) -> int:
    """Scan every segment, cutting corrupt tails; fill `out` and return the last ordinal."""
    last_ordinal = out.mark_ordinal
    for i, seg in enumerate(found):
        limit = found[i + 1].base if i + 1 < len(found) else None
        result = scan_segment(seg, limit, out.mark)
        if result.corrupt is not None:
            cut = seg.path.stat().st_size - result.good_bytes
            out.corrupt_records += 1
            out.truncated_bytes += cut
            log.warning(
                "spool %s: %s at byte %d of %s: cut %d byte(s) off",
                directory, result.corrupt, result.good_bytes, seg.path.name, cut,
            )
            os.truncate(seg.path, result.good_bytes)
        seg.size = result.good_bytes
        seg.records = result.records
        if result.records:
            last_ordinal = max(last_ordinal, result.last_ordinal)
        out.pending_records += result.pending_records
        if result.mark_boundary is not None and result.mark_boundary != out.mark:
            log.warning("spool %s: written mark %d is not a record boundary; replaying from %d",
                        directory, out.mark, result.mark_boundary)
            out.mark = result.mark_boundary
    return last_ordinal


def recover(directory: Path) -> Recovery:
    """Scan every segment, cut corrupt tails, drop written segments; the state to open with.

    Rewrites the mark if it was missing or had to move back to a record boundary.
    """
    found = _list_segments(directory)
    stored = read_mark(directory)
    out = Recovery()
    out.mark, out.mark_ordinal = stored if stored is not None else (0, 0)
    if stored is None and found:
        out.mark = found[0].base  # unknown: everything on disk is pending
    last_ordinal = _scan_all(directory, found, out)
    out.next_ordinal = last_ordinal + 1
    # consistent with the count just made, whatever gaps a corrupt segment left
    out.mark_ordinal = out.next_ordinal - 1 - out.pending_records
    out.end = max([out.mark, *(s.end for s in found)])
    for seg in found:
        if seg.end <= out.mark or (seg.size == 0 and seg is not found[-1]):
            seg.path.unlink(missing_ok=True)
        else:
            out.segments.append(seg)
    if stored is None or stored[0] != out.mark:
        try:
            write_mark(directory, out.mark, out.mark_ordinal)
        except OSError as exc:
            if exc.errno not in DISK_FULL_ERRNOS:
                raise
            # a full disk must not keep the gateway from starting: the stale mark replays
            # a little more, and the first mark after a write tries again
            log.warning("spool %s: cannot rewrite %s (%s): disk full", directory, MARK_FILE,
                        exc.strerror)
    if out.corrupt_records or out.segments:
        pending_bytes = sum(s.end - max(s.base, out.mark) for s in out.segments)
        log.info(
            "spool %s: %d segment(s), %d pending record(s), %d byte(s) pending",
            directory, len(out.segments), out.pending_records, pending_bytes,
        )
    return out


# -- reading back ---------------------------------------------------------------------------

# (segment base, offset in the segment, what is wrong) for a record that went bad
OnCorrupt = Callable[[int, int, str], None]


def read_records(
    view: list[tuple[int, Path, int]], after: int, max_bytes: int, on_corrupt: OnCorrupt
) -> list[tuple[int, bytes]]:
    """Records after position `after` in the segments `view` ((base, path, good size) each).

    About `max_bytes` of payload, at least one record; (position, payload) each, oldest
    first, every payload in the current version (`upgrade_payload`: an earlier gateway's
    ms lines come back timed in ns). A bad record is reported to `on_corrupt` and the rest
    of its segment skipped.
    """
    out: list[tuple[int, bytes]] = []
    total = 0
    for base, path, size in view:
        offset = max(0, after - base)
        try:
            f = path.open("rb")
        except FileNotFoundError:
            continue  # written and deleted meanwhile
        with f:
            f.seek(offset)
            while offset < size:
                try:
                    header = read_header(f, offset, size)
                    if out and total + header.length > max_bytes:
                        return out
                    payload = upgrade_payload(header, read_payload(f, header))
                except CorruptRecordError as exc:
                    on_corrupt(base, offset, exc.reason)
                    break
                offset += HEADER_BYTES + header.length
                out.append((base + offset, payload))
                total += header.length
    return out
