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

The modes' data live in `ingest.pipeline_memory` (the buffer) and `ingest.pipeline_replay`
(the read-ahead and the latest submissions); the numbers in `ingest.pipeline_stats`.

The pipeline starts in replay mode, so whatever a crash left in the spool goes first.
A failing write is retried with jittered exponential backoff (credentials or a missing
database: a slow fixed pace, logged loudly); a batch the server rejects as bad data is
counted, saved under `<spool>/rejected/` and passed over, never blocking what follows. It
is loud: logged, counted, and `refusing` for a while after (the gateway reports
`degraded`). `rejected/` is bounded (files and bytes); what the bound deletes, or what
could not be saved, is counted and logged too.

A full disk never stops replay: the spool reads back what its files hold without writing
first, and while the rest waits in its write buffer replay waits with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from core.backoff import jittered, nominal_delay
from ingest.errors import (
    IngestError,
    PermanentSinkError,
    RejectedBatchError,
    SpoolError,
    TransientSinkError,
)
from ingest.lineproto import PRECISION
from ingest.pipeline_memory import Batch, MemoryBuffer
from ingest.pipeline_replay import Replay
from ingest.pipeline_stats import REFUSING_S, PipelineState, PipelineStats
from ingest.sinks import Sink
from ingest.spool import GroupCommitter, Spool

__all__ = ["IngestPipeline", "PipelineState", "PipelineStats"]

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
# Rejected batches kept on disk for inspection; older ones are deleted (bounded disk use),
# counted and logged. rejected/ lives on the spool's disk, and one batch can be 20,000
# lines (~4 MB): the byte bound keeps it from filling the disk the spool needs.
MAX_REJECTED_FILES = 100
MAX_REJECTED_BYTES = 64 << 20
# aclose() waits this much beyond its timeout for run() to notice the deadline and return.
CLOSE_GRACE_S = 1.0
# Characters of a server's error text logged with a rejected batch.
LOG_TEXT_CHARS = 300


