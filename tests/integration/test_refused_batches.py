"""A batch InfluxDB refuses (issue #17, item 2b) is loud, never silent.

Real InfluxDB 1.x refuses points whose field type conflicts with what its shard already
holds (a string where the gateway writes a float). The gateway keeps the batch's good
lines, saves it under `<spool>/rejected/`, and says so everywhere an operator looks: the
log, its status (`degraded`, not `online`), /metrics, and `gateway_stats` in InfluxDB (the
gateway dashboard's "Refused by InfluxDB" panel).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.support.gateway_process import http_get, parse_metrics
from tests.support.harness import MqttProbe, running_gateway, settings_against, wait_for
from tests.support.roster import roster
from tests.support.servers import InfluxDB1Server, MosquittoServer

TEAMS = roster({"t1": {"c1": "a-17", "c2": "a-18"}})


async def test_a_batch_influxdb_refuses_is_loud_counted_and_saved(
    mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path,
) -> None:
    now = int(time.time() * 1000)
    # battery_pct stored as a string in this shard: every reading with a battery level
    # (c1's) now conflicts; c2 reports none, so its lines are fine
    influxdb.write(influx_db, "cuff_telemetry,athlete=a-17,cuff=c1,limb=left_leg,team=t1 "
                              f'battery_pct="broken" {now - 60_000}', precision="ms")
    settings = settings_against(mosquitto, influxdb, influx_db, topic_root, tmp_path,
                                teams=TEAMS, instance="gw-refused")
    status = f"{topic_root}/_gateway/gw-refused/status"
    async with running_gateway(settings, stats_interval_s=0.5) as gw, MqttProbe(
        mosquitto.host, mosquitto.port
    ) as dev:
        await dev.subscribe(status)
        await wait_for(lambda: dev.messages[status][-1][0] == b"online", what="online first")
        for cuff, battery in (("c1", {"battery_pct": 80.0}), ("c2", {})):
            dev.publish(f"{topic_root}/t1/cuffs/{cuff}/telemetry",
                        [{"ts": now - 5000 + i, "seq": i, "pressure_mmhg": 120.0,
                          "elapsed_s": 0.0, **battery} for i in range(5)])
        await wait_for(lambda: gw.pipeline.rejected_lines >= 5, what="c1's lines refused")

        await wait_for(lambda: dev.messages[status][-1][0] == b"degraded",
                       what="status degraded while InfluxDB refuses data")
        _, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{gw.health.port}/metrics")
        metrics = parse_metrics(body.decode())
        assert metrics["cuffwatch_ingest_refusing"] == 1
        assert metrics["cuffwatch_ingest_rejected_lines"] == 5
        assert metrics["cuffwatch_ingest_rejected_batches"] >= 1

        async def stats() -> dict[str, Any] | None:
            rows = await asyncio.to_thread(
                influxdb.query, influx_db,
                'SELECT * FROM gateway_stats WHERE "instance" = \'gw-refused\' '
                "ORDER BY time DESC LIMIT 1",
            )
            return rows[0] if rows and rows[0]["refused"] >= 5 else None

        row = await wait_for(stats, what="gateway_stats counting the refused lines")
        assert row["refused_batches"] >= 1
        assert row["refused_dropped"] == 0  # every refused batch is kept in rejected/

    # the good lines were stored (a partial write), the refused ones saved for inspection
    rows = await asyncio.to_thread(influxdb.query, influx_db,
                                   'SELECT count("seq") FROM cuff_telemetry WHERE "cuff" = \'c2\'')
    assert rows[0]["count"] == 5
    saved = b"".join(p.read_bytes() for p in (tmp_path / "rejected").glob("rejected-*.lp"))
    assert saved.startswith(b"# ")  # the server's reason
    assert saved.count(b"cuff=c1,") == 5
