"""The write-ahead spool: records, segments, the written mark, crash recovery, group commit."""

from __future__ import annotations

import asyncio
import errno
import io
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.errors import CorruptRecordError, DiskFull
from ingest.spool import GroupCommitter, Spool, SpoolError, SpoolFull
from ingest.spool_files import MARK_FILE, segment_name
from ingest.spool_record import (
    HEADER_BYTES,
    MAGIC,
    RecordHeader,
    frame_header,
    read_header,
    read_payload,
)
from tests.support.paths import REPO
from tests.support.small_disk import refusing_writes


def payloads(n: int, size: int = 50) -> list[bytes]:
    return [f"r{i:05d}:".encode().ljust(size, b"x") for i in range(n)]


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def test_append_then_read_everything_in_order(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        data = payloads(10)
        positions = [spool.append(p) for p in data]
        assert positions == sorted(set(positions))
        assert positions[0] == HEADER_BYTES + 50
        assert spool.read(0, 1 << 20) == list(zip(positions, data, strict=True))
        assert spool.read(positions[3], 1 << 20) == list(zip(positions[4:], data[4:], strict=True))
        assert spool.read(positions[-1], 1 << 20) == []
        assert spool.records_pending == 10
        assert spool.pending_bytes == spool.bytes_used == 10 * (HEADER_BYTES + 50)


def test_read_is_bounded_by_max_bytes_but_always_returns_a_record(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        for p in payloads(10, size=100):
            spool.append(p)
        assert len(spool.read(0, 250)) == 2
        assert len(spool.read(0, 1)) == 1


def test_segments_rotate_and_reads_cross_them(tmp_path: Path) -> None:
    record = HEADER_BYTES + 50
    with Spool(tmp_path, segment_bytes=3 * record) as spool:
        data = payloads(10)
        for p in data:
            spool.append(p)
        assert len(segment_files(tmp_path)) == 4  # 3 + 3 + 3 + 1
        assert [p for _, p in spool.read(0, 1 << 20)] == data
        assert spool.segment_count == 4


def test_mark_written_frees_whole_segments_and_persists(tmp_path: Path) -> None:
    record = HEADER_BYTES + 50
    data = payloads(10)
    with Spool(tmp_path, segment_bytes=3 * record) as spool:
        positions = [spool.append(p) for p in data]
        spool.mark_written(positions[4])  # first segment fully written, second half written
        assert len(segment_files(tmp_path)) == 3
        assert spool.written_position == positions[4]
        assert spool.records_pending == 5
        assert spool.pending_bytes == 5 * record
        assert spool.bytes_used == 7 * record
        spool.mark_written(positions[2])  # going back is a no-op
        assert spool.written_position == positions[4]
    with Spool(tmp_path, segment_bytes=3 * record) as spool:
        assert spool.written_position == positions[4]
        assert spool.records_pending == 5
        assert [p for _, p in spool.read(spool.written_position, 1 << 20)] == data[5:]


def test_a_fully_written_spool_keeps_positions_growing(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        last = 0
        for p in payloads(3):
            last = spool.append(p)
        spool.mark_written(last)
        assert segment_files(tmp_path) == []
        assert spool.bytes_used == 0
        assert not spool.has_records_after(0)
    with Spool(tmp_path) as spool:
        assert spool.end_position == last
        nxt = spool.append(b"next")
        assert nxt == last + HEADER_BYTES + 4
        assert spool.read(last, 100) == [(nxt, b"next")]
        assert spool.records_pending == 1


def test_mark_beyond_the_end_or_off_a_boundary_is_refused(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        a = spool.append(b"a" * 10)
        b = spool.append(b"b" * 10)
        with pytest.raises(ValueError, match="beyond"):
            spool.mark_written(b + 1)
        with pytest.raises(ValueError, match="boundary"):
            spool.mark_written(a + 3)


def test_spool_full_is_raised_and_cleared_when_space_is_freed(tmp_path: Path) -> None:
    record = HEADER_BYTES + 50
    with Spool(tmp_path, max_bytes=4 * record, segment_bytes=2 * record) as spool:
        positions = [spool.append(p) for p in payloads(4)]
        with pytest.raises(SpoolFull) as info:
            spool.append(b"y" * 50)
        assert info.value.used == 4 * record
        assert (spool.full, spool.full_rejections) == (True, 1)
        spool.mark_written(positions[1])  # frees the first segment
        assert not spool.full
        spool.append(b"y" * 50)
        assert spool.records_pending == 3


def test_a_segment_that_cannot_be_created_is_a_spool_error_and_changes_nothing(
    tmp_path: Path,
) -> None:
    # Whatever the disk raises reaches the caller as SpoolError (the gateway holds the
    # messages and retries on it); the next append after the cause is gone just works.
    record = HEADER_BYTES + 50
    with Spool(tmp_path, segment_bytes=2 * record) as spool:
        spool.append(b"a" * 50)
        end = spool.append(b"b" * 50)
        blocker = tmp_path / segment_name(end)  # where the next segment must be created
        blocker.mkdir()
        with pytest.raises(SpoolError, match="cannot create spool segment"):
            spool.append(b"c" * 50)
        assert spool.end_position == end
        assert spool.records_pending == 2
        blocker.rmdir()
        assert spool.append(b"c" * 50) == end + record
        spool.sync()
        assert [p for _, p in spool.read(0, 1 << 20)] == [b"a" * 50, b"b" * 50, b"c" * 50]


def test_the_directory_is_locked_while_open(tmp_path: Path) -> None:
    with Spool(tmp_path), pytest.raises(SpoolError, match="in use"):
        Spool(tmp_path)
    Spool(tmp_path).close()  # free again once closed


def test_oversized_record_is_a_caller_error(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool, pytest.raises(ValueError, match="exceeds"):
        spool.append(bytes(17 << 20))


# -- crash recovery -------------------------------------------------------------------------


def _last_segment(directory: Path) -> Path:
    return segment_files(directory)[-1]


@pytest.mark.parametrize(
    ("damage", "cut"),
    [
        ("torn header", lambda f, size: f.truncate(size - 50 - 5)),
        ("torn payload", lambda f, size: f.truncate(size - 7)),
        ("bad crc", lambda f, size: (f.seek(size - 1), f.write(b"!"))),
        ("garbage", lambda f, size: (f.seek(size), f.write(b"\x00garbage after the tail"))),
        ("impossible length", lambda f, size: (f.seek(size), f.write(MAGIC + bytes([255] * 16)))),
    ],
)
def test_a_damaged_tail_is_cut_counted_and_appends_continue(
    tmp_path: Path, damage: str, cut: object
) -> None:
    data = payloads(5)
    with Spool(tmp_path) as spool:
        for p in data:
            spool.append(p)
    path = _last_segment(tmp_path)
    size = path.stat().st_size
    with path.open("r+b") as f:
        cut(f, size)  # type: ignore[operator]
    with Spool(tmp_path) as spool:
        survivors = data if damage in ("garbage", "impossible length") else data[:4]
        assert [p for _, p in spool.read(0, 1 << 20)] == survivors, damage
        assert spool.corrupt_records == 1
        assert spool.truncated_bytes > 0
        assert path.stat().st_size == len(survivors) * (HEADER_BYTES + 50)
        position = spool.append(b"after")
        assert spool.read(0, 1 << 20)[-1] == (position, b"after")
        assert spool.records_pending == len(survivors) + 1
    with Spool(tmp_path) as spool:
        assert spool.corrupt_records == 0  # the cut was clean
        assert [p for _, p in spool.read(0, 1 << 20)] == [*survivors, b"after"]


def test_a_record_damaged_after_opening_is_skipped_with_the_rest_of_its_segment(
    tmp_path: Path,
) -> None:
    data = payloads(5)
    with Spool(tmp_path) as spool:
        positions = [spool.append(p) for p in data]
        spool.sync()
        with _last_segment(tmp_path).open("r+b") as f:
            f.seek(positions[2] - 1)  # the last payload byte of the third record
            f.write(b"!")
        assert [p for _, p in spool.read(0, 1 << 20)] == data[:2]
        assert spool.corrupt_records == 1
        assert spool.truncated_bytes == 3 * (HEADER_BYTES + 50)
        position = spool.append(b"after")  # lands in a new segment, past the cut
        assert spool.read(positions[1], 1 << 20) == [(position, b"after")]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda raw: raw[:HEADER_BYTES - 1], "torn record header"),
        (lambda raw: b"XWS1" + raw[4:], "bad record magic"),
        (lambda raw: raw[:-1], "torn record payload"),
        (lambda raw: raw[:-1] + b"!", "record CRC mismatch"),
    ],
)
@pytest.mark.parametrize("keep", [True, False])
def test_the_record_parser_names_what_is_wrong(
    damage: Callable[[bytes], bytes], reason: str, keep: bool
) -> None:
    payload = b"x" * 100
    raw = frame_header(payload, 7) + payload
    header = read_header(io.BytesIO(raw), 0, len(raw))
    assert header == RecordHeader(len(payload), header.crc, 7)
    f = io.BytesIO(raw)
    assert read_payload(f, read_header(f, 0, len(raw)), keep=keep) == (payload if keep else b"")
    bad = damage(raw)
    f = io.BytesIO(bad)
    with pytest.raises(CorruptRecordError) as caught:
        read_payload(f, read_header(f, 0, len(bad)), keep=keep)
    assert caught.value.reason == reason
    assert isinstance(caught.value, SpoolError)


def legacy_record(payload: bytes, ordinal: int) -> bytes:
    """A record as gateways before ns precision framed it (written here by hand, as they
    did: the same layout under the magic `CWS1`), its lines timed in ms."""
    crc = zlib.crc32(payload, zlib.crc32(struct.pack("<IQ", len(payload), ordinal)))
    return struct.pack("<4sIIQ", b"CWS1", len(payload), crc, ordinal) + payload


def test_an_earlier_gateways_ms_records_come_back_in_ns_and_new_ones_follow(
    tmp_path: Path,
) -> None:
    """A spool left by the previous version (ms lines) is replayed after an upgrade: its
    records are told apart by their magic, and read back timed in ns like the new ones."""
    old = [b"cuff_telemetry,cuff=c1 seq=1i,p=1.5 1763900000123\n",
           b'alert,cuff=c1 state="firing",message="limit 300" 1763900000500\nm v=1i 1763900000501']
    (tmp_path / segment_name(0)).write_bytes(
        b"".join(legacy_record(p, i) for i, p in enumerate(old, 1)))
    new = b"cuff_telemetry,cuff=c1 seq=2i,p=1.5 1763900000124000002\n"
    upgraded = [b"cuff_telemetry,cuff=c1 seq=1i,p=1.5 1763900000123000000\n",
                b'alert,cuff=c1 state="firing",message="limit 300" 1763900000500000000\n'
                b"m v=1i 1763900000501000000",
                new]
    with Spool(tmp_path) as spool:
        assert (spool.corrupt_records, spool.records_pending) == (0, 2)
        position = spool.append(new)  # into the old segment, after the old records
        records = spool.read(0, 1 << 20)
        assert [p for _, p in records] == upgraded
        assert records[-1][0] == position
        spool.mark_written(records[0][0])  # the mark reads an old record's header too
        assert spool.records_pending == 2
    assert len(segment_files(tmp_path)) == 1
    with Spool(tmp_path) as spool:  # recovery accepts both versions
        assert (spool.corrupt_records, spool.records_pending) == (0, 2)
        assert [p for _, p in spool.read(spool.written_position, 1 << 20)] == upgraded[1:]


def test_a_corrupt_middle_segment_loses_only_its_tail(tmp_path: Path) -> None:
    record = HEADER_BYTES + 50
    data = payloads(9)
    with Spool(tmp_path, segment_bytes=3 * record) as spool:
        for p in data:
            spool.append(p)
    middle = segment_files(tmp_path)[1]
    with middle.open("r+b") as f:
        f.seek(record + HEADER_BYTES + 3)  # inside the 5th record's payload
        f.write(b"#")
    with Spool(tmp_path, segment_bytes=3 * record) as spool:
        assert [p for _, p in spool.read(0, 1 << 20)] == data[:4] + data[6:]
        assert spool.corrupt_records == 1
        assert spool.records_pending == 7


def test_a_malformed_mark_replays_everything(tmp_path: Path) -> None:
    data = payloads(3)
    with Spool(tmp_path) as spool:
        positions = [spool.append(p) for p in data]
        spool.mark_written(positions[0])
    (tmp_path / MARK_FILE).write_text("nonsense")
    with Spool(tmp_path) as spool:
        assert spool.records_pending == 3
        assert [p for _, p in spool.read(spool.written_position, 1 << 20)] == data


def test_a_mark_inside_a_record_rounds_down_to_its_start(tmp_path: Path) -> None:
    data = payloads(3)
    with Spool(tmp_path) as spool:
        positions = [spool.append(p) for p in data]
    (tmp_path / MARK_FILE).write_text(f"cuffwatch-spool-mark 1 {positions[1] - 10} 2\n")
    with Spool(tmp_path) as spool:
        assert spool.written_position == positions[0]
        assert [p for _, p in spool.read(spool.written_position, 1 << 20)] == data[1:]


CRASHER = textwrap.dedent(
    """
    import os, sys
    from ingest.spool import Spool
    spool = Spool(sys.argv[1], segment_bytes=int(sys.argv[3]))
    for i in range(int(sys.argv[2])):
        spool.append(f"line {i}".encode())
    spool.sync()  # what the gateway acknowledges: these must survive
    for i in range(int(sys.argv[2]), int(sys.argv[2]) + 100):
        spool.append(f"line {i}".encode())  # appended, never synced: may be lost
    if sys.argv[4] == "torn":
        fd = os.open(sorted(p for p in os.listdir(sys.argv[1]) if p.endswith(".seg"))[-1],
                     os.O_WRONLY | os.O_APPEND, dir_fd=os.open(sys.argv[1], os.O_RDONLY))
        os.write(fd, b"CWS1\\x10\\x00")  # half a header, as a crash in mid-write leaves it
    os._exit(9)  # like kill -9: no close, no sync, no flush of anything
    """
)


@pytest.mark.parametrize("ending", ["clean", "torn"])
def test_synced_records_survive_a_killed_process(tmp_path: Path, ending: str) -> None:
    subprocess.run(
        [sys.executable, "-c", CRASHER, str(tmp_path), "500", "4096", ending],
        check=False,
        cwd=REPO,
    )
    with Spool(tmp_path, segment_bytes=4096) as spool:
        records = [p for _, p in spool.read(0, 1 << 20)]
        # every synced record, then perhaps some of the unsynced ones, in order: a prefix
        assert len(records) >= 500
        assert records == [f"line {i}".encode() for i in range(len(records))]
        assert spool.corrupt_records == (1 if ending == "torn" else 0)
        assert spool.records_pending == len(records)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=40),
    segment_bytes=st.integers(64, 2000),
    marks=st.lists(st.integers(0, 39), max_size=5),
)
def test_any_sequence_of_appends_and_marks_reads_back_consistently(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], segment_bytes: int, marks: list[int]
) -> None:
    directory = tmp_path_factory.mktemp("spool")
    data = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    with Spool(directory, segment_bytes=segment_bytes) as spool:
        positions = [spool.append(p) for p in data]
        written = 0
        for m in sorted(marks):
            if m < len(positions):
                spool.mark_written(positions[m])
                written = max(written, m + 1)
        assert spool.records_pending == len(data) - written
        expected = list(zip(positions[written:], data[written:], strict=True))
        assert spool.read(spool.written_position, 1 << 30) == expected
    with Spool(directory, segment_bytes=segment_bytes) as spool:
        assert spool.records_pending == len(data) - written
        assert spool.read(spool.written_position, 1 << 30) == expected
        assert spool.bytes_used == sum(os.path.getsize(p) for p in segment_files(directory))


