"""Getting line protocol durably into InfluxDB: line builders, the spool, sinks, the pipeline.

The names below are re-exported lazily, so `import ingest` (and the CLI) stays fast until
something actually needs the InfluxDB client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ingest.pipeline import IngestPipeline, PipelineState
    from ingest.sinks import (
        FileSink,
        InfluxV1Sink,
        InfluxV2Sink,
        PermanentSinkError,
        RejectedBatchError,
        Sink,
        SinkError,
        TransientSinkError,
        make_sink,
    )
    from ingest.spool import GroupCommitter, Spool, SpoolError, SpoolFull

__all__ = [
    "FileSink",
    "GroupCommitter",
    "InfluxV1Sink",
    "InfluxV2Sink",
    "IngestPipeline",
    "PermanentSinkError",
    "PipelineState",
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
    "IngestPipeline": "pipeline",
    "PipelineState": "pipeline",
    "GroupCommitter": "spool",
    "Spool": "spool",
    "SpoolError": "spool",
    "SpoolFull": "spool",
}


def __getattr__(name: str) -> Any:
    """Import a re-exported name from its module on first use."""
    if name not in __all__:
        raise AttributeError(f"module 'ingest' has no attribute {name!r}")
    module = importlib.import_module(f"ingest.{_HOME.get(name, 'sinks')}")
    return getattr(module, name)
