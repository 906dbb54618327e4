"""A durable write-ahead spool of line-protocol batches (SPEC §4 durability; docs/architecture.md).

Layout: a directory of append-only segment files `<base>.seg`, where `<base>` (20 digits)
is the global position of the segment's first byte, plus `written.mark` (the position up
to which everything is in InfluxDB) and a `LOCK` file held with flock while open.

A record is a 20-byte header — magic `CWS1`, payload length (u32), CRC32 of length,
ordinal and payload (u32), ordinal (u64, +1 per record) — followed by the payload. A
record's *position* is the global offset just past it: positions grow monotonically
across segments, 0 means "nothing", and `read(after=p)` returns the records that follow p.

Durability: `append()` frames the record into an in-memory write buffer (up to
`WRITE_BUFFER_BYTES`); `sync()` writes the buffer out and fdatasyncs every touched segment
(and the directory after a segment is created). Only what `sync()` covered survives a
`kill -9` or a power loss — which is all the gateway relies on: it acknowledges a message
only once a sync covers it, so the broker redelivers anything lost. One write per group
commit instead of one syscall per message was ~7% of the gateway's time (py-spy).
`GroupCommitter` lets many concurrent appenders share one `sync()` in a thread. A failed
write-out keeps the buffer and changes nothing, so the next sync tries it all again.

On open, every segment is scanned: a torn or corrupt tail (short header, bad magic,
impossible length, bad CRC) is counted and cut off, so appends continue cleanly after any
crash.

Memory is bounded whatever the backlog: segments are streamed in chunks, never loaded
whole, and only a few numbers per segment are kept.

Threads: `append`, `mark_written` and the properties run on the event loop; `sync()` and
large `read()`s may run in a worker thread at the same time (a lock guards the shared
state; fsync works on duplicated descriptors, so closing or deleting a segment meanwhile
is safe). Two processes cannot open one spool directory: the second gets `SpoolError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import re
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Self

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_SEGMENT_BYTES",
    "HEADER_BYTES",
    "MAX_RECORD_BYTES",
    "GroupCommitter",
    "Spool",
    "SpoolError",
    "SpoolFull",
]

log = logging.getLogger(__name__)

MAGIC = b"CWS1"
_HEADER = struct.Struct("<4sIIQ")  # magic, payload length, crc32, ordinal
_CRC_PREFIX = struct.Struct("<IQ")  # length and ordinal, covered by the CRC with the payload
HEADER_BYTES = _HEADER.size

DEFAULT_MAX_BYTES = 1 << 30  # SPEC §4: the spool's default cap is 1 GiB
# Written data is freed a segment at a time: 8 MiB frees space promptly while a rotation
# (a file create plus one directory fsync) stays rare even at full load.
DEFAULT_SEGMENT_BYTES = 8 << 20
# A corrupt length field must not make recovery allocate gigabytes; the gateway's largest
# record, the lines of one socket read's messages (a read is at most 256 KiB of packets,
# and a line is about twice its reading's JSON), is far below this.
MAX_RECORD_BYTES = 16 << 20
# Recovery checks payload CRCs in chunks of this size, so its memory use is bounded.
SCAN_CHUNK_BYTES = 1 << 20
# Appended records wait in memory for the next sync() up to this much, then are written
# out by the append that would overflow it (bounded memory, bounded write size).
WRITE_BUFFER_BYTES = 1 << 20

SEGMENT_SUFFIX = ".seg"
MARK_FILE = "written.mark"
LOCK_FILE = "LOCK"
_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")
_MARK_FORMAT = "cuffwatch-spool-mark 1 {position} {ordinal}\n"
_MARK_PARSE = re.compile(r"^cuffwatch-spool-mark 1 (\d+) (\d+)\n?$")


class SpoolError(Exception):
    """The spool cannot do what was asked (I/O error, closed, directory in use)."""


class SpoolFull(SpoolError):
    """No room for the record under `max_bytes` (or on the disk): the caller must hold it."""

    def __init__(self, needed: int, used: int, max_bytes: int) -> None:
        """Keep the numbers the caller logs."""
        super().__init__(f"spool full: {used} of {max_bytes} bytes used, {needed} more needed")
        self.needed = needed
        self.used = used
        self.max_bytes = max_bytes


@dataclass(slots=True)
class _Segment:
    """One segment file: where it starts, how many good bytes and records it holds."""

    base: int
    path: Path
    size: int = 0
    records: int = 0

    @property
    def end(self) -> int:
        return self.base + self.size


@dataclass(slots=True)
class _ScanResult:
    """What recovery found in one segment."""

    good_bytes: int = 0
    records: int = 0
    last_ordinal: int = 0
    pending_records: int = 0
    corrupt: str | None = None  # why the scan stopped before the file's end
    mark_boundary: int | None = None  # the record boundary at or below the mark, if inside


def _crc(length: int, ordinal: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(_CRC_PREFIX.pack(length, ordinal)))


def _segment_name(base: int) -> str:
    return f"{base:020d}{SEGMENT_SUFFIX}"


class Spool:
    """An append-only, crash-safe queue of byte records on disk, bounded by `max_bytes`."""

    def __init__(
        self,
        directory: Path | str,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        """Open (creating it if needed) and recover the spool in `directory`; blocking I/O."""
        if max_bytes <= HEADER_BYTES or segment_bytes <= HEADER_BYTES:
            raise ValueError("max_bytes and segment_bytes must exceed one record header")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._active_fd: int | None = None  # appends go to the last segment through this
        self._active_dirty = False
        self._wbuf = bytearray()  # framed records of the active segment, not yet written
        self._retired: list[int] = []  # rotated-away descriptors with unsynced data
        self._dir_dirty = False
        self._end = 0  # position after the last record
        self._synced = 0  # everything up to here survived fsync
        self._mark = 0  # everything up to here is in InfluxDB
        self._mark_ordinal = 0
        self._next_ordinal = 1
        self._bytes_used = 0
        self._full = False
        self._closed = False
        self.corrupt_records = 0
        self.truncated_bytes = 0
        self.appended_records = 0
        self.full_rejections = 0
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._take_dir_lock()
        try:
            self._recover()
        except BaseException:
            os.close(self._lock_fd)
            raise

    # -- opening ------------------------------------------------------------------------

    def _take_dir_lock(self) -> int:
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise SpoolError(f"spool {self.directory} is in use by another process") from exc
        return fd

    def _read_mark(self) -> tuple[int, int] | None:
        try:
            text = (self.directory / MARK_FILE).read_text("ascii")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("spool %s: unreadable %s (%s): replaying everything", self.directory,
                        MARK_FILE, exc)
            return None
        match = _MARK_PARSE.match(text)
        if match is None:
            log.warning("spool %s: malformed %s: replaying everything", self.directory, MARK_FILE)
            return None
        return int(match.group(1)), int(match.group(2))

    def _recover(self) -> None:
        """Scan every segment, cut corrupt tails, drop written segments; set positions."""
        found: list[_Segment] = []
        for path in self.directory.iterdir():
            match = _SEGMENT_NAME.match(path.name)
            if match is not None and path.is_file():
                found.append(_Segment(base=int(match.group(1)), path=path))
            elif path.suffix == ".tmp":
                path.unlink(missing_ok=True)  # an interrupted mark write
        found.sort(key=lambda s: s.base)
        stored = self._read_mark()
        mark, mark_ordinal = stored if stored is not None else (0, 0)
        if stored is None and found:
            mark = found[0].base  # unknown: everything on disk is pending
        last_ordinal = mark_ordinal
        pending = 0
        for i, seg in enumerate(found):
            limit = found[i + 1].base if i + 1 < len(found) else None
            result = self._scan(seg, limit, mark)
            if result.corrupt is not None:
                file_size = seg.path.stat().st_size
                cut = file_size - result.good_bytes
                self.corrupt_records += 1
                self.truncated_bytes += cut
                log.warning(
                    "spool %s: %s at byte %d of %s: cut %d byte(s) off",
                    self.directory, result.corrupt, result.good_bytes, seg.path.name, cut,
                )
                os.truncate(seg.path, result.good_bytes)
            seg.size = result.good_bytes
            seg.records = result.records
            if result.records:
                last_ordinal = max(last_ordinal, result.last_ordinal)
            pending += result.pending_records
            if result.mark_boundary is not None and result.mark_boundary != mark:
                log.warning("spool %s: written mark %d is not a record boundary; replaying from %d",
                            self.directory, mark, result.mark_boundary)
                mark = result.mark_boundary
        self._mark = mark
        self._next_ordinal = last_ordinal + 1
        # consistent with the count just made, whatever gaps a corrupt segment left
        self._mark_ordinal = self._next_ordinal - 1 - pending
        self._pending_records = pending
        self._end = max([mark, *(s.end for s in found)])
        self._synced = self._end
        keep = []
        for seg in found:
            if seg.end <= mark or (seg.size == 0 and seg is not found[-1]):
                seg.path.unlink(missing_ok=True)
            else:
                keep.append(seg)
        self._segments = keep
        self._bytes_used = sum(s.size for s in keep)
        if keep and keep[-1].end == self._end:
            self._open_active(keep[-1], create=False)
        if stored is None or stored[0] != mark:
            self._write_mark(mark, self._mark_ordinal)
        if self.corrupt_records or keep:
            log.info(
                "spool %s: %d segment(s), %d pending record(s), %d byte(s) pending",
                self.directory, len(keep), pending, self.pending_bytes,
            )

    def _scan(self, seg: _Segment, limit: int | None, mark: int) -> _ScanResult:
        """Walk a segment's records, checking each one, up to the first bad one."""
        result = _ScanResult()
        max_size = None if limit is None else limit - seg.base
        with seg.path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if max_size is not None:
                size = min(size, max_size)
            offset = 0
            while offset < size:
                header = f.read(HEADER_BYTES)
                if len(header) < HEADER_BYTES or offset + HEADER_BYTES > size:
                    result.corrupt = "torn record header"
                    break
                magic, length, crc, ordinal = _HEADER.unpack(header)
                if magic != MAGIC:
                    result.corrupt = "bad record magic"
                    break
                if length > MAX_RECORD_BYTES or offset + HEADER_BYTES + length > size:
                    result.corrupt = "torn record payload"
                    break
                check = zlib.crc32(_CRC_PREFIX.pack(length, ordinal))
                remaining = length
                while remaining:
                    chunk = f.read(min(remaining, SCAN_CHUNK_BYTES))
                    if not chunk:
                        break
                    check = zlib.crc32(chunk, check)
                    remaining -= len(chunk)
                if remaining or check != crc:
                    result.corrupt = "record CRC mismatch"
                    break
                end = offset + HEADER_BYTES + length
                if seg.base + offset < mark < seg.base + end:
                    result.mark_boundary = seg.base + offset
                offset = end
                result.good_bytes = offset
                result.records += 1
                result.last_ordinal = ordinal
                if seg.base + offset > mark:
                    result.pending_records += 1
            if result.good_bytes:
                os.fsync(f.fileno())  # what a killed process left in the page cache, on disk now
        return result

    def _open_active(self, seg: _Segment, *, create: bool) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create else 0)
        self._active_fd = os.open(seg.path, flags, 0o644)
        if create:
            self._dir_dirty = True

    # -- appending and syncing ----------------------------------------------------------

    def append(self, payload: bytes) -> int:
        """Buffer one record (written out by the next sync) and return its position.

        SpoolFull if there is no room (the cap, or a full disk when the buffer has to be
        written out); SpoolError if the disk fails. A failed append changes nothing.
        """
        length = len(payload)
        if length > MAX_RECORD_BYTES:
            raise ValueError(f"record of {length} bytes exceeds {MAX_RECORD_BYTES}")
        size = HEADER_BYTES + length
        with self._lock:
            if self._closed:
                raise SpoolError("spool is closed")
            if self._bytes_used + size > self.max_bytes:
                self._full = True
                self.full_rejections += 1
                raise SpoolFull(size, self._bytes_used, self.max_bytes)
            seg = self._segments[-1] if self._active_fd is not None else None
            if seg is None or (seg.size and seg.size + size > self.segment_bytes):
                seg = self._rotate()  # writes the buffer out to the old segment first
            elif len(self._wbuf) + size > WRITE_BUFFER_BYTES:
                self._flush()
            ordinal = self._next_ordinal
            wbuf = self._wbuf
            wbuf += _HEADER.pack(MAGIC, length, _crc(length, ordinal, payload), ordinal)
            wbuf += payload
            seg.size += size
            seg.records += 1
            self._end += size
            self._bytes_used += size
            self._next_ordinal += 1
            self._pending_records += 1
            self._active_dirty = True
            self._full = False
            self.appended_records += 1
            return self._end

    def _flush(self) -> None:
        """Write the buffer to the active segment (lock held); on failure keep it, change nothing.

        A partial write is cut off again, so the file never holds half a record that a
        later write would follow; the next flush (sync, append, read) tries it all again.
        """
        wbuf = self._wbuf
        if not wbuf:
            return
        fd = self._active_fd
        assert fd is not None  # the buffer belongs to the active segment
        on_disk = self._segments[-1].size - len(wbuf)
        view = memoryview(wbuf)
        try:
            done = 0
            while done < len(view):
                done += os.write(fd, view[done:])
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, on_disk)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self._full = True
                self.full_rejections += 1
                raise SpoolFull(len(wbuf), self._bytes_used, self.max_bytes) from exc
            raise SpoolError(f"spool write failed: {exc}") from exc
        finally:
            view.release()
        wbuf.clear()

    def _rotate(self) -> _Segment:
        """Start a new segment at the end (lock held); the old one awaits its fsync."""
        if self._active_fd is not None:
            self._flush()  # the buffer belongs to the old segment
            if self._active_dirty:
                self._retired.append(self._active_fd)
            else:
                os.close(self._active_fd)
            self._active_fd = None
            self._active_dirty = False
        seg = _Segment(base=self._end, path=self.directory / _segment_name(self._end))
        try:
            self._open_active(seg, create=True)
        except OSError as exc:  # the next append tries again: nothing else has changed
            raise SpoolError(f"cannot create spool segment {seg.path.name}: {exc}") from exc
        self._segments.append(seg)
        return seg

    def sync(self) -> None:
        """Make every record appended so far durable (blocking: run it in a thread)."""
        with self._lock:
            target = self._end
            if target <= self._synced:
                return
            if self._closed:  # close() synced, or failed to: never report unsynced data as safe
                raise SpoolError("spool is closed")
            self._flush()
            retired, self._retired = self._retired, []
            active = -1
            if self._active_fd is not None and self._active_dirty:
                active = os.dup(self._active_fd)
                self._active_dirty = False
            dir_dirty, self._dir_dirty = self._dir_dirty, False
        try:
            for fd in retired:
                os.fdatasync(fd)
            if active >= 0:
                os.fdatasync(active)
            if dir_dirty:
                dir_fd = os.open(self.directory, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError as exc:
            with self._lock:  # the next sync tries everything again
                self._retired[:0] = retired
                self._active_dirty = self._active_dirty or active >= 0
                self._dir_dirty = self._dir_dirty or dir_dirty
            raise SpoolError(f"spool fsync failed: {exc}") from exc
        finally:
            if active >= 0:
                os.close(active)
        for fd in retired:
            os.close(fd)
        with self._lock:
            self._synced = max(self._synced, target)

    # -- reading and marking ------------------------------------------------------------

    def read(self, after: int, max_bytes: int) -> list[tuple[int, bytes]]:
        """Records after position `after`, oldest first, about `max_bytes` of payload (≥ 1)."""
        with self._lock:
            if not self._closed:
                self._flush()  # the files must hold every record the sizes below count
            view = [(s.base, s.path, s.size) for s in self._segments if s.end > after]
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
                    header = f.read(HEADER_BYTES)
                    problem = None
                    if len(header) < HEADER_BYTES:
                        problem = "torn header"
                    else:
                        magic, length, crc, ordinal = _HEADER.unpack(header)
                        if magic != MAGIC or offset + HEADER_BYTES + length > size:
                            problem = "bad header"
                    if problem is None:
                        if out and total + length > max_bytes:
                            return out
                        payload = f.read(length)
                        if len(payload) != length or _crc(length, ordinal, payload) != crc:
                            problem = "CRC mismatch"
                    if problem is not None:
                        self._lost_tail(base, offset, problem)
                        break
                    offset += HEADER_BYTES + length
                    out.append((base + offset, payload))
                    total += length
        return out

    def _lost_tail(self, base: int, offset: int, problem: str) -> None:
        """A record went bad after recovery (disk fault): skip the rest of its segment."""
        with self._lock:
            seg = next((s for s in self._segments if s.base == base and s.size > offset), None)
            if seg is None:
                return  # already handled, or the segment is gone
            if seg is self._segments[-1] and self._active_fd is not None:
                self._rotate()  # appends must not land behind the cut
            lost = seg.size - offset
            seg.size = offset
            self._bytes_used -= lost
            self.corrupt_records += 1
            self.truncated_bytes += lost
        log.error("spool %s: %s at byte %d of %s: skipping %d byte(s)",
                  self.directory, problem, offset, seg.path.name, lost)

    def has_records_after(self, position: int) -> bool:
        """Whether any record follows `position` (what `read(position, …)` would return)."""
        with self._lock:
            return any(s.size and s.end > position for s in self._segments)

    def mark_written(self, upto: int) -> None:
        """Record that every record up to position `upto` is in InfluxDB; free whole segments."""
        with self._lock:
            if self._closed:
                raise SpoolError("spool is closed")
            if upto <= self._mark:
                return
            if upto > self._end:
                raise ValueError(f"position {upto} is beyond the spool's end {self._end}")
            self._flush()  # the mark reads a record header from the file
            try:
                ordinal = self._ordinal_ending_at(upto)
            except OSError as exc:
                raise SpoolError(f"spool read failed: {exc}") from exc
            marked = max(0, ordinal - self._mark_ordinal)
            self._mark = upto
            self._mark_ordinal = ordinal
            self._pending_records = max(0, self._pending_records - marked)
            try:
                self._write_mark(upto, ordinal)
                while self._segments and self._segments[0].end <= upto:
                    seg = self._segments[0]
                    if len(self._segments) == 1 and self._active_fd is not None:
                        os.close(self._active_fd)  # a sync in flight holds its own duplicate
                        self._active_fd = None
                        self._active_dirty = False
                    seg.path.unlink(missing_ok=True)
                    self._segments.pop(0)
                    self._bytes_used -= seg.size
                    self._full = False
            except OSError as exc:
                raise SpoolError(f"spool mark failed: {exc}") from exc

    def _ordinal_ending_at(self, upto: int) -> int:
        """The ordinal of the record ending at `upto` (lock held): the next one's minus one."""
        for seg in self._segments:
            if seg.end > upto:
                offset = max(0, upto - seg.base)
                with seg.path.open("rb") as f:
                    f.seek(offset)
                    header = f.read(HEADER_BYTES)
                if len(header) < HEADER_BYTES or header[:4] != MAGIC:
                    raise ValueError(f"position {upto} is not a record boundary")
                next_ordinal: int = _HEADER.unpack(header)[3]
                return next_ordinal - 1
        return self._next_ordinal - 1

    def _write_mark(self, position: int, ordinal: int) -> None:
        """Replace the mark file atomically (no fsync: a stale mark only replays extra)."""
        path = self.directory / MARK_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(_MARK_FORMAT.format(position=position, ordinal=ordinal), "ascii")
        tmp.replace(path)

    # -- state ----------------------------------------------------------------------------

    @property
    def end_position(self) -> int:
        """Position after the last record appended."""
        return self._end

    @property
    def synced_position(self) -> int:
        """Everything up to here survived an fsync."""
        return self._synced

    @property
    def written_position(self) -> int:
        """Everything up to here is in InfluxDB (the persisted mark)."""
        return self._mark

    @property
    def bytes_used(self) -> int:
        """Bytes of records on disk, the quantity `max_bytes` caps."""
        return self._bytes_used

    @property
    def pending_bytes(self) -> int:
        """Bytes of records not yet in InfluxDB."""
        with self._lock:
            mark = self._mark
            return sum(s.end - max(s.base, mark) for s in self._segments if s.end > mark)

    @property
    def records_pending(self) -> int:
        """Records not yet in InfluxDB."""
        return self._pending_records

    @property
    def full(self) -> bool:
        """An append was refused for lack of room and no room has been made since."""
        return self._full

    def stats(self) -> dict[str, int]:
        """Numbers for /metrics."""
        return {
            "bytes_used": self._bytes_used,
            "max_bytes": self.max_bytes,
            "pending_bytes": self.pending_bytes,
            "records_pending": self._pending_records,
            "segments": len(self._segments),
            "full": int(self._full),
            "full_rejections": self.full_rejections,
            "appended_records": self.appended_records,
            "corrupt_records": self.corrupt_records,
            "truncated_bytes": self.truncated_bytes,
        }

    # -- closing --------------------------------------------------------------------------

    def close(self) -> None:
        """Fsync what is pending and release the directory; idempotent (blocking)."""
        if self._closed:
            return
        try:
            self.sync()
        finally:
            with self._lock:
                self._closed = True
                fds = [*self._retired, *([self._active_fd] if self._active_fd is not None else [])]
                self._retired = []
                self._active_fd = None
            for fd in fds:
                os.close(fd)
            os.close(self._lock_fd)

    def __enter__(self) -> Self:
        """The open spool."""
        return self

    def __exit__(self, *_exc: object) -> None:
        """Close the spool."""
        self.close()


class GroupCommitter:
    """Appends that return once durable, many of them sharing one fsync in a thread.

    At most one `Spool.sync()` is in flight; appends arriving during it wait for the next
    one. No task is created: the sync is an executor future that waiters share (shielded,
    so a cancelled waiter never cancels the others' sync).
    """

    def __init__(self, spool: Spool) -> None:
        """Commit to `spool`."""
        self.spool = spool
        self.syncs = 0
        self._sync: asyncio.Future[None] | None = None

    def append_nowait(self, payload: bytes) -> int:
        """Append without waiting for durability; SpoolFull if there is no room."""
        return self.spool.append(payload)

    async def wait_durable(self, position: int) -> None:
        """Return once every record up to `position` is fsynced; SpoolError if fsync fails."""
        while self.spool.synced_position < position:
            sync = self._sync
            if sync is None or sync.done():  # done: its callback has not cleared it yet
                sync = self._start_sync()
            await asyncio.shield(sync)

    async def append(self, payload: bytes) -> int:
        """Append one record and return its position once it is durable."""
        position = self.append_nowait(payload)
        await self.wait_durable(position)
        return position

    def _start_sync(self) -> asyncio.Future[None]:
        sync = asyncio.get_running_loop().run_in_executor(None, self.spool.sync)
        self._sync = sync
        self.syncs += 1
        sync.add_done_callback(self._sync_done)
        return sync

    def _sync_done(self, sync: asyncio.Future[None]) -> None:
        if self._sync is sync:
            self._sync = None
        if not sync.cancelled():
            sync.exception()  # the waiters re-raise it; this marks it retrieved
