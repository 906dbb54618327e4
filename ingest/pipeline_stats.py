"""The ingest pipeline's state and numbers: `PipelineState` and the `PipelineStats` snapshot."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, fields

__all__ = ["REFUSING_S", "PipelineState", "PipelineStats"]

# After InfluxDB refuses a batch the pipeline counts as `refusing` (the gateway reports
# `degraded`) this long: long enough to be seen by someone checking the status or a
# dashboard that refreshes every 30 s, and it clears by itself once the cause is gone.
REFUSING_S = 300.0


class PipelineState(enum.StrEnum):
    """Where the pipeline is (STYLE: name the states)."""

    OK = "ok"  # batches come from memory; the last write succeeded
    REPLAYING = "replaying"  # batches come from the spool (after an outage, a restart, a burst)
    FAILING = "failing"  # the last write failed; retrying with backoff


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineStats:
    """One moment's counters and gauges of the pipeline (`IngestPipeline.snapshot()`).

    Every field but `state` is a number; `gauges()` yields them for /metrics, where the
    gateway shows each as `ingest_<name>`.
    """

    state: PipelineState
    replaying: int  # 1 while batches come from the spool
    failing: int  # 1 while the last write failed
    submitted_lines: int
    written_lines: int
    batches: int
    failed_batches: int
    replayed_lines: int  # lines written that were read back from the spool
    rejected_lines: int
    rejected_batches: int
    last_batch_latency_s: float
    buffered_lines: int  # the in-memory queue's depth
    in_flight_lines: int
    buffered_bytes: int
    tail_lines: int  # replay mode: the latest submissions kept in memory
    max_buffer_lines: int
    spills: int  # times the buffer filled up and batches went back to the spool
    spooled_bytes: int  # the spool's bytes on disk
    pending_bytes: int  # the spool's bytes not yet in InfluxDB
    pending_records: int
    spool_full: int  # 1 while the spool refuses appends
    syncs: int  # group commits (fsyncs) so far
    refusing: int  # 1 for a while after InfluxDB refused a batch as bad data
    rejected_files_deleted: int  # saved refused batches deleted to bound <spool>/rejected/
    rejected_lines_deleted: int  # their lines
    rejected_unsaved_batches: int  # refused batches that could not be saved at all
    rejected_unsaved_lines: int  # their lines
    spool_disk_full: int  # 1 while the spool's disk refuses writes for lack of room
    spool_disk_full_refusals: int  # writes, creations and fsyncs the disk refused so far
    spool_read_failures: int  # replay's reads of the spool that failed
    disk_waits: int  # times replay waited for a full disk to take the write buffer

    def gauges(self) -> Iterator[tuple[str, float]]:
        """(name, value) for every numeric field, in field order (`state` is left out)."""
        for name in _NUMERIC_FIELDS:
            yield name, float(getattr(self, name))



_NUMERIC_FIELDS = tuple(f.name for f in fields(PipelineStats) if f.name != "state")
