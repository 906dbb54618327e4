"""Disk soak: the spool's disk fills and empties, again and again; every reading is counted.

The soak's squad (`bench.soak`: cuffs over MQTT 3.1.1 persistent sessions, each keeping
what the broker has not PUBACKed, so the denominator is exact) streams into a gateway whose
spool lives on a small real filesystem (`tests/support/small_disk.py`: a tmpfs, or a
file-size limit on the gateway where mount is refused). Each cycle:

1. InfluxDB is killed, so the spool takes everything and fills the disk; the gateway must
   report it (`cuffwatch_spool_disk_full`) while it holds acknowledgements;
2. the disk stays full for a while, readings still arriving (the broker keeps them);
3. InfluxDB is started again: the gateway drains the spool, which frees the disk, and
   recovers by itself (under a file-size limit the limit is lifted at the same moment).

The last cycle also stops the gateway with SIGTERM while the disk is full (its stop time is
reported) and starts it again with InfluxDB back. At the end every broker-acknowledged
reading is looked up in InfluxDB: `lost` must be 0. Also reported: each cycle's times (to
fill, full, to recover, to catch up), the episodes the gateway counted and the DISK FULL
lines it logged (one per episode), and the largest backlog of unacknowledged messages.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

from bench.infra import Servers, forget_sessions, gateway_config, roster
from bench.soak import (
    Monitor,
    SoakPublisher,
    expected_seqs,
    mb,
    start_gateway,
    storage_accounting,
    wait_drained,
    wait_publisher,
)
from tests.support.gateway_process import GatewayProcess, GatewayProcessError
from tests.support.small_disk import SmallDisk

POLL_S = 0.1
FULL_TIMEOUT_S = 120.0  # the disk fills in seconds at this rate; a minute more is a bug
RECOVERY_TIMEOUT_S = 120.0
CATCH_UP_TIMEOUT_S = 180.0
DISK_FULL_LINE = "DISK FULL"


@dataclass(frozen=True, slots=True)
class DiskProfile:
    """How big the disk is, how many times it fills, how long it stays full."""

    cuffs: int
    disk_bytes: int
    cycles: int
    warm_s: float
    full_s: float  # the disk stays full this long, readings still arriving
    gap_s: float  # steady streaming after each cycle has caught up
    fsize_fill_s: float  # under a file-size limit: InfluxDB away this long before the squeeze


QUICK = DiskProfile(cuffs=200, disk_bytes=1 << 20, cycles=2, warm_s=2, full_s=3, gap_s=2,
                    fsize_fill_s=3)
FULL = DiskProfile(cuffs=200, disk_bytes=2 << 20, cycles=3, warm_s=5, full_s=8, gap_s=5,
                   fsize_fill_s=8)


def _metric(gw: GatewayProcess, name: str) -> float | None:
    with contextlib.suppress(OSError, GatewayProcessError, ValueError):
        return gw.metrics(timeout=2.0).get(name)
    return None


def _until(what: str, condition: Any, timeout: float) -> float:
    """Poll until `condition()`; when it held. RuntimeError after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"disk soak: no {what} within {timeout:.0f} s")
        time.sleep(POLL_S)
    return time.monotonic()


def _log_count(gw: GatewayProcess, text: str) -> int:
    try:
        return sum(text in line for line in gw.log_path.read_text(errors="replace").splitlines())
    except FileNotFoundError:
        return 0


