"""Footprint: the gateway's peak RSS with 1,000 simulated cuffs, and its start-up time.

RSS: `cuffwatch simulate --cuffs 1000 --teams 2` (realistic sessions, 1 Hz per cuff, pooled
connections) feeds a gateway whose roster is the same generated squad; psutil samples the
gateway's RSS every half second. Each cuff's dedup slots (`gateway.state.DEDUP_SLOTS`
fingerprints) are allocated whole at its first reading; their size is measured in-process
with tracemalloc and added as a projection for cuffs the run has not heard from yet.

Start-up: from spawning `cuffwatch run -c FILE` (the console script) to the first
`/readyz` answering 200, polled every 5 ms; broker and InfluxDB already up.
"""

from __future__ import annotations

import statistics
import subprocess
import time
import tracemalloc
from typing import Any

from bench.infra import (
    Servers,
    forget_gateway,
    gateway_config,
    gateways,
    roster,
)
from tests.support.gateway_process import GatewayProcess, cuffwatch_command
from tests.support.paths import REPO

RSS_SAMPLE_S = 0.5  # psutil reads /proc: cheap; twice a second catches a peak of any duration
MIB = 1 << 20  # figures in MiB, printed as "MB" like the target


def dedup_bytes_per_cuff() -> int:
    """Heap bytes one cuff's full dedup window holds (tracemalloc, realistic keys)."""
    from core.model import Limb
    from gateway.state import DEDUP_SLOTS, CuffState

    base_ts = int(time.time() * 1000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        state = CuffState("t1", "c001", "a-001", Limb.LEFT_LEG)
        for i in range(DEDUP_SLOTS + 10):
            state.is_duplicate(100_000 + i, base_ts + i * 1000, 150.0, float(i))
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return after - before


def rss(srv: Servers, *, cuffs: int, seconds: float) -> dict[str, Any]:
    """Peak and steady RSS of a gateway carrying `cuffs` simulated cuffs for `seconds`."""
    db = srv.fresh_database("bench_rss")
    with gateways(srv, database=db, teams=roster(cuffs, 0), label="rss") as gws:
        gw = gws[0]
        start_rss = gw.rss_bytes()
        sim_log = (srv.tmp / "simulate-rss.log").open("wb")
        sim = subprocess.Popen(
            [*cuffwatch_command(), "simulate", "-c", str(gw.config), "--cuffs", str(cuffs),
             "--teams", "2", "--duration", f"{seconds:g}"],
            stdout=sim_log, stderr=subprocess.STDOUT, cwd=REPO,
        )
        samples: list[tuple[float, int]] = []
        t0 = time.monotonic()
        try:
            while sim.poll() is None and time.monotonic() - t0 < seconds + 30:
                samples.append((time.monotonic() - t0, gw.rss_bytes()))
                time.sleep(RSS_SAMPLE_S)
        finally:
            if sim.poll() is None:
                sim.terminate()
            sim.wait()
            sim_log.close()
        accepted = gw.metrics().get("cuffwatch_readings_accepted_total", 0.0)
        elapsed = time.monotonic() - t0
    values = [v for _, v in samples]
    steady = values[len(values) * 2 // 3 :] or values
    per_cuff = dedup_bytes_per_cuff()
    from gateway.state import DEDUP_SLOTS

    filled = min(1.0, accepted / max(cuffs, 1))  # a cuff's slots exist from its first reading
    projected = max(values) + cuffs * per_cuff * (1 - filled)
    return {
        "cuffs": cuffs,
        "seconds": round(elapsed, 1),
        "readings_accepted": int(accepted),
        "start_mb": round(start_rss / MIB, 1),
        "peak_mb": round(max(values) / MIB, 1),
        "steady_mb": round(statistics.median(steady) / MIB, 1),
        "dedup_window_readings": DEDUP_SLOTS,
        "dedup_full_kib_per_cuff": round(per_cuff / 1024, 1),
        "projected_mb_dedup_full": round(projected / MIB, 1),
        "samples": len(values),
    }


def startup(srv: Servers, *, runs: int, cuffs: int) -> dict[str, Any]:
    """Seconds from spawn to /readyz 200, over `runs` fresh processes."""
    db = srv.fresh_database("bench_startup")
    times: list[float] = []
    teams = roster(cuffs, 0)
    for k in range(runs):
        cfg, port = gateway_config(srv, name=f"start{k}", database=db, teams=teams)
        gw = GatewayProcess(cfg, port, srv.tmp / f"start{k}.log").start()
        try:
            times.append(gw.wait_ready())
        finally:
            gw.stop()
            forget_gateway(srv, f"start{k}")
    return {
        "runs": runs,
        "roster_cuffs": cuffs,
        "median_s": round(statistics.median(times), 3),
        "max_s": round(max(times), 3),
        "all_s": [round(t, 3) for t in times],
    }