class _DeadlineReachedError(IngestError):
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
        rejected_max_files: int = MAX_REJECTED_FILES,
        rejected_max_bytes: int = MAX_REJECTED_BYTES,
        refusing_s: float = REFUSING_S,
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
        self.rejected_max_files = rejected_max_files
        self.rejected_max_bytes = rejected_max_bytes
        self.refusing_s = refusing_s
        self._refused_at: float | None = None  # time.monotonic() of the latest refusal
        self._wake = asyncio.Event()
        self._buffer = MemoryBuffer(self.max_buffer_lines, batch_lines, self._wake)
        self._replay = Replay(self.max_buffer_lines)
        self._memory = False  # replay first: the spool may hold what a crash left
        self._taken = spool.written_position  # last record in a batch in flight or written
        self._failing = False
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
        self.rejected_files_deleted = 0  # saved refused batches deleted to bound rejected/
        self.rejected_lines_deleted = 0  # their lines
        self.rejected_unsaved_batches = 0  # refused batches that could not be saved at all
        self.rejected_unsaved_lines = 0
        self.spool_read_failures = 0
        self.disk_waits = 0  # times replay waited for a full disk to take the write buffer
        self._read_failures = 0  # consecutive ones
        self._disk_waits = 0  # consecutive ones
        self.spills = 0
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
            if not self._memory:
                self._replay.keep(position, lines, count)
            elif not self._buffer.add(position, lines, count):
                self._spill(position, lines, count)
        return position

    async def wait_durable(self, position: int) -> None:
        """Return once everything up to `position` is fsynced; SpoolError if fsync fails."""
        await self.committer.wait_durable(position)

    def _spill(self, position: int, payload: bytes, count: int) -> None:
        """The sink lags: stop buffering, catch up from the spool after the last batch taken."""
        self._drop_buffer()
        self.spills += 1
        log.info("ingest: buffer full (%d lines): catching up from the spool",
                 self.max_buffer_lines)
        self._wake.set()
        self._replay.keep(position, payload, count)

    def _drop_buffer(self) -> None:
        self._memory = False
        self._buffer.clear()

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
                except Exception as exc:  # a sink bug must not stop ingest either: logged, retried
                    failures += 1
                    if not isinstance(exc, TransientSinkError | PermanentSinkError):
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

    async def _next_batch(self) -> Batch | None:
        """The next batch to send, or None when closing and nothing more can go."""
        buffer = self._buffer
        while True:
            if self._closing and self._past_deadline():
                return None
            if not self._memory:
                batch = await self._replay_batch()
                if batch is not None:
                    return batch
                continue
            if not buffer.entries:
                if self._closing:
                    return None
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._closing and buffer.lines < self.batch_lines:
                delay = buffer.entries[0].arrived + self.batch_interval_s - time.monotonic()
                if delay > 0:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._wake.wait()
                    continue  # re-evaluate: more lines, a spill or a close
            batch = buffer.take(self._taken, self.max_batch_lines)
            self._taken = batch.last_position
            return batch

    async def _replay_batch(self) -> Batch | None:
        """A batch read back from the spool; None after switching to memory mode (caught up)."""
        if not self._replay.read_ahead:
            try:
                records = await asyncio.to_thread(
                    self.spool.read, self._taken, self.replay_read_bytes
                )
            except (SpoolError, OSError) as exc:
                self._read_failures += 1
                self.spool_read_failures += 1
                if self._read_failures == 1:  # once per streak: a broken disk fails every read
                    log.error("ingest: reading the spool failed (%s); retrying with backoff", exc)
                await self._sleep(self._backoff(self._read_failures))
                return None
            if self._read_failures:
                log.warning("ingest: reading the spool works again after %d failure(s)",
                            self._read_failures)
                self._read_failures = 0
            if not records:
                # caught up, unless appended during the read (read again) or still in the
                # write buffer of a full disk (wait for room: a mark or the disk frees it)
                if not self._catch_up() and self.spool.disk_full:
                    self.disk_waits += 1
                    self._disk_waits += 1
                    await self._sleep(self._backoff(self._disk_waits))
                return None
            self._disk_waits = 0
            self._replay.add_read(records)
        if self._catch_up():
            return None
        batch = self._replay.take(self._taken, self.max_batch_lines)
        self._taken = batch.last_position
        return batch

    def _catch_up(self) -> bool:
        """Switch to memory mode if replay has caught up (`Replay.hand_over`); no await."""
        if not self._replay.hand_over(
            self._taken, self._buffer, self.max_batch_lines, self.spool.has_records_after
        ):
            return False
        self._memory = True
        log.debug("ingest: caught up with the spool")
        return True

    async def _write(self, batch: Batch) -> None:
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

    def _on_failure(self, batch: Batch, exc: BaseException, failures: int) -> None:
        """Forget memory and read-ahead; the next batches come from the spool after the mark."""
        self.failed_batches += 1
        self._failing = True
        self._drop_buffer()
        self._replay.drop_read_ahead()
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
            base = nominal_delay(failures, self.retry_initial_s, self.retry_max_s)
            if isinstance(exc, TransientSinkError) and exc.retry_after_s:
                base = max(base, min(exc.retry_after_s, self.retry_max_s))
        return jittered(base)

    def _backoff(self, attempt: int) -> float:
        """The write retries' jittered backoff, for waits on the spool."""
        return jittered(nominal_delay(attempt, self.retry_initial_s, self.retry_max_s))

    async def _sleep(self, delay: float) -> None:
        """Wait `delay` seconds, or less if aclose() is called meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._close_requested.wait()

    async def _set_aside(self, batch: Batch, exc: RejectedBatchError) -> None:
        """Count a batch the server refused as data, save it for inspection, pass over it."""
        self.rejected_batches += 1
        self.rejected_lines += exc.rejected_lines
        self._refused_at = time.monotonic()
        self.batches += 1
        self.written_lines += batch.lines - exc.rejected_lines  # partial writes keep the rest
        text = str(exc)[:LOG_TEXT_CHARS]
        try:
            path, deleted = await asyncio.to_thread(self._save_rejected, batch, str(exc))
        except OSError as err:
            self.rejected_unsaved_batches += 1
            self.rejected_unsaved_lines += batch.lines
            log.error(
                "ingest: InfluxDB rejected %d of %d line(s) (%s); the batch could not be saved "
                "(%s): %d refused batch(es) unsaved so far", exc.rejected_lines, batch.lines,
                text, err, self.rejected_unsaved_batches,
            )
            return
        log.error("ingest: InfluxDB rejected %d of %d line(s) (%s); batch saved as %s",
                  exc.rejected_lines, batch.lines, text, path)
        if deleted:
            files, lines = len(deleted), sum(deleted)
            self.rejected_files_deleted += files
            self.rejected_lines_deleted += lines
            log.warning(
                "ingest: deleted the %d oldest refused batch file(s) (%d line(s)) from %s to keep "
                "it within %d files and %d bytes; %d file(s), %d line(s) deleted so far",
                files, lines, self.rejected_dir, self.rejected_max_files, self.rejected_max_bytes,
                self.rejected_files_deleted, self.rejected_lines_deleted,
            )

    def _save_rejected(self, batch: Batch, reason: str) -> tuple[Path, list[int]]:
        """Save the batch; delete the oldest saved ones past the bounds. (path, lines of each
        file deleted)."""
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        path = self.rejected_dir / f"rejected-{stamp}-{batch.last_position}.lp"
        comment = " ".join(reason.split())
        head = f"# {comment}\n# timestamps in {PRECISION}\n"
        path.write_bytes(head.encode() + batch.body)
        saved = sorted(self.rejected_dir.glob("rejected-*.lp"), reverse=True)  # newest first
        kept_bytes = 0
        deleted: list[int] = []
        for k, old in enumerate(saved):
            try:
                size = old.stat().st_size
            except FileNotFoundError:
                continue
            kept_bytes += size
            if k == 0 or (k < self.rejected_max_files and kept_bytes <= self.rejected_max_bytes):
                continue  # the newest is always kept
            body = old.read_bytes()
            old.unlink(missing_ok=True)
            deleted.append(sum(1 for ln in body.splitlines() if ln and not ln.startswith(b"#")))
        return path, deleted

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
    def refusing(self) -> bool:
        """InfluxDB refused a batch as bad data within the last `refusing_s` seconds."""
        at = self._refused_at
        return at is not None and time.monotonic() - at < self.refusing_s

    @property
    def buffered_lines(self) -> int:
        """Lines held in memory waiting for a batch (the in-memory queue's depth)."""
        return self._buffer.lines

    def snapshot(self) -> PipelineStats:
        """Counters and gauges for /metrics, as of now."""
        state = self.state
        spool = self.spool
        return PipelineStats(
            state=state,
            replaying=int(state is PipelineState.REPLAYING),
            failing=int(state is PipelineState.FAILING),
            submitted_lines=self.submitted_lines,
            written_lines=self.written_lines,
            batches=self.batches,
            failed_batches=self.failed_batches,
            replayed_lines=self.replayed_lines,
            rejected_lines=self.rejected_lines,
            rejected_batches=self.rejected_batches,
            last_batch_latency_s=self.last_batch_latency_s,
            buffered_lines=self._buffer.lines,
            in_flight_lines=self.in_flight_lines,
            buffered_bytes=self._buffer.bytes,
            tail_lines=self._replay.tail_lines,
            max_buffer_lines=self.max_buffer_lines,
            spills=self.spills,
            spooled_bytes=spool.bytes_used,
            pending_bytes=spool.pending_bytes,
            pending_records=spool.records_pending,
            spool_full=int(spool.full),
            syncs=self.committer.syncs,
            refusing=int(self.refusing),
            rejected_files_deleted=self.rejected_files_deleted,
            rejected_lines_deleted=self.rejected_lines_deleted,
            rejected_unsaved_batches=self.rejected_unsaved_batches,
            rejected_unsaved_lines=self.rejected_unsaved_lines,
            spool_disk_full=int(spool.disk_full),
            spool_disk_full_refusals=spool.disk_full_refusals,
            spool_read_failures=self.spool_read_failures,
            disk_waits=self.disk_waits,
        )

    @property
    def max_buffered_lines_seen(self) -> int:
        """The most lines the buffer held between batches (a high-water mark)."""
        return self._buffer.max_lines_seen