# -- group commit ---------------------------------------------------------------------------


async def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        committer = GroupCommitter(spool)
        positions = await asyncio.gather(*(committer.append(p) for p in payloads(200)))
        assert sorted(positions) == positions
        assert spool.synced_position == spool.end_position == positions[-1]
        # the first append's sync may start before the others append: at most one more
        assert 1 <= committer.syncs <= 2


async def test_group_commit_refuses_at_once_when_full(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=HEADER_BYTES + 100) as spool:
        committer = GroupCommitter(spool)
        await committer.append(b"x" * 100)
        with pytest.raises(SpoolFull):
            await committer.append(b"y")


async def test_a_cancelled_waiter_does_not_cancel_the_shared_sync(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        committer = GroupCommitter(spool)
        first = asyncio.create_task(committer.append(b"first"), name="test.first")
        second = asyncio.create_task(committer.append(b"second"), name="test.second")
        await asyncio.sleep(0)  # both appended, both waiting on the one sync
        first.cancel()
        position = await second
        assert spool.synced_position >= position
        with pytest.raises(asyncio.CancelledError):
            await first
        assert [p for _, p in spool.read(0, 100)] == [b"first", b"second"]



async def test_an_appender_that_finds_a_finished_sync_starts_the_next(tmp_path: Path) -> None:
    """A task can run after a sync future is done but before its done-callback cleared it.

    (Seen under load: the task spun on the finished future forever, never yielding.)
    """
    with Spool(tmp_path) as spool:
        committer = GroupCommitter(spool)
        finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        finished.set_result(None)
        committer._sync = finished  # the state that window leaves behind
        position = await committer.append(b"late")
        assert spool.synced_position >= position
        assert committer.syncs == 1


def test_appends_wait_in_memory_until_sync_and_the_buffer_is_bounded(tmp_path: Path) -> None:
    from ingest.spool import WRITE_BUFFER_BYTES

    with Spool(tmp_path) as spool:
        spool.append(b"x" * 100)
        [seg] = segment_files(tmp_path)
        assert seg.stat().st_size == 0  # buffered: no syscall per record
        spool.sync()
        assert seg.stat().st_size == HEADER_BYTES + 100
        record = b"y" * 4000
        for _ in range(WRITE_BUFFER_BYTES // len(record) + 2):
            spool.append(record)
        on_disk = seg.stat().st_size
        assert on_disk > HEADER_BYTES + 100  # the append that would overflow wrote it out
        assert spool.end_position - on_disk <= WRITE_BUFFER_BYTES
        # a read sees buffered records too
        assert len(spool.read(0, 1 << 30)) == WRITE_BUFFER_BYTES // len(record) + 3


def test_a_failed_write_out_keeps_every_record_for_the_next_sync(tmp_path: Path) -> None:
    # A real write failure: the active segment's descriptor is swapped for a read-only one
    # (EBADF on write), then restored, as a disk that fails and comes back.
    with Spool(tmp_path) as spool:
        first = spool.append(b"a" * 10)
        spool.sync()
        positions = [spool.append(f"b{i}".encode()) for i in range(50)]
        fd = spool._active_fd
        assert fd is not None
        [seg] = segment_files(tmp_path)
        saved = os.dup(fd)
        readonly = os.open(seg, os.O_RDONLY)
        os.dup2(readonly, fd)
        try:
            with pytest.raises(SpoolError):
                spool.sync()
            assert spool.synced_position == first  # nothing unsynced is reported durable
            with pytest.raises(SpoolError):
                spool.read(0, 1 << 20)
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            os.close(readonly)
        spool.sync()
        assert spool.synced_position == positions[-1]
    with Spool(tmp_path) as spool:
        got = [p for _, p in spool.read(0, 1 << 20)]
        assert got == [b"a" * 10] + [f"b{i}".encode() for i in range(50)]
        assert spool.corrupt_records == 0


# -- a full disk ---------------------------------------------------------------------------------


def test_a_full_disk_splits_the_segment_so_what_is_on_disk_drains_and_frees_it(
    tmp_path: Path,
) -> None:
    with Spool(tmp_path) as spool:
        on_disk = [spool.append(f"a{i}".encode()) for i in range(5)]
        assert len(spool.read(0, 1 << 20)) == 5  # written out (not fsynced yet)
        buffered = [spool.append(f"b{i}".encode()) for i in range(5)]
        with refusing_writes():
            with pytest.raises(DiskFull) as info:
                spool.sync()
            assert info.value.errno == errno.EFBIG
            assert spool.disk_full
            refusals = spool.disk_full_refusals
            # what the file held is durable, the buffer is not
            assert spool.synced_position == on_disk[-1]
            assert spool.in_files_position == on_disk[-1]
            # the file's records are a segment of their own: readable without a write, and
            # deleted once InfluxDB has them (the room the buffer then takes)
            assert [p for _, p in spool.read(0, 1 << 20)] == [f"a{i}".encode() for i in range(5)]
            assert spool.segment_count == 2
            spool.mark_written(on_disk[-1])  # its mark file cannot be written: a hint only
            # left: the buffer's segment, its file created and still empty
            [rest] = segment_files(tmp_path)
            assert (rest.name, rest.stat().st_size) == (segment_name(on_disk[-1]), 0)
            with pytest.raises(DiskFull):
                spool.sync()
            assert spool.disk_full_refusals > refusals
            assert spool.synced_position == on_disk[-1]
        assert spool.disk_full  # nothing written yet
        spool.sync()  # the buffered records' own segment is created and written
        assert (spool.disk_full, spool.synced_position) == (False, buffered[-1])
        assert [f.name for f in segment_files(tmp_path)] == [segment_name(on_disk[-1])]
    with Spool(tmp_path) as spool:
        assert [p for _, p in spool.read(0, 1 << 20)] == [f"b{i}".encode() for i in range(5)]


def test_a_full_disk_refuses_appends_past_the_buffer_and_changes_nothing(tmp_path: Path) -> None:
    from ingest.spool import WRITE_BUFFER_BYTES

    with Spool(tmp_path) as spool:
        spool.append(b"x" * 100)
        spool.sync()
        record = b"y" * 4000
        appended = 0
        with refusing_writes():
            for _ in range(WRITE_BUFFER_BYTES // (HEADER_BYTES + len(record))):
                spool.append(record)
                appended += 1
            end = spool.end_position
            with pytest.raises(DiskFull):
                spool.append(record)  # the buffer is full and cannot be written out
            assert spool.end_position == end
        end = spool.end_position
        assert not spool.full  # the cap is another state
        spool.sync()
        assert spool.synced_position == end
    with Spool(tmp_path) as spool:
        assert [p for _, p in spool.read(0, 1 << 30)] == [b"x" * 100] + [record] * appended


def test_a_mark_past_the_buffer_of_a_full_disk_drops_it(tmp_path: Path) -> None:
    # InfluxDB took records that never reached the disk (memory mode): they are stored, so
    # they need no room on disk, and what waited for them is durable.
    with Spool(tmp_path) as spool:
        spool.append(b"a")
        spool.sync()
        positions = [spool.append(f"b{i}".encode()) for i in range(3)]
        with refusing_writes():
            with pytest.raises(DiskFull):
                spool.sync()
            spool.mark_written(positions[1])  # the mark reads a header from the buffer
            spool.mark_written(positions[-1])
        assert spool.records_pending == 0
        assert segment_files(tmp_path) == []
        spool.sync()
        assert spool.synced_position == positions[-1]
        assert spool.disk_full  # nothing was written: the disk has not said it has room
        later = spool.append(b"c")
        spool.sync()
        assert (spool.disk_full, spool.synced_position) == (False, later)
        assert [p for _, p in spool.read(positions[-1], 1 << 20)] == [b"c"]
        assert spool.end_position == later