def disk_soak(srv: Servers, *, quick: bool) -> dict[str, Any]:
    """Run the disk soak (QUICK or FULL profile); the figures for latest.json."""
    p = QUICK if quick else FULL
    db = srv.fresh_database("bench_disk_soak")
    name = f"disksoak-{int(time.time() * 1000) % 10**8}"
    disk = SmallDisk.create(srv.tmp / f"disk-{name}", p.disk_bytes)
    spool_dir = disk.path / "spool"
    cfg, port = gateway_config(srv, name=name, database=db, teams=roster(p.cuffs, 0),
                               spool_dir=spool_dir)
    gw = GatewayProcess(cfg, port, srv.tmp / f"{name}.log", log_pipe=True)
    pub = SoakPublisher(srv, p.cuffs, prefix=f"diskpub{int(time.time()) % 10**6}")
    monitor = Monitor(srv, db, gw, pub, spool_dir)
    cycles: list[dict[str, Any]] = []
    episodes = 0.0  # the gateway's own count, summed over its lives
    try:
        start_gateway(gw)
        time.sleep(0.3)  # SUBACK before the first reading
        pub.start()
        wait_publisher(pub, p.cuffs, 30)
        t_start = pub.latest()["t0"]
        monitor.start()
        time.sleep(p.warm_s)
        for k in range(p.cycles):
            last = k == p.cycles - 1
            print(f"bench: disk soak: cycle {k + 1} of {p.cycles} …", flush=True)
            t_kill = time.monotonic()
            srv.influx.kill()
            if disk.mode == "fsize":
                time.sleep(p.fsize_fill_s)
                disk.squeeze(gw.pid)
            t_full = _until("disk full", lambda: _metric(gw, "cuffwatch_spool_disk_full") == 1,
                            FULL_TIMEOUT_S)
            unacked = 0.0
            while time.monotonic() < t_full + p.full_s:
                unacked = max(unacked, _metric(gw, "cuffwatch_unacked_messages") or 0.0)
                time.sleep(POLL_S)
            still_full = _metric(gw, "cuffwatch_spool_disk_full") == 1
            stop_s = None
            if last:  # SIGTERM while the disk is full: bounded, and nothing lost
                episodes += _metric(gw, "cuffwatch_spool_disk_full_episodes") or 0.0
                t_term = time.monotonic()
                gw.terminate()
                stop_s = round(time.monotonic() - t_term, 2)
            disk.room_from_drain(gw.pid)
            t_back = time.monotonic()
            srv.influx.start()
            if last:
                start_gateway(gw)
            t_room = _until("room again", lambda: _metric(gw, "cuffwatch_spool_disk_full") == 0,
                            RECOVERY_TIMEOUT_S)
            target = pub.acked_at(t_back)
            caught = monitor.caught_up(target, t_back, CATCH_UP_TIMEOUT_S)
            window = monitor.window(t_kill, caught or time.monotonic())
            cycles.append({
                "influx_down_s": round(t_back - t_kill, 2),
                "fill_s": round(t_full - t_kill, 2),  # InfluxDB gone → the gateway says full
                "held_full": still_full,
                "max_unacked_messages": int(unacked),
                "recovery_s": round(t_room - t_back, 2),  # InfluxDB back → disk full cleared
                "catch_up_s": None if caught is None else round(caught - t_back, 2),
                "spool_disk_max_mb": mb(max((s.spool_disk for s in window), default=0)),
                "sigterm_stop_s": stop_s,
            })
            time.sleep(p.gap_s)
        episodes += _metric(gw, "cuffwatch_spool_disk_full_episodes") or 0.0
        t_stop = time.monotonic()
        final = pub.finish()
        pub.stop()
        expected = expected_seqs(final)
        total = sum(map(len, expected.values()))
        drained_at = wait_drained(srv, db, total)
    finally:
        monitor.stop()
        pub.stop()
        if not srv.influx.running:
            srv.influx.start()
        gw.stop()
        disk.close()
        forget_sessions(srv.mosquitto.host, srv.mosquitto.port,
                        [*pub.client_ids, f"cuffwatch-{name}"])
    lost, stored_points, distinct, unexpected = storage_accounting(srv, db, expected)
    streamed_s = t_stop - t_start
    return {
        "disk": disk.describe(),
        "disk_bytes": p.disk_bytes,
        "cuffs": p.cuffs,
        "cycles": len(cycles),
        "streamed_s": round(streamed_s, 1),
        "published": final["generated"],
        "broker_acked": total,
        "stored_points": stored_points,
        "stored_distinct": distinct,
        "lost": len(lost),
        "lost_examples": lost[:20],
        "duplicates_in_storage": stored_points - distinct,
        "unexpected_stored": unexpected,
        "offered_readings_per_s": round(total / streamed_s),
        "drained": drained_at is not None,
        "drain_s": None if drained_at is None else round(drained_at - t_stop, 1),
        # the gateway's own count (its second life may start on the full disk the first left)
        # and its log: one line per episode
        "disk_full_episodes": int(episodes),
        "disk_full_log_lines": _log_count(gw, DISK_FULL_LINE),
        "recovery_max_s": max((c["recovery_s"] for c in cycles), default=None),
        "catch_up_max_s": max((c["catch_up_s"] or 0 for c in cycles), default=None),
        "sigterm_stop_s": cycles[-1]["sigterm_stop_s"] if cycles else None,
        "cycles_detail": cycles,
    }
