"""End-to-end throughput: readings/s from the first publish until InfluxDB holds them all.

The gateway runs as its own process against the run's Mosquitto and InfluxDB (v1 API);
`bench.mqttpub` publishes from another process over 40 connections, as fast as QoS 1 allows
(the broker queues what the gateway has not taken yet). A warm-up phase (series creation,
first batches) also estimates the rate, which sizes the timed phase to about `target_s`.
The end is the first /metrics poll where every reading is accepted and every submitted
line written; the stored count is then checked against InfluxDB (`stored_exactly`).
With `partitions` of teams, that many gateway processes split the load by team (SPEC §9).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench.ceilings import PUBLISH_CONNECTIONS
from bench.infra import (
    LOAD_TEAMS,
    MAX_DEVICE_SPAN_S,
    Publisher,
    Servers,
    cpu_seconds,
    gateways,
    load_cuffs,
    load_plan,
    roster,
    wait_written,
)
from tests.support.gateway_process import GatewayProcess

# Creates every series and fills the pipes (not part of the figure), and sizes the timed
# phase: with 20,000 the start-up share made the estimate half the steady rate, so the
# "25 s" phase ran 7 s and the last partial batch's wait weighed 15% in the figure.
WARMUP_READINGS = 60_000
DRAIN_TIMEOUT_S = 300.0  # the gateway must have written everything by then, or it is stalled
MIN_TIMED_READINGS = 20_000  # a timed phase shorter than a few batches measures start-up, not rate


def e2e(srv: Servers, *, batch: int, cuffs: int, target_s: float,
        partitions: tuple[tuple[str, ...], ...] = ((),),
        label: str = "e2e",
        during: Callable[[list[GatewayProcess]], Callable[[], None]] | None = None,
        ) -> dict[str, Any]:
    """Readings/s through `len(partitions)` gateway processes; `during` hooks the timed phase."""
    db = srv.fresh_database(f"bench_{label}")
    squad = load_cuffs(cuffs)
    warm_msgs = WARMUP_READINGS // batch
    # device time must stay inside max_backlog_s: bounds the readings per cuff of the run
    max_msgs = (MAX_DEVICE_SPAN_S * cuffs) // batch - warm_msgs
    plan = load_plan(squad, batch=batch, connections=PUBLISH_CONNECTIONS,
                     per_cuff=MAX_DEVICE_SPAN_S)
    with gateways(srv, database=db, teams=roster(cuffs, 0), partitions=partitions,
                  label=label) as gws, Publisher(srv, plan) as pub:
        pub.prepare(warm_msgs)
        t0 = time.monotonic()
        pub.go()
        done = wait_written(gws, warm_msgs * batch, DRAIN_TIMEOUT_S)
        if done is None:
            return {"stalled": True, "phase": "warm-up", "readings_per_message": batch}
        warm_rate = warm_msgs * batch / (done - t0)
        timed_msgs = int(min(max(warm_rate * target_s, MIN_TIMED_READINGS) // batch, max_msgs))
        pub.prepare(timed_msgs)
        finish = during(gws) if during is not None else None
        cpu0 = [g.cpu_seconds() for g in gws]
        others = {"broker": srv.mosquitto.pid, "influxd": srv.influx.pid,
                  "publisher": pub.proc.pid if pub.proc else None}
        others0 = {k: cpu_seconds(pid) for k, pid in others.items()}
        t0 = time.monotonic()
        figures = pub.go()
        done = wait_written(gws, (warm_msgs + timed_msgs) * batch, DRAIN_TIMEOUT_S)
        if finish is not None:
            finish()
        if done is None:
            return {"stalled": True, "phase": "timed", "readings_per_message": batch}
        elapsed = done - t0
        ingest = [g.metrics() for g in gws]
        cores = [round((g.cpu_seconds() - c) / elapsed, 2) for g, c in zip(gws, cpu0, strict=True)]
        other_cores = {k: round((cpu_seconds(pid) - others0[k]) / elapsed, 2)
                       for k, pid in others.items()}
    stored = srv.count(db)
    readings = timed_msgs * batch
    return {
        "gateways": len(partitions),
        "partitions": [list(p) or list(LOAD_TEAMS) for p in partitions],
        "readings_per_message": batch,
        "cuffs": cuffs,
        "messages": timed_msgs,
        "readings": readings,
        "seconds": round(elapsed, 3),
        "readings_per_s": round(readings / elapsed),
        "msg_per_s": round(timed_msgs / elapsed),
        "publisher_msg_per_s": round(timed_msgs / figures["acked_s"]),
        "warmup_readings_per_s": round(warm_rate),
        "gateway_cores_used": cores,  # CPU seconds per second of the timed phase
        # the pipeline fell behind InfluxDB and read lines back from the spool (costly)
        "ingest_spills": int(sum(m.get("cuffwatch_ingest_spills", 0.0) for m in ingest)),
        "ingest_replayed_lines": int(
            sum(m.get("cuffwatch_ingest_replayed_lines", 0.0) for m in ingest)),
        "ingest_batches": int(sum(m.get("cuffwatch_ingest_batches", 0.0) for m in ingest)),
        "other_cores_used": other_cores,
        "stored": stored,
        "stored_exactly": stored == (warm_msgs + timed_msgs) * batch,
    }
