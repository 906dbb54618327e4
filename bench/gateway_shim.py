"""`python -m bench.gateway_shim FIXES ARGS`: run `cuffwatch` with named hot-path fixes applied.

FIXES is a comma-separated list of names from `FIXES` (or `-` for none); ARGS go to
`ops.cli.main` unchanged. The benchmarks use this to measure a proposed change
(A/B in one run) before it lands in gateway/ or ingest/, and to keep measuring while a
known bug would otherwise stall the gateway. Each fix is the exact change proposed to
the lead; once it has landed, `needed()` says so and the benchmark stops applying it.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import Callable


def _spool_livelock_needed() -> bool:
    from ingest.spool import GroupCommitter

    return ".done()" not in inspect.getsource(GroupCommitter.wait_durable)


def _fix_spool_livelock() -> None:
    """GroupCommitter: never await a finished sync whose done-callback has not run yet.

    A message task scheduled between a sync's completion and its `_sync_done` callback
    finds `_sync` set to the finished future; awaiting it returns without yielding, so
    the task spins in `wait_durable` forever and the event loop (MQTT, /metrics, alerts)
    freezes. Seen with any burst of ~1,000 queued messages.
    """
    from ingest.spool import GroupCommitter

    async def wait_durable(self: GroupCommitter, position: int) -> None:
        while self.spool.synced_position < position:
            sync = self._sync
            if sync is None or sync.done():
                sync = self._start_sync()
            await asyncio.shield(sync)

    def _sync_done(self: GroupCommitter, sync: asyncio.Future[None]) -> None:
        if self._sync is sync:
            self._sync = None

    GroupCommitter.wait_durable = wait_durable  # type: ignore[method-assign]
    GroupCommitter._sync_done = _sync_done  # type: ignore[method-assign]


# name → (is it still needed in the code as it stands, apply it)
FIXES: dict[str, tuple[Callable[[], bool], Callable[[], None]]] = {
    "spool-livelock": (_spool_livelock_needed, _fix_spool_livelock),
}
REQUIRED = ("spool-livelock",)  # without these the gateway stalls under load: always applied


def needed(names: tuple[str, ...] = REQUIRED) -> list[str]:
    """The fixes among `names` that the current code still lacks."""
    return [n for n in names if FIXES[n][0]()]


def main(argv: list[str]) -> int:
    """Apply the fixes named in argv[0], then run the cuffwatch CLI on the rest."""
    names = [n for n in argv[0].split(",") if n and n != "-"]
    for name in names:
        FIXES[name][1]()
    from ops.cli import main as cli_main

    return cli_main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
