"""The ingest pipeline's state and numbers: `PipelineState` and the `PipelineStats` snapshot."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, fields

__all__ = ["PipelineState", "PipelineStats"]


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

    def gauges(self) -> Iterator[tuple[str, float]]:
        """(name, value) for every numeric field, in field order (`state` is left out)."""
        for name in _NUMERIC_FIELDS:
            yield name, float(getattr(self, name))



_NUMERIC_FIELDS = tuple(f.name for f in fields(PipelineStats) if f.name != "state")
