"""Batching line protocol to InfluxDB through the durable spool (SPEC §4; docs/architecture.md).

Guarantee: every line whose `submit()` returned is either in InfluxDB or in the spool on
disk (fsynced), and stays in the spool until a write that contains it succeeded. Lines
are written oldest first; a line may be written twice (a timed-out write that the
server applied anyway, or a crash between a write and its mark), which InfluxDB absorbs:
the same point written again overwrites itself.

How: `submit()` appends the lines to the spool and, while the pipeline is healthy, to a
bounded in-memory buffer too, then waits for the spool's group commit. `run()` sends
batches of `batch_lines` lines (up to 4x that when a backlog is waiting), or whatever
arrived within `batch_interval_s`, one batch in flight; after each success it advances the
spool's written mark, which frees whole segments. Two modes:

- memory: the buffer holds exactly the records after the last batch taken, so batches
  come from memory and the disk is only written, never read;
- replay: the buffer is dropped and batches are read back from the spool after the last
  batch taken (after the written mark once a write failed). New submissions go to the
  spool only, so memory stays bounded however long InfluxDB is away. Replay returns to
  memory mode when it has caught up with the spool's end — checked and switched without
  an await in between, so no record can slip past both.

The pipeline starts in replay mode, so whatever a crash left in the spool goes first.
A failing write is retried with jittered exponential backoff (credentials or a missing
database: a slow fixed pace, logged loudly); a batch the server rejects as bad data is
counted, saved under `<spool>/rejected/` and passed over, never blocking what follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import random
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ingest.sinks import PermanentSinkError, RejectedBatchError, Sink, TransientSinkError
from ingest.spool import HEADER_BYTES, GroupCommitter, Spool, SpoolError

__all__ = ["IngestPipeline", "PipelineState"]

log = logging.getLogger(__name__)

BATCH_LINES = 5000  # InfluxDB's recommended batch size: big enough to amortise a request
# A backlog goes out in batches up to this many times bigger: one batch is in flight at a
# time, so the write latency caps throughput at batch/latency. At 50,000 readings/s the
# 5,000-line batches took ~85 ms each (bench, arrays of 10): the sink, not the gateway, was
# the limit. Bigger batches only form when lines are already waiting (no added latency).
BACKLOG_BATCH_FACTOR = 4
BATCH_INTERVAL_S = 1.0  # a line waits at most this long for its batch (dashboards refresh at 5 s)
# The in-memory buffer's cap: this many full batches queue behind the one in flight before
# the pipeline stops buffering and catches up from the spool instead. At 50,000 readings/s
# two batches lasted 0.2 s, less than one slow InfluxDB write: the gateway kept falling into
# replay, and reading the spool back cost a fifth of a core (py-spy, arrays of 10). Eight
# last 0.8 s, for ~6 MB.
BUFFER_BATCHES = 8
# Replay reads about this much from the spool at a time: a few batches, bounded memory.
REPLAY_READ_BYTES = 4 << 20
RETRY_INITIAL_S = 0.5  # first retry after a failed write: a restarting InfluxDB is back soon
RETRY_MAX_S = 5.0  # backoff cap: dashboards catch up within ~5 s of InfluxDB coming back (soak)
# Credentials or a missing database need a human: probe slowly until the fix flows.
PERMANENT_RETRY_S = 60.0
# Rejected batches kept on disk for inspection; older ones are deleted (bounded disk use).
MAX_REJECTED_FILES = 100
# aclose() waits this much beyond its timeout for run() to notice the deadline and return.
CLOSE_GRACE_S = 1.0
# Characters of a server's error text logged with a rejected batch.
LOG_TEXT_CHARS = 300


class PipelineState(enum.StrEnum):
    """Where the pipeline is (STYLE: name the states)."""

    OK = "ok"  # batches come from memory; the last write succeeded
    REPLAYING = "replaying"  # batches come from the spool (after an outage, a restart, a burst)
    FAILING = "failing"  # the last write failed; retrying with backoff


@dataclass(slots=True)
class _Batch:
    """Records taken for one write, with the position of the last one."""

    body: bytes
    lines: int
    records: int
    last_position: int
    replayed_lines: int  # of `lines`, how many were read back from the spool


@dataclass(slots=True)
class _Entry:
    """A buffered record: it spans (position - HEADER_BYTES - len(payload), position]."""

    position: int
    payload: bytes
    lines: int
    arrived: float

    @property
    def start(self) -> int:
        """The position of the record before it (where this one's header begins)."""
        return self.position - HEADER_BYTES - len(self.payload)


def _line_count(payload: bytes) -> int:
    return payload.count(b"\n")


class _DeadlineReachedError(Exception):
    """aclose()'s deadline passed while a batch was being written."""


class IngestPipeline:
    """Spool-backed, batched, retried delivery of line protocol to a Sink (see module doc)."""

    def __init__(
        self,
        spool: Spool,
        sink: Sink,
        *,
        batch_lines: int = BATCH_LINES,
        batch_interval_s: float = BATCH_INTERVAL_S,
        max_buffer_lines: int | None = None,
        replay_read_bytes: int = REPLAY_READ_BYTES,
        retry_initial_s: float = RETRY_INITIAL_S,
        retry_max_s: float = RETRY_MAX_S,
        permanent_retry_s: float = PERMANENT_RETRY_S,
        rejected_dir: Path | str | None = None,
    ) -> None:
        """Deliver from `spool` (opened and closed by the caller) to `sink` (closed by aclose)."""
        if batch_lines < 1 or batch_interval_s <= 0:
            raise ValueError("batch_lines must be ≥ 1 and batch_interval_s > 0")
        self.spool = spool
        self.sink = sink
        self.committer = GroupCommitter(spool)
        self.batch_lines = batch_lines
        self.max_batch_lines = batch_lines * BACKLOG_BATCH_FACTOR
        self.batch_interval_s = batch_interval_s
        self.max_buffer_lines = max_buffer_lines or BUFFER_BATCHES * batch_lines
        self.replay_read_bytes = replay_read_bytes
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.permanent_retry_s = permanent_retry_s
        self.rejected_dir = Path(rejected_dir) if rejected_dir else spool.directory / "rejected"
        self._buffer: deque[_Entry] = deque()
        self._buffered_lines = 0
        self._buffered_bytes = 0
        # read from the spool, not yet sent: (position, payload, lines)
        self._replay: deque[tuple[int, bytes, int]] = deque()
        # replay mode: the latest submissions (a contiguous run, oldest dropped past the cap);
        # once replay reaches the first of them, memory mode resumes without a pause
        self._tail: deque[_Entry] = deque()
        self._tail_lines = 0
        self._memory = False  # replay first: the spool may hold what a crash left
        self._taken = spool.written_position  # last record in a batch in flight or written
        self._failing = False
        self._wake = asyncio.Event()
        self._close_requested = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False
        self._closing = False
        self._deadline: float | None = None  # event-loop time by which aclose() wants out
        self._scope: asyncio.Timeout | None = None
        # counters for /metrics
        self.submitted_lines = 0
        self.written_lines = 0
        self.batches = 0
        self.failed_batches = 0
        self.replayed_lines = 0
        self.rejected_lines = 0
        self.rejected_batches = 0
        self.spills = 0
        self.max_buffered_lines_seen = 0
        self.last_batch_latency_s = 0.0
        self.in_flight_lines = 0

    # -- the producer side ------------------------------------------------------------------

    async def submit(self, lines: bytes, count: int) -> None:
        """Return once `lines` (`count` lines) are durable in the spool; SpoolFull if no room."""
        await self.committer.wait_durable(self.submit_nowait(lines, count))

    def submit_nowait(self, lines: bytes, count: int) -> int:
        """Append `lines` to the spool (not yet fsynced) and return the position to wait for.

        The caller makes it durable with `wait_durable(position)`; the gateway's hot path
        collects many positions and waits once (one fsync, one batch of PUBACKs).
        """
        if lines and not lines.endswith(b"\n"):
            lines += b"\n"
        position = self.committer.append_nowait(lines)
        self.submitted_lines += count
        if not self._closing:
            if self._memory:
                self._buffer_record(position, lines, count)
            else:
                self._tail_record(position, lines, count)
        return position

    async def wait_durable(self, position: int) -> None:
        """Return once everything up to `position` is fsynced; SpoolError if fsync fails."""
        await self.committer.wait_durable(position)

    def _buffer_record(self, position: int, payload: bytes, count: int) -> None:
        if self._buffered_lines + count > self.max_buffer_lines:
            # the sink lags: stop buffering, catch up from the spool after the last batch taken
            self._drop_buffer()
            self.spills += 1
            log.info("ingest: buffer full (%d lines): catching up from the spool",
                     self.max_buffer_lines)
            self._wake.set()
            self._tail_record(position, payload, count)
            return
        self._buffer.append(_Entry(position, payload, count, time.monotonic()))
        self._buffered_lines += count
        self._buffered_bytes += len(payload)
        self.max_buffered_lines_seen = max(self.max_buffered_lines_seen, self._buffered_lines)
        if len(self._buffer) == 1 or self._buffered_lines >= self.batch_lines:
            self._wake.set()

    def _tail_record(self, position: int, payload: bytes, count: int) -> None:
        tail = self._tail
        tail.append(_Entry(position, payload, count, time.monotonic()))
        self._tail_lines += count
        while self._tail_lines > self.max_buffer_lines:
            self._tail_lines -= tail.popleft().lines

    def _drop_buffer(self) -> None:
        self._memory = False
        self._buffer.clear()
        self._buffered_lines = 0
        self._buffered_bytes = 0

    # -- the consumer side ------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver batches until `aclose()`; the gateway runs this in its TaskGroup."""
        if self._running or self._closing:
            raise RuntimeError("IngestPipeline.run() is already running or closed")
        self._running = True
        failures = 0
        try:
            if self.spool.records_pending:
                log.info("ingest: replaying %d record(s) left in the spool",
                         self.spool.records_pending)
            while True:
                batch = await self._next_batch()
                if batch is None:
                    return
                try:
                    await self._write(batch)
                except _DeadlineReachedError:
                    log.warning("ingest: shutdown deadline reached; the rest stays in the spool")
                    return
                except RejectedBatchError as exc:
                    await self._set_aside(batch, exc)
                except (TransientSinkError, PermanentSinkError) as exc:
                    failures += 1
                    self._on_failure(batch, exc, failures)
                    if self.closing:
                        return
                    await self._sleep(self._retry_delay(exc, failures))
                    continue
                except Exception as exc:  # a sink bug must not stop ingest: logged, retried
                    failures += 1
                    log.exception("ingest: unexpected error from the sink")
                    self._on_failure(batch, exc, failures)
                    if self.closing:
                        return
                    await self._sleep(self._retry_delay(exc, failures))
                    continue
                if failures:
                    log.warning("ingest: InfluxDB writes succeed again after %d failure(s)",
                                failures)
                failures = 0
                self._failing = False
                self._mark(batch.last_position)
        finally:
            self._running = False
            self._stopped.set()

    async def _next_batch(self) -> _Batch | None:
        """The next batch to send, or None when closing and nothing more can go."""
        while True:
            if self._closing and self._past_deadline():
                return None
            if not self._memory:
                batch = await self._replay_batch()
                if batch is not None:
                    return batch
                continue
            if not self._buffer:
                if self._closing:
                    return None
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._closing and self._buffered_lines < self.batch_lines:
                delay = self._buffer[0].arrived + self.batch_interval_s - time.monotonic()
                if delay > 0:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._wake.wait()
                    continue  # re-evaluate: more lines, a spill or a close
            return self._memory_batch()

    def _memory_batch(self) -> _Batch:
        parts: list[bytes] = []
        lines = replayed = 0
        last = self._taken
        while self._buffer and (
            not parts or lines + self._buffer[0].lines <= self.max_batch_lines
        ):
            entry = self._buffer.popleft()
            parts.append(entry.payload)
            lines += entry.lines
            if entry.arrived == -math.inf:  # read back by replay, adopted by the buffer
                replayed += entry.lines
            last = entry.position
            self._buffered_lines -= entry.lines
            self._buffered_bytes -= len(entry.payload)
        self._taken = last
        # what stays between batches (right after a switch from replay it may have been more)
        self.max_buffered_lines_seen = max(self.max_buffered_lines_seen, self._buffered_lines)
        return _Batch(b"".join(parts), lines, len(parts), last, replayed)

    async def _replay_batch(self) -> _Batch | None:
        """A batch read back from the spool; None after switching to memory mode (caught up)."""
        if not self._replay:
            after = self._taken
            try:
                records = await asyncio.to_thread(self.spool.read, after, self.replay_read_bytes)
            except (SpoolError, OSError):
                log.exception("ingest: reading the spool failed; retrying")
                await self._sleep(self.retry_initial_s)
                return None
            if not records:
                self._adopt_tail()  # caught up, unless appended during the read: read again
                return None
            for position, raw in records:
                payload = raw if raw.endswith(b"\n") else raw + b"\n"
                self._replay.append((position, payload, _line_count(payload)))
        if self._adopt_tail():
            return None
        parts: list[bytes] = []
        lines = 0
        last = self._taken
        while self._replay:
            position, payload, count = self._replay[0]
            if parts and lines + count > self.max_batch_lines:
                break
            self._replay.popleft()
            parts.append(payload)
            lines += count
            last = position
        self._taken = last
        return _Batch(b"".join(parts), lines, len(parts), last, lines)

    def _adopt_tail(self) -> bool:
        """Switch to memory mode once replay has caught up with the spool's end.

        Caught up means: what replay has read ends where the latest submissions (`_tail`,
        kept in replay mode) begin, or at the spool's end. Under a steady stream the spool
        grows during every read, so replay alone would never find its end; with the tail it
        only has to reach the tail's first record. The read-ahead and the tail then become
        the buffer, if what stays after the batch taken at once leaves a batch's worth of
        room (so the next submission does not spill at once). No await between check and
        switch: no submission can slip past both.
        """
        replay, tail = self._replay, self._tail
        end = replay[-1][0] if replay else self._taken
        while tail and tail[0].position <= end:  # read back from the spool already
            self._tail_lines -= tail.popleft().lines
        if tail:
            if tail[0].start != end:
                return False  # a gap: the tail dropped older records, replay must read on
        elif self.spool.has_records_after(end):
            return False  # appended while tail was off (closing): read on
        # The caller takes a batch at once (no await between): up to max_batch_lines leave,
        # and what stays must leave a batch's worth of room, or the next submission spills.
        # (Demanding that room before the batch left kept a stream within a batch of the
        # sink's capacity in replay for good: a full bench run read 1.44M of 1.85M lines
        # back from disk.)
        replayed_lines = sum(count for _, _, count in replay)
        staying = replayed_lines + self._tail_lines - self.max_batch_lines
        if staying > self.max_buffer_lines - self.batch_lines:
            return False
        for position, payload, count in replay:
            # arrived long ago: these go out without waiting for the batch interval
            self._buffer.append(_Entry(position, payload, count, arrived=-math.inf))
            self._buffered_lines += count
            self._buffered_bytes += len(payload)
        for entry in tail:
            self._buffer.append(entry)
            self._buffered_lines += entry.lines
            self._buffered_bytes += len(entry.payload)
        replay.clear()
        tail.clear()
        self._tail_lines = 0
        self._memory = True
        log.debug("ingest: caught up with the spool")
        return True

    async def _write(self, batch: _Batch) -> None:
        """Send one batch; under a deadline once closing (TimeoutError when it passes)."""
        started = time.monotonic()
        self.in_flight_lines = batch.lines
        try:
            async with asyncio.timeout_at(self._deadline) as scope:
                self._scope = scope
                try:
                    await self.sink.write(batch.body, batch.lines)
                finally:
                    self._scope = None
                    self.in_flight_lines = 0
        except TimeoutError as exc:
            if scope.expired():
                raise _DeadlineReachedError from exc
            raise TransientSinkError(f"sink timed out: {exc!r}") from exc
        self.last_batch_latency_s = time.monotonic() - started
        self.batches += 1
        self.written_lines += batch.lines
        self.replayed_lines += batch.replayed_lines

    def _mark(self, position: int) -> None:
        try:
            self.spool.mark_written(position)
        except (SpoolError, OSError):
            # the lines are in InfluxDB; a stale mark only replays them again after a restart
            log.exception("ingest: could not advance the spool's written mark")

    def _on_failure(self, batch: _Batch, exc: BaseException, failures: int) -> None:
        """Forget memory and read-ahead; the next batches come from the spool after the mark."""
        self.failed_batches += 1
        self._failing = True
        self._drop_buffer()
        self._replay.clear()
        self._taken = self.spool.written_position
        loud = isinstance(exc, PermanentSinkError) or failures == 1
        log.log(
            logging.ERROR if loud else logging.WARNING,
            "ingest: writing %d line(s) failed (%s; attempt %d); kept in the spool",
            batch.lines, exc, failures,
        )

    def _retry_delay(self, exc: BaseException, failures: int) -> float:
        """Jittered exponential backoff; slow and fixed for credential/database problems."""
        if isinstance(exc, PermanentSinkError):
            base = self.permanent_retry_s
        else:
            base = min(self.retry_max_s, self.retry_initial_s * 2 ** min(failures - 1, 30))
            if isinstance(exc, TransientSinkError) and exc.retry_after_s:
                base = max(base, min(exc.retry_after_s, self.retry_max_s))
        return base / 2 + random.uniform(0, base / 2)

    async def _sleep(self, delay: float) -> None:
        """Wait `delay` seconds, or less if aclose() is called meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._close_requested.wait()

    async def _set_aside(self, batch: _Batch, exc: RejectedBatchError) -> None:
        """Count a batch the server refused as data, save it for inspection, pass over it."""
        self.rejected_batches += 1
        self.rejected_lines += exc.rejected_lines
        self.batches += 1
        self.written_lines += batch.lines - exc.rejected_lines  # partial writes keep the rest
        try:
            path = await asyncio.to_thread(self._save_rejected, batch, str(exc))
        except OSError as err:
            path = None
            log.warning("ingest: could not save the rejected batch: %s", err)
        log.error(
            "ingest: InfluxDB rejected %d of %d line(s) (%s); batch saved as %s",
            exc.rejected_lines, batch.lines, str(exc)[:LOG_TEXT_CHARS], path,
        )

    def _save_rejected(self, batch: _Batch, reason: str) -> Path:
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        path = self.rejected_dir / f"rejected-{stamp}-{batch.last_position}.lp"
        comment = " ".join(reason.split())
        path.write_bytes(f"# {comment}\n".encode() + batch.body)
        saved = sorted(self.rejected_dir.glob("rejected-*.lp"))
        for old in saved[:-MAX_REJECTED_FILES]:
            old.unlink(missing_ok=True)
        return path

    # -- shutdown -------------------------------------------------------------------------------

    def _past_deadline(self) -> bool:
        return self._deadline is not None and asyncio.get_running_loop().time() >= self._deadline

    async def aclose(self, timeout_s: float) -> None:
        """Flush what can go within `timeout_s` (shielded), leave the rest in the spool, close."""
        if not self._closing:
            self._closing = True
            self._deadline = asyncio.get_running_loop().time() + timeout_s
            if self._scope is not None:
                self._scope.reschedule(self._deadline)
            self._close_requested.set()
            self._wake.set()
        if self._running:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s + CLOSE_GRACE_S):
                    await asyncio.shield(self._stopped.wait())
        await asyncio.shield(self.sink.close())
        with contextlib.suppress(SpoolError):  # records of cancelled submitters, if any
            await asyncio.shield(asyncio.to_thread(self.spool.sync))
        log.info("ingest: closed; %d record(s) left in the spool", self.spool.records_pending)

    # -- state ----------------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """aclose() was called: run() sends what it can before the deadline, then returns."""
        return self._closing

    @property
    def state(self) -> PipelineState:
        """ok, replaying or failing."""
        if self._failing:
            return PipelineState.FAILING
        return PipelineState.OK if self._memory else PipelineState.REPLAYING

    @property
    def buffered_lines(self) -> int:
        """Lines held in memory waiting for a batch (the in-memory queue's depth)."""
        return self._buffered_lines

    def stats(self) -> dict[str, int | float | str]:
        """Counters and gauges for /metrics (`state` is text; the rest are numbers)."""
        state = self.state
        return {
            "state": state.value,
            "replaying": int(state is PipelineState.REPLAYING),
            "failing": int(state is PipelineState.FAILING),
            "submitted_lines": self.submitted_lines,
            "written_lines": self.written_lines,
            "batches": self.batches,
            "failed_batches": self.failed_batches,
            "replayed_lines": self.replayed_lines,
            "rejected_lines": self.rejected_lines,
            "rejected_batches": self.rejected_batches,
            "last_batch_latency_s": self.last_batch_latency_s,
            "buffered_lines": self._buffered_lines,
            "in_flight_lines": self.in_flight_lines,
            "buffered_bytes": self._buffered_bytes,
            "tail_lines": self._tail_lines,
            "max_buffer_lines": self.max_buffer_lines,
            "spills": self.spills,
            "spooled_bytes": self.spool.bytes_used,
            "pending_bytes": self.spool.pending_bytes,
            "pending_records": self.spool.records_pending,
            "spool_full": int(self.spool.full),
            "syncs": self.committer.syncs,
        }
