"""Ceilings: what the broker and InfluxDB manage alone on this machine, in this run.

Broker: `bench.mqttpub` (the same publisher the end-to-end runs use: 40 connections over
the load cuffs, QoS 1) against one `mosquitto_sub -q 1 -V mqttv5` subscriber that exits
after counting every message. InfluxDB: the gateway's own telemetry lines, 5,000 per
HTTP `/write` (in their precision, `lineproto.PRECISION`), from one writer (like the
gateway: one batch in flight) and from two concurrent writers.
"""

from __future__ import annotations

import http.client
import subprocess
import threading
import time
from typing import Any

from bench.infra import TOPIC_ROOT, Publisher, Servers, load_cuffs, load_plan

PUBLISH_CONNECTIONS = 40  # "N publishers": one connection each, as a squad's gateways see
SUBSCRIBE_SETTLE_S = 0.5  # mosquitto_sub's SUBACK before the first publish
CEILING_TIMEOUT_S = 180.0  # a full-size ceiling run takes ~15 s; only a wedged server hits this
INFLUX_BATCH_LINES = 5000  # the gateway's batch size (ingest.pipeline.BATCH_LINES)
INFLUX_DB = "bench_ceiling"  # its own database: the gateways' counts never include these points


def broker(srv: Servers, *, messages: int, batch: int, cuffs: int) -> dict[str, Any]:
    """Messages/s one QoS 1 subscriber receives while the publishers send `messages`."""
    plan = load_plan(load_cuffs(cuffs), batch=batch, connections=PUBLISH_CONNECTIONS,
                     per_cuff=messages * batch // cuffs + batch)
    mq = srv.mosquitto
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", mq.host, "-p", str(mq.port), "-q", "1", "-V", "mqttv5",
         "-i", f"bench-ceiling-{batch}", "-t", f"{TOPIC_ROOT}/+/cuffs/+/telemetry",
         "-C", str(messages)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        with Publisher(srv, plan) as pub:
            pub.prepare(messages)
            time.sleep(SUBSCRIBE_SETTLE_S)
            t0 = time.monotonic()
            result = pub.go_async()
            sub.wait(timeout=CEILING_TIMEOUT_S)
            elapsed = time.monotonic() - t0
            figures = result()
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    return {
        "messages": messages,
        "readings_per_message": batch,
        "publishers": PUBLISH_CONNECTIONS,
        "seconds": round(elapsed, 3),
        "msg_per_s": round(messages / elapsed),
        "readings_per_s": round(messages * batch / elapsed),
        "publish_msg_per_s": round(messages / figures["acked_s"]),
    }


def telemetry_lines(count: int, cuffs: int) -> list[bytes]:
    """`count` cuff_telemetry lines exactly as the gateway writes them, 1 Hz per cuff."""
    from core.model import Limb, Reading
    from ingest.lineproto import telemetry_line

    squad = load_cuffs(cuffs)
    limbs = list(Limb)
    base = int(time.time() * 1000) - (count // cuffs + 1) * 1000
    out = []
    for i in range(count):
        c = squad[i % cuffs]
        k = i // cuffs
        r = Reading(team=c.team, cuff=c.cuff, athlete=f"a-{i % cuffs // 2:03d}",
                    limb=limbs[i % cuffs % len(limbs)], ts_ms=base + k * 1000, seq=k,
                    pressure_mmhg=c.target_mmhg + (k % 7) - 3.0, elapsed_s=float(k % 200),
                    inflated=True, target_mmhg=None, battery_pct=88.5, clock_skew_s=None,
                    received_ms=base + k * 1000)
        out.append(telemetry_line(r, target_mmhg=c.target_mmhg).encode())
    return out


def _writer(host: str, port: int, db: str, bodies: list[bytes], errors: list[str]) -> None:
    from ingest.lineproto import PRECISION

    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        for body in bodies:
            conn.request("POST", f"/write?db={db}&precision={PRECISION}", body=body,
                         headers={"Content-Type": "text/plain"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 204:
                errors.append(f"/write answered {resp.status}")
                return
    finally:
        conn.close()


def influx(srv: Servers, *, points: int, writers: int, cuffs: int) -> dict[str, Any]:
    """Points/s InfluxDB 1.x stores from `writers` concurrent 5,000-line writers."""
    db = srv.fresh_database(f"{INFLUX_DB}_{writers}")
    lines = telemetry_lines(points, cuffs)
    bodies = [b"\n".join(lines[i : i + INFLUX_BATCH_LINES]) + b"\n"
              for i in range(0, len(lines), INFLUX_BATCH_LINES)]
    # a first write creates the series, as the gateway's warm-up does: not the steady rate
    warm, bodies = bodies[:1], bodies[1:]
    errors: list[str] = []
    _writer(srv.influx.host, srv.influx.port, db, warm, errors)
    shares = [bodies[k::writers] for k in range(writers)]
    threads = [threading.Thread(target=_writer, args=(srv.influx.host, srv.influx.port, db,
                                                      share, errors)) for share in shares]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(CEILING_TIMEOUT_S)
    elapsed = time.monotonic() - t0
    timed = sum(b.count(b"\n") for b in bodies)
    stored = srv.count(db)
    return {
        "points": timed,
        "batch_lines": INFLUX_BATCH_LINES,
        "writers": writers,
        "seconds": round(elapsed, 3),
        "points_per_s": round(timed / elapsed),
        "stored_all": stored == points and not errors,
        "errors": errors[:3],
    }
