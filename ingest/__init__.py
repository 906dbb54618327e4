"""Getting line protocol durably into InfluxDB: line builders, the spool, sinks, the pipeline.

The names below are re-exported lazily, so `import ingest` (and the CLI) stays fast until
something actually needs the InfluxDB client.

Modules, by stage (docs/architecture.md, "Durability path"):

- `lineproto`: line protocol for our measurements;
- `spool` (the writer, `GroupCommitter`), `spool_files` (segments, recovery, reading
  back), `spool_record` (the record format and its parser);
- `sinks`: InfluxDB 1.x, 2.x/3.x or files;
- `pipeline` (batching, retries, shutdown), `pipeline_memory` and `pipeline_replay` (its
  two modes), `pipeline_stats` (`PipelineState`, `PipelineStats`);
- `query` (analyst queries), `influxql` (the client), `query_output` (rows and formats);
- `errors`: every exception, under `IngestError`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ingest.errors import (
        DiskFull,
        IngestError,
        PermanentSinkError,
        QueryError,
        RejectedBatchError,
        SinkError,
        SpoolError,
        SpoolFull,
        TransientSinkError,
    )
    from ingest.pipeline import IngestPipeline
    from ingest.pipeline_stats import PipelineState, PipelineStats
    from ingest.sinks import FileSink, InfluxV1Sink, InfluxV2Sink, Sink, make_sink
    from ingest.spool import GroupCommitter, Spool

__all__ = [
    "DiskFull",
    "FileSink",
    "GroupCommitter",
    "InfluxV1Sink",
    "InfluxV2Sink",
    "IngestError",
    "IngestPipeline",
    "PermanentSinkError",
    "PipelineState",
    "PipelineStats",
    "QueryError",
    "RejectedBatchError",
    "Sink",
    "SinkError",
    "Spool",
    "SpoolError",
    "SpoolFull",
    "TransientSinkError",
    "make_sink",
]

_HOME = {
    "DiskFull": "errors",
    "IngestError": "errors",
    "PermanentSinkError": "errors",
    "QueryError": "errors",
    "RejectedBatchError": "errors",
    "SinkError": "errors",
    "SpoolError": "errors",
    "SpoolFull": "errors",
    "TransientSinkError": "errors",
    "IngestPipeline": "pipeline",
    "PipelineState": "pipeline_stats",
    "PipelineStats": "pipeline_stats",
    "GroupCommitter": "spool",
    "Spool": "spool",
}


def __getattr__(name: str) -> Any:
    """Import a re-exported name from its module on first use."""
    if name not in __all__:
        raise AttributeError(f"module 'ingest' has no attribute {name!r}")
    module = importlib.import_module(f"ingest.{_HOME.get(name, 'sinks')}")
    return getattr(module, name)
