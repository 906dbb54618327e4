"""A durable write-ahead spool of line-protocol batches (SPEC §4 durability; docs/architecture.md).

The spool is an append-only, crash-safe queue of byte records in a directory of segment
files (`ingest.spool_files`: layout, recovery, reading back; `ingest.spool_record`: the
record format). A record's *position* is the global offset just past it: positions grow
monotonically across segments, 0 means "nothing", and `read(after=p)` returns the records
that follow p.

Durability: `append()` frames the record into an in-memory write buffer (up to
`WRITE_BUFFER_BYTES`); `sync()` writes the buffer out and fdatasyncs every touched segment
(and the directory after a segment is created). Only what `sync()` covered survives a
`kill -9` or a power loss — which is all the gateway relies on: it acknowledges a message
only once a sync covers it, so the broker redelivers anything lost. One write per group
commit instead of one syscall per message was ~7% of the gateway's time (py-spy).
`GroupCommitter` lets many concurrent appenders share one `sync()` in a thread. A failed
write-out keeps the buffer and changes nothing, so the next sync tries it all again.

A full disk (ENOSPC, EDQUOT, EFBIG on a write, a segment's creation or an fsync) raises
`DiskFull` and sets `disk_full` until a write-out succeeds again. It must never stop the
spool from draining, which is what frees the disk: the records already in the files are
split off the active segment into a whole segment of their own (positions do not change;
the buffered records become the next segment, whose file is created by the next
write-out), so they can be read, written to InfluxDB and deleted; `sync()` still fsyncs
them; `read()` and `mark_written()` never need a write to succeed (the mark file is a hint:
a stale one only replays extra after a restart, so a full disk only delays it).

On open, every segment is scanned and a torn or corrupt tail cut off
(`ingest.spool_files.recover`), so appends continue cleanly after any crash.

Threads: `append`, `mark_written` and the properties run on the event loop; `sync()` and
large `read()`s may run in a worker thread at the same time (a lock guards the shared
state; fsync works on duplicated descriptors, so closing or deleting a segment meanwhile
is safe). Two processes cannot open one spool directory: the second gets `SpoolError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import Generic, Never, Self, TypeVar, overload

from ingest.errors import CorruptRecordError, DiskFull, SpoolError, SpoolFull
from ingest.spool_files import (
    DISK_FULL_ERRNOS,
    MARK_FILE,
    Segment,
    lock_directory,
    read_records,
    recover,
    segment_name,
    write_mark,
)
from ingest.spool_record import HEADER_BYTES, MAX_RECORD_BYTES, frame_header, unpack_header

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_SEGMENT_BYTES",
    "DISK_FULL_ERRNOS",
    "HEADER_BYTES",
    "MARK_FILE",
    "MAX_RECORD_BYTES",
    "WRITE_BUFFER_BYTES",
    "DiskFull",
    "GroupCommitter",
    "Spool",
    "SpoolError",
    "SpoolFull",
    "segment_name",
]

DEFAULT_MAX_BYTES = 1 << 30  # SPEC §4: the spool's default cap is 1 GiB
# Written data is freed a segment at a time: 8 MiB frees space promptly while a rotation
# (a file create plus one directory fsync) stays rare even at full load.
DEFAULT_SEGMENT_BYTES = 8 << 20
# Appended records wait in memory for the next sync() up to this much, then are written
# out by the append that would overflow it (bounded memory, bounded write size).
WRITE_BUFFER_BYTES = 1 << 20

log = logging.getLogger(__name__)

T = TypeVar("T")


class _ReadOnly(Generic[T]):
    """A public, read-only name for one of the spool's private attributes.

    Like a `@property` that only returns the attribute; assigning to it is an error
    (statically too: mypy accepts no value for `Never`).
    """

    def __init__(self, attribute: str, doc: str) -> None:
        """Read `attribute` of the instance; `doc` is what help() shows."""
        self.attribute = attribute
        self.name = attribute
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        """Remember the public name, for the error message."""
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Self: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...
    def __get__(self, obj: object, owner: type | None = None) -> Self | T:
        """The attribute's value (the descriptor itself on the class)."""
        if obj is None:
            return self
        value: T = getattr(obj, self.attribute)
        return value

    def __set__(self, obj: object, value: Never) -> None:
        """Refuse: only the spool changes its state."""
        raise AttributeError(f"{self.name} is read-only")


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
        self._segments: list[Segment] = []
        self._active: Segment | None = None  # the last segment, while appends go to it
        self._active_fd: int | None = None  # its file (None until created, after a split)
        self._active_dirty = False
        self._wbuf = bytearray()  # framed records of the active segment, not yet written
        self._wbuf_records = 0
        self._retired: list[int] = []  # rotated-away descriptors with unsynced data
        self._dir_dirty = False
        self._end = 0  # position after the last record
        self._synced = 0  # everything up to here survived fsync
        self._mark = 0  # everything up to here is in InfluxDB
        self._mark_ordinal = 0
        self._next_ordinal = 1
        self._pending_records = 0
        self._bytes_used = 0
        self._full = False
        self._disk_full: OSError | None = None  # the refusal, until a write-out succeeds
        self._wrote_since_refusal = False
        self._closed = False
        self.corrupt_records = 0
        self.truncated_bytes = 0
        self.appended_records = 0
        self.full_rejections = 0
        self.disk_full_refusals = 0  # write-outs, creations and fsyncs the disk refused
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = lock_directory(self.directory)
        try:
            self._open()
        except BaseException:
            os.close(self._lock_fd)
            raise

    # -- opening ------------------------------------------------------------------------

    def _open(self) -> None:
        """Recover the directory's segments and take up where they end."""
        found = recover(self.directory)
        self._segments = found.segments
        self._mark = found.mark
        self._mark_ordinal = found.mark_ordinal
        self._next_ordinal = found.next_ordinal
        self._pending_records = found.pending_records
        self._end = self._synced = found.end
        self._bytes_used = sum(s.size for s in found.segments)
        self.corrupt_records = found.corrupt_records
        self.truncated_bytes = found.truncated_bytes
        if found.segments and found.segments[-1].end == self._end:
            self._open_active(found.segments[-1], create=False)
            self._active = found.segments[-1]

    def _open_active(self, seg: Segment, *, create: bool) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create else 0)
        self._active_fd = os.open(seg.path, flags, 0o644)
        if create:
            self._dir_dirty = True

    def _retire_active(self) -> None:
        """Stop appending to the active segment (lock held); its unsynced data awaits fsync."""
        fd = self._active_fd
        if fd is not None:
            if self._active_dirty:
                self._retired.append(fd)
            else:
                os.close(fd)
        self._active = None
        self._active_fd = None
        self._active_dirty = False

    # -- appending and syncing ----------------------------------------------------------

    def append(self, payload: bytes) -> int:
        """Buffer one record (written out by the next sync) and return its position.

        SpoolFull if there is no room (the cap; `DiskFull` when the buffer has to be
        written out to a full disk); SpoolError if the disk fails. A failed append changes
        nothing.
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
            seg = self._active
            if seg is None or (seg.size and seg.size + size > self.segment_bytes):
                seg = self._rotate()  # writes the buffer out to the old segment first
            elif len(self._wbuf) + size > WRITE_BUFFER_BYTES:
                self._flush()
            ordinal = self._next_ordinal
            wbuf = self._wbuf
            wbuf += frame_header(payload, ordinal)
            wbuf += payload
            seg.size += size
            seg.records += 1
            self._end += size
            self._bytes_used += size
            self._next_ordinal += 1
            self._wbuf_records += 1
            self._pending_records += 1
            self._active_dirty = True
            self._full = False
            self.appended_records += 1
            return self._end

    def _flush(self) -> None:
        """Write the buffer to the active segment (lock held); on failure keep it.

        A partial write is cut off again, so the file never holds half a record that a
        later write would follow; the next flush (sync, append, read) tries it all again.
        A full disk also splits the segment where its file ends (`_split`).
        """
        wbuf = self._wbuf
        if not wbuf:
            return
        seg = self._active
        assert seg is not None  # the buffer belongs to the active segment
        if self._active_fd is None:  # split off by a full disk: the file comes now
            try:
                self._open_active(seg, create=True)
            except OSError as exc:
                raise self._refused(exc, f"cannot create spool segment {seg.path.name}") from exc
        fd = self._active_fd
        assert fd is not None
        on_disk = seg.size - len(wbuf)
        view = memoryview(wbuf)
        try:
            done = 0
            while done < len(view):
                done += os.write(fd, view[done:])
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, on_disk)
            refusal = self._refused(exc, "spool write failed")
            if isinstance(refusal, DiskFull) and on_disk:
                self._split(on_disk)
            raise refusal from exc
        finally:
            view.release()
        wbuf.clear()
        self._wbuf_records = 0
        self._active_dirty = True
        self._wrote_since_refusal = True

    def _refused(self, exc: OSError, what: str) -> SpoolError:
        """The error for a failed write, creation or fsync (lock held): DiskFull for no room."""
        if exc.errno in DISK_FULL_ERRNOS:
            self._disk_full = exc
            self._wrote_since_refusal = False
            self.disk_full_refusals += 1
            return DiskFull(exc, self._bytes_used)
        return SpoolError(f"{what}: {exc}")

    def _split(self, on_disk: int) -> None:
        """Cut the active segment where its file ends (lock held; the disk is full).

        The part in the file becomes a whole segment, which replay can read and the mark
        delete (freeing the disk); the buffered records become the next segment, whose
        file the next write-out creates. Positions do not change.
        """
        old = self._active
        assert old is not None
        base = old.base + on_disk
        rest = Segment(base=base, path=self.directory / segment_name(base),
                       size=old.size - on_disk, records=self._wbuf_records)
        old.size = on_disk
        old.records -= self._wbuf_records
        self._retire_active()
        self._segments.append(rest)
        self._active = rest

    def _rotate(self) -> Segment:
        """Start a new segment at the end (lock held); the old one awaits its fsync."""
        if self._active is not None:
            self._flush()  # the buffer belongs to the old segment
            self._retire_active()
        seg = Segment(base=self._end, path=self.directory / segment_name(self._end))
        try:
            self._open_active(seg, create=True)
        except OSError as exc:  # the next append tries again: nothing else has changed
            raise self._refused(exc, f"cannot create spool segment {seg.path.name}") from exc
        self._segments.append(seg)
        self._active = seg
        return seg

    def sync(self) -> None:
        """Make every record appended so far durable (blocking: run it in a thread).

        If the buffer cannot be written out (a full disk), what the files already hold is
        still made durable, and then the write-out's error raised.
        """
        with self._lock:
            target = self._end
            if target <= self._synced:
                return
            if self._closed:  # close() synced, or failed to: never report unsynced data as safe
                raise SpoolError("spool is closed")
            refused: SpoolError | None = None
            try:
                self._flush()
            except SpoolError as exc:
                refused = exc
                target = self._end - len(self._wbuf)  # the files hold all before the buffer
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
                raise self._refused(exc, "spool fsync failed") from exc
        finally:
            if active >= 0:
                os.close(active)
        for fd in retired:
            os.close(fd)
        with self._lock:
            self._synced = max(self._synced, target)
            if refused is None and self._wrote_since_refusal:
                self._disk_full = None  # written out and fsynced: the disk has room again
        if refused is not None:
            raise refused

    # -- reading and marking ------------------------------------------------------------

    def read(self, after: int, max_bytes: int) -> list[tuple[int, bytes]]:
        """Records after position `after`, oldest first, about `max_bytes` of payload (≥ 1
        if the files hold any).

        Buffered records are written out first; if the disk is full, the read returns what
        the files hold (a full disk must not stop replay: replay is what frees it).
        """
        with self._lock:
            if not self._closed:
                with contextlib.suppress(DiskFull):
                    self._flush()
            in_files = self._end - len(self._wbuf)
            view = [(s.base, s.path, min(s.size, in_files - s.base))
                    for s in self._segments if s.end > after and s.base < in_files]
        return read_records(view, after, max_bytes, self._lost_tail)

    def _lost_tail(self, base: int, offset: int, problem: str) -> None:
        """A record went bad after recovery (disk fault): skip the rest of its segment."""
        with self._lock:
            seg = next((s for s in self._segments if s.base == base and s.size > offset), None)
            if seg is None:
                return  # already handled, or the segment is gone
            if seg is self._active:
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
            try:
                ordinal = self._ordinal_ending_at(upto)
            except OSError as exc:
                raise SpoolError(f"spool read failed: {exc}") from exc
            marked = max(0, ordinal - self._mark_ordinal)
            self._mark = upto
            self._mark_ordinal = ordinal
            self._pending_records = max(0, self._pending_records - marked)
            try:
                # segments first: on a full disk the mark file needs the room they free
                while self._segments and self._segments[0].end <= upto:
                    seg = self._segments[0]
                    if seg is self._active:  # everything appended is in InfluxDB
                        fd = self._active_fd
                        if fd is not None:
                            os.close(fd)  # a sync in flight holds its own duplicate
                        self._active = None
                        self._active_fd = None
                        self._active_dirty = False
                        self._wbuf.clear()  # buffered records too: no need to write them now
                        self._wbuf_records = 0
                    seg.path.unlink(missing_ok=True)
                    self._segments.pop(0)
                    self._bytes_used -= seg.size
                    self._full = False
                write_mark(self.directory, upto, ordinal)
            except OSError as exc:
                if exc.errno not in DISK_FULL_ERRNOS:
                    raise SpoolError(f"spool mark failed: {exc}") from exc
                # a stale mark file replays a little more after a restart; the next mark
                # writes it again (at the latest once InfluxDB has freed a segment)

    def _ordinal_ending_at(self, upto: int) -> int:
        """The ordinal of the record ending at `upto` (lock held): the next one's minus one."""
        if upto == self._end:
            return self._next_ordinal - 1
        in_files = self._end - len(self._wbuf)
        if upto >= in_files:  # the next record is still in the write buffer
            at = upto - in_files
            try:
                return unpack_header(bytes(self._wbuf[at:at + HEADER_BYTES])).ordinal - 1
            except CorruptRecordError:
                raise ValueError(f"position {upto} is not a record boundary") from None
        for seg in self._segments:
            if seg.end > upto:
                offset = max(0, upto - seg.base)
                with seg.path.open("rb") as f:
                    f.seek(offset)
                    raw = f.read(HEADER_BYTES)
                try:
                    return unpack_header(raw).ordinal - 1
                except CorruptRecordError:
                    raise ValueError(f"position {upto} is not a record boundary") from None
        return self._next_ordinal - 1

    # -- state ----------------------------------------------------------------------------

    end_position = _ReadOnly[int]("_end", "Position after the last record appended.")
    synced_position = _ReadOnly[int]("_synced", "Everything up to here survived an fsync.")
    written_position = _ReadOnly[int]("_mark", "Everything up to here is in InfluxDB (the mark).")
    bytes_used = _ReadOnly[int]("_bytes_used", "Bytes of records on disk, what `max_bytes` caps.")
    records_pending = _ReadOnly[int]("_pending_records", "Records not yet in InfluxDB.")
    full = _ReadOnly[bool]("_full", "An append was refused for lack of room and none made since.")

    @property
    def disk_full(self) -> bool:
        """The disk refused a write (no room) and none has been written out and fsynced since."""
        return self._disk_full is not None

    @property
    def disk_full_reason(self) -> str:
        """How the disk refused the latest write while `disk_full` ("" otherwise)."""
        exc = self._disk_full
        return "" if exc is None else f"{exc.strerror or exc} (errno {exc.errno})"

    @property
    def in_files_position(self) -> int:
        """Everything up to here is in the segment files (the rest waits in the write buffer)."""
        with self._lock:
            return self._end - len(self._wbuf)

    @property
    def pending_bytes(self) -> int:
        """Bytes of records not yet in InfluxDB."""
        with self._lock:
            mark = self._mark
            return sum(s.end - max(s.base, mark) for s in self._segments if s.end > mark)

    @property
    def segment_count(self) -> int:
        """How many segment files the spool has open (written ones are deleted)."""
        return len(self._segments)

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
