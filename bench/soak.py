"""Soak: a squad streams for minutes while five faults are injected; every reading is counted.

200 cuffs publish numbered readings (2, 3, 4 or 5 per second each, one reading per QoS 1
message, 700 readings/s in all) from a child process (`python -m bench.soak --publish`),
each cuff over its own MQTT 3.1.1 connection with a persistent session. A cuff keeps every
reading the broker has not PUBACKed, buffers while it cannot connect, and after a reconnect
re-sends all of them (DUP set) in order, so the denominator is exact: a reading counts as
published once the broker acknowledged it. Meanwhile, one after another with recovery
time between them:

1. InfluxDB frozen (SIGSTOP) past the gateway's 10 s write timeout, then resumed;
2. InfluxDB killed (SIGKILL) and restarted;
3. the gateway process killed (SIGKILL) and restarted: same config, spool and client id;
4. Mosquitto stopped (SIGTERM, persistence on) and restarted on the same port;
5. the gateway stopped with SIGTERM (drain) and restarted.

At the end the cuffs stop, the pipeline drains, and each cuff's stored `seq` values are
read back from InfluxDB: `lost` = broker-acknowledged readings missing from storage (must be
0); `duplicates_in_storage` = stored points beyond the distinct seqs (InfluxDB overwrites an
identical point, so only a reading stored under two timestamps shows up here). A recovery
time is how long after the fault was cleared (service back; for the broker also every cuff
reconnected and its buffer acknowledged) InfluxDB held every reading the broker had
acknowledged by then; `baseline` is the same figure with no fault, the pipeline's own lag.
A monitor samples the stored count, the gateway's RSS and /metrics, and the spool on disk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]

from bench.infra import (
    TOPIC_ROOT,
    Servers,
    connect_packet,
    forget_sessions,
    gateway_config,
    load_cuffs,
    roster,
)
from bench.mqttpub import publish_packet
from tests.support.gateway_process import GatewayProcess
from tests.support.paths import REPO

RATES = (2, 3, 4, 5)  # readings/s of cuff k: RATES[k % 4]; 3.5/s on average
BOUT_S = 120  # device seconds inflated, then REST_S deflated: under every SPEC §3 bout limit,
REST_S = 300  # and the rest is IPC's min_rest_s, so the load raises no alerts at all
SWING_MMHG = 20.0  # the rep swing around target (its 5 s mean stays within the tolerance)
REP_S = 2.3
DEFLATED_MMHG = 2.0
# Readings a cuff buffers unacknowledged before it stops sampling: far above any outage here
# (5 readings/s × a few seconds of broker downtime), it only bounds a wedged broker.
CUFF_BUFFER = 20_000
TICK_S = 0.02  # the cuffs' sampling tick: readings due by now are published each tick
STATUS_S = 0.1  # the child reports its counters this often
RECONNECT_S = 0.25  # a cuff retries its connection after this (plus jitter)
CONNECT_TIMEOUT_S = 5.0
FINISH_TIMEOUT_S = 60.0  # after `stop`, the cuffs wait this long for their last PUBACKs
SAMPLE_S = 0.25  # the monitor's interval
COUNT_TIMEOUT_S = 2.0  # a stored-count query; a frozen InfluxDB is not asked at all
RECOVERY_TIMEOUT_S = 180.0  # a fault not caught up by then is reported as not recovered
DRAIN_TIMEOUT_S = 180.0
DRAIN_STABLE_S = 3.0  # after the count reached the acknowledged total, it must hold this long
TIMELINE_STEP_S = 2.0  # resolution of the timeline kept in the results
MISSING_EXAMPLES = 20
MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class Profile:
    """How long the soak streams and how long each fault lasts."""

    cuffs: int
    warm_s: float  # streaming before the first fault (and the baseline lag)
    freeze_s: float  # InfluxDB SIGSTOPped
    influx_down_s: float  # InfluxDB killed until restarted
    gateway_down_s: float  # gateway SIGKILLed until restarted
    broker_down_s: float  # Mosquitto stopped until restarted
    gateway_stop_s: float  # gateway stopped (SIGTERM) until restarted
    gap_s: float  # steady streaming after each fault has caught up


QUICK = Profile(cuffs=200, warm_s=5, freeze_s=12, influx_down_s=5, gateway_down_s=3,
                broker_down_s=2, gateway_stop_s=3, gap_s=4)
FULL = Profile(cuffs=200, warm_s=15, freeze_s=15, influx_down_s=15, gateway_down_s=10,
               broker_down_s=5, gateway_stop_s=10, gap_s=20)


# -- the publishing cuffs (child process) ----------------------------------------------------------


def reading_json(seq: int, ts_ms: int, rate: int, offset_s: int, target: float) -> str:
    """Reading `seq` of a cuff sampling at `rate`: bouts of BOUT_S, rests of REST_S."""
    t = seq / rate + offset_s
    phase = t % (BOUT_S + REST_S)
    battery = 95.0 - (seq % 1000) * 0.01
    if phase < BOUT_S:
        pressure = round(target + SWING_MMHG * math.sin(2 * math.pi * t / REP_S), 1)
        return (f'{{"ts":{ts_ms},"seq":{seq},"pressure_mmhg":{pressure},'
                f'"elapsed_s":{phase:.2f},"inflated":true,"target_mmhg":{target},'
                f'"battery_pct":{battery:.2f}}}')
    return (f'{{"ts":{ts_ms},"seq":{seq},"pressure_mmhg":{DEFLATED_MMHG},"elapsed_s":0.0,'
            f'"inflated":false,"target_mmhg":{target},"battery_pct":{battery:.2f}}}')


class SoakCuff:
    """One cuff: samples on schedule, keeps what the broker has not PUBACKed, re-sends it."""

    def __init__(self, spec: list[Any], topic_root: str, base_ms: int, prefix: str) -> None:
        team, cuff, target, rate, offset = spec
        self.cuff = str(cuff)
        self.target = float(target)
        self.rate = int(rate)
        self.offset = int(offset)
        self.base_ms = base_ms
        self.topic = f"{topic_root}/{team}/cuffs/{cuff}/telemetry".encode()
        self.client_id = f"{prefix}-{cuff}"
        self.next_seq = 0
        self.inflight: dict[int, list[Any]] = {}  # packet id → [seq, packet, sent]
        self._pid = 0
        self.writer: asyncio.StreamWriter | None = None
        self.acked = 0
        self.resent = 0
        self.reconnects = 0
        self.idle = asyncio.Event()  # nothing unacknowledged
        self.idle.set()

    def _packet_id(self) -> int:
        while True:
            self._pid = self._pid % 65535 + 1
            if self._pid not in self.inflight:
                return self._pid

    def pump(self, elapsed: float) -> None:
        """Publish every reading due by `elapsed` seconds since the start (buffer if offline)."""
        due = int(elapsed * self.rate) + 1
        while self.next_seq < due and len(self.inflight) < CUFF_BUFFER:
            seq = self.next_seq
            ts = self.base_ms + seq * 1000 // self.rate
            payload = reading_json(seq, ts, self.rate, self.offset, self.target).encode()
            pid = self._packet_id()
            packet = publish_packet(self.topic, payload, pid)
            sent = self._write(packet)
            self.inflight[pid] = [seq, packet, sent]
            self.idle.clear()
            self.next_seq += 1

    def _write(self, packet: bytes) -> bool:
        w = self.writer
        if w is None or w.is_closing():
            return False
        try:
            w.write(packet)
        except (OSError, RuntimeError):
            return False
        return True

    async def run(self, host: str, port: int) -> None:
        """Stay connected: connect, re-send the unacknowledged, count PUBACKs; forever."""
        first = True
        while True:
            link = await self._connect(host, port)
            if link is None:
                await asyncio.sleep(RECONNECT_S * (0.5 + (hash(self.cuff) % 100) / 100))
                continue
            reader, writer = link
            if not first:
                self.reconnects += 1
            first = False
            self.writer = writer
            for entry in list(self.inflight.values()):  # oldest first: seq order is kept
                packet = entry[1]
                if entry[2]:
                    packet = bytes([packet[0] | 0x08]) + packet[1:]  # DUP
                    self.resent += 1
                if not self._write(packet):
                    break
                entry[2] = True
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                await self._read_acks(reader)
            self.writer = None
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _connect(
        self, host: str, port: int,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection whose CONNACK accepted our persistent session, or None."""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(connect_packet(self.client_id, clean=False))
                connack = await reader.readexactly(4)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            return None
        if connack[0] != 0x20 or connack[3] != 0:
            writer.close()
            return None
        return reader, writer

    async def _read_acks(self, reader: asyncio.StreamReader) -> None:
        while True:
            head = await reader.readexactly(2)
            length = head[1] & 0x7F
            shift = 7
            byte = head[1]
            while byte & 0x80:
                byte = (await reader.readexactly(1))[0]
                length += (byte & 0x7F) << shift
                shift += 7
            body = await reader.readexactly(length) if length else b""
            pid = int.from_bytes(body[:2], "big")
            if head[0] & 0xF0 == 0x40 and self.inflight.pop(pid, None) is not None:  # PUBACK
                self.acked += 1
                if not self.inflight:
                    self.idle.set()


async def _publish_main(args: argparse.Namespace, plan: dict[str, Any]) -> None:
    cuffs = [SoakCuff(spec, plan["topic_root"], plan["base_ms"], plan["prefix"])
             for spec in plan["cuffs"]]
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    stopping = asyncio.Event()

    def status(**extra: Any) -> None:
        print(json.dumps({
            "t": time.monotonic(), "t0": t0,
            "generated": sum(c.next_seq for c in cuffs),
            "acked": sum(c.acked for c in cuffs),
            "inflight": sum(len(c.inflight) for c in cuffs),
            "connected": sum(c.writer is not None for c in cuffs),
            "reconnects": sum(c.reconnects for c in cuffs),
            "resent": sum(c.resent for c in cuffs),
        } | extra), flush=True)

    async def tick() -> None:
        while not stopping.is_set():
            elapsed = time.monotonic() - t0
            for c in cuffs:
                c.pump(elapsed)
            await asyncio.sleep(TICK_S)

    async def report() -> None:
        while True:
            status()
            await asyncio.sleep(STATUS_S)

    async with asyncio.TaskGroup() as tg:
        links = [tg.create_task(c.run(args.host, args.port), name=f"soak.{c.cuff}")
                 for c in cuffs]
        ticker = tg.create_task(tick(), name="soak.tick")
        reporter = tg.create_task(report(), name="soak.report")
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if line in ("stop", ""):
                break
        stopping.set()
        await ticker
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FINISH_TIMEOUT_S):
                await asyncio.gather(*(c.idle.wait() for c in cuffs))
        reporter.cancel()
        status(final=True, cuffs=[
            [c.cuff, c.next_seq, sorted(e[0] for e in c.inflight.values())] for c in cuffs])
        for task in links:
            task.cancel()
        for c in cuffs:
            if c.writer is not None:
                c.writer.write(b"\xe0\x00")  # DISCONNECT
                c.writer.close()


class SoakPublisher:
    """The parent's handle on the child: its latest counters and its final accounting."""

    def __init__(self, srv: Servers, cuffs: int, prefix: str) -> None:
        squad = load_cuffs(cuffs)
        # team, cuff, target, readings/s, where in its bout cycle the cuff starts (seconds)
        self.specs: list[list[Any]] = [
            [c.team, c.cuff, c.target_mmhg, RATES[k % len(RATES)], (k * 37) % (BOUT_S + REST_S)]
            for k, c in enumerate(squad)
        ]
        self.srv = srv
        self.prefix = prefix
        self.client_ids = [f"{prefix}-{c.cuff}" for c in squad]
        self.base_ms = int(time.time() * 1000)
        self.proc: subprocess.Popen[str] | None = None
        self.history: list[dict[str, Any]] = []  # every status line, with the parent's time
        self.final: dict[str, Any] | None = None
        self._final = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> SoakPublisher:
        """Spawn the child; its cuffs connect and start sampling at once."""
        plan = {"topic_root": TOPIC_ROOT, "base_ms": self.base_ms, "prefix": self.prefix,
                "cuffs": self.specs}
        path = self.srv.tmp / "soak-plan.json"
        path.write_text(json.dumps(plan))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.soak", "--publish", "--host", self.srv.mosquitto.host,
             "--port", str(self.srv.mosquitto.port), "--plan", str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
        )
        threading.Thread(target=self._read, name="soak-pub-reader", daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            data = json.loads(line)
            if data.get("final"):
                self.final = data
                self._final.set()
                continue
            data["at"] = time.monotonic()
            with self._lock:
                self.history.append(data)
        self._final.set()

    def latest(self) -> dict[str, Any]:
        """The latest counters (zeros before the first report)."""
        with self._lock:
            if self.history:
                return self.history[-1]
        return {"acked": 0, "generated": 0, "inflight": 0, "connected": 0, "t0": time.monotonic()}

    def acked_at(self, t: float) -> int:
        """Readings acknowledged by the broker as of the last report before `t`."""
        with self._lock:
            acked = 0
            for h in self.history:
                if h["at"] > t:
                    break
                acked = int(h["acked"])
            return acked

    def finish(self) -> dict[str, Any]:
        """Stop sampling, wait for the last PUBACKs; the child's final accounting."""
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        if not self._final.wait(FINISH_TIMEOUT_S + 30) or self.final is None:
            raise RuntimeError("the soak publisher gave no final accounting")
        return self.final

    def stop(self) -> None:
        """End the child (after `finish`, or on an error)."""
        if self.proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=FINISH_TIMEOUT_S + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


# -- the monitor -----------------------------------------------------------------------------------


def stored_count(srv: Servers, db: str, timeout: float = COUNT_TIMEOUT_S) -> int | None:
    """Points in cuff_telemetry now, or None when InfluxDB does not answer in time."""
    from tests.support.servers import http_request

    body = urllib.parse.urlencode({"db": db, "q": 'SELECT count("seq") FROM "cuff_telemetry"'})
    try:
        resp = http_request("POST", f"{srv.influx.url}/query", body=body.encode(),
                            headers={"Content-Type": "application/x-www-form-urlencoded"},
                            timeout=timeout)
    except OSError:
        return None
    if resp.status != 200:
        return None
    series = resp.json().get("results", [{}])[0].get("series", [])
    return int(series[0]["values"][0][1]) if series else 0


@dataclass
class Sample:
    """One monitor sample (None: not measurable at that moment)."""

    t: float
    acked: int
    stored: int | None
    rss: int | None
    spool_bytes: float | None
    spool_disk: int
    gateway: tuple[int, float, float] | None = None  # pid, accepted, duplicates so far


@dataclass
class Monitor:
    """Samples the stored count, the gateway's RSS and spool, in a thread."""

    srv: Servers
    db: str
    gw: GatewayProcess
    pub: SoakPublisher
    spool_dir: Path
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Monitor:
        """Start sampling."""
        self._thread = threading.Thread(target=self._run, name="soak-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(SAMPLE_S)

    def sample(self) -> Sample:
        """Measure everything once."""
        influx = self.srv.influx
        stored = (stored_count(self.srv, self.db)
                  if influx.running and not influx.paused else None)
        rss: int | None = None
        spool: float | None = None
        counters: tuple[int, float, float] | None = None
        proc = self.gw.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                rss = int(psutil.Process(proc.pid).memory_info().rss)
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                m = self.gw.metrics(timeout=1.0)
                spool = m.get("cuffwatch_spool_bytes")
                counters = (proc.pid, m.get("cuffwatch_readings_accepted_total", 0.0),
                            m.get("cuffwatch_duplicates_total", 0.0))
        disk = 0
        with contextlib.suppress(OSError):
            disk = sum(f.stat().st_size for f in self.spool_dir.glob("*.seg"))
        return Sample(time.monotonic(), self.pub.latest()["acked"], stored, rss, spool, disk,
                      counters)

    def caught_up(self, target: int, since: float, timeout: float) -> float | None:
        """The first sample time ≥ `since` with ≥ `target` stored; None after `timeout`."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for s in self.samples[seen:]:
                if s.t >= since and s.stored is not None and s.stored >= target:
                    return s.t
            seen = max(seen, len(self.samples) - 1)
            if time.monotonic() > deadline:
                return None
            time.sleep(SAMPLE_S / 2)

    def window(self, t0: float, t1: float) -> list[Sample]:
        """The samples taken between t0 and t1."""
        return [s for s in list(self.samples) if t0 <= s.t <= t1]


# -- the faults ------------------------------------------------------------------------------------


@dataclass
class Fault:
    """One injected fault: break it, hold, repair it (repair returns once the service is back)."""

    name: str
    inject: Callable[[], None]
    hold_s: float
    repair: Callable[[], object]
    publisher_drops: bool = False  # the cuffs lose their connections too (the broker)


def start_gateway(gw: GatewayProcess) -> None:
    """Start the gateway and wait until it is ready."""
    gw.start()
    gw.wait_ready()


def faults(srv: Servers, gw: GatewayProcess, p: Profile) -> list[Fault]:
    """The five faults, in order."""
    return [
        Fault("influx_frozen", srv.influx.pause, p.freeze_s, srv.influx.resume),
        Fault("influx_killed", srv.influx.kill, p.influx_down_s, srv.influx.start),
        Fault("gateway_sigkill", gw.kill, p.gateway_down_s,
              lambda: start_gateway(gw)),
        Fault("broker_restart", srv.mosquitto.stop, p.broker_down_s,
              srv.mosquitto.start, publisher_drops=True),
        Fault("gateway_sigterm", gw.stop, p.gateway_stop_s, lambda: start_gateway(gw)),
    ]


def mb(value: float | None) -> float | None:
    """Bytes as MiB, two decimals."""
    return None if value is None else round(value / MIB, 2)


def wait_publisher(pub: SoakPublisher, cuffs: int, timeout: float) -> float:
    """Until every cuff is connected and its buffer is down to what is normally in flight."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = pub.latest()
        if s["connected"] >= cuffs and s["inflight"] <= cuffs * 2:
            return time.monotonic()
        time.sleep(0.05)
    raise RuntimeError(f"publisher not back within {timeout:.0f} s: {pub.latest()}")


def stored_seqs(srv: Servers, db: str, cuff: str) -> list[int]:
    """Every stored `seq` of one cuff (repeats included)."""
    # S608: the cuff ids are our own generated ones, never input
    rows = srv.influx.query(db, f"SELECT \"seq\" FROM \"cuff_telemetry\" WHERE \"cuff\" = '{cuff}'")  # noqa: S608
    return [int(r["seq"]) for r in rows]


def soak(srv: Servers, *, quick: bool) -> dict[str, Any]:
    """Run the soak (QUICK or FULL profile); the figures for latest.json."""
    p = QUICK if quick else FULL
    db = srv.fresh_database("bench_soak")
    name = f"soak-{int(time.time() * 1000) % 10**8}"
    cfg, port = gateway_config(srv, name=name, database=db, teams=roster(p.cuffs, 0))
    gw = GatewayProcess(cfg, port, srv.tmp / f"{name}.log")
    pub = SoakPublisher(srv, p.cuffs, prefix=f"soakpub{int(time.time()) % 10**6}")
    monitor = Monitor(srv, db, gw, pub, srv.tmp / f"spool-{name}")
    phases: list[dict[str, Any]] = []
    try:
        start_gateway(gw)
        time.sleep(0.3)  # SUBACK before the first reading
        pub.start()
        wait_publisher(pub, p.cuffs, 30)
        t_start = pub.latest()["t0"]
        monitor.start()
        time.sleep(p.warm_s)
        t_b = time.monotonic()
        target = pub.acked_at(t_b)
        done = monitor.caught_up(target, t_b, RECOVERY_TIMEOUT_S)
        baseline = None if done is None else round(done - t_b, 2)
        for fault in faults(srv, gw, p):
            print(f"bench: soak: {fault.name} …", flush=True)
            t_inject = time.monotonic()
            fault.inject()
            time.sleep(fault.hold_s)
            t_repair = time.monotonic()
            fault.repair()
            t_back = time.monotonic()
            t_ref = wait_publisher(pub, p.cuffs, 60) if fault.publisher_drops else t_back
            target = pub.acked_at(t_ref)
            done = monitor.caught_up(target, t_ref, RECOVERY_TIMEOUT_S)
            end = done if done is not None else time.monotonic()
            window = monitor.window(t_inject, end)
            phases.append({
                "fault": fault.name,
                "at_s": round(t_inject - t_start, 1),
                "outage_s": round(t_back - t_inject, 2),
                "repair_s": round(t_back - t_repair, 2),  # restart until ready (or resume)
                "acked_during_outage": pub.acked_at(t_back) - pub.acked_at(t_inject),
                "recovery_s": None if done is None else round(done - t_ref, 2),
                "fault_to_caught_up_s": None if done is None else round(done - t_inject, 2),
                "spool_max_mb": mb(max((s.spool_bytes or 0 for s in window), default=0)),
                "spool_disk_max_mb": mb(max((s.spool_disk for s in window), default=0)),
                "t": [t_inject, t_back, end],
            })
            time.sleep(p.gap_s)
        t_stop = time.monotonic()
        final = pub.finish()
        pub.stop()
        expected = expected_seqs(final)
        total = sum(map(len, expected.values()))
        drained_at = wait_drained(srv, db, total)
        gw_metrics: dict[str, float] = {}
        with contextlib.suppress(OSError, RuntimeError):
            gw_metrics = gw.metrics()
    finally:
        monitor.stop()
        pub.stop()
        srv.influx.resume()
        for server in (srv.influx, srv.mosquitto):
            if not server.running:
                server.start()
        gw.stop()
        forget_sessions(srv.mosquitto.host, srv.mosquitto.port,
                        [*pub.client_ids, f"cuffwatch-{name}"])
    lost, stored_points, distinct, unexpected = storage_accounting(srv, db, expected)
    skewed = srv.count(db, field_="clock_skew_s")
    alerts = srv.count(db, measurement="alert", field_="state")
    samples = monitor.samples
    rss = [s.rss for s in samples if s.rss is not None]
    spool = [s.spool_bytes for s in samples if s.spool_bytes is not None]
    lives: dict[int, tuple[float, float]] = {}  # per gateway process: its last counters
    for s in samples:
        if s.gateway is not None:
            lives[s.gateway[0]] = s.gateway[1:]
    streamed_s = t_stop - t_start
    timeline: list[list[float | int | None]] = []
    next_t = t_start
    for s in samples:
        if s.t >= next_t:
            timeline.append([round(s.t - t_start, 1), s.acked, s.stored,
                             mb(s.spool_bytes), mb(s.rss)])
            next_t = s.t + TIMELINE_STEP_S
    recoveries = [ph["recovery_s"] for ph in phases]
    result: dict[str, Any] = {
        "cuffs": p.cuffs,
        "rates_per_cuff": list(RATES),
        "faults": len(phases),
        "streamed_s": round(streamed_s, 1),
        "published": final["generated"],
        "broker_acked": total,
        "publisher_unacked": final["generated"] - total,
        "publisher_resent": final["resent"],
        "publisher_reconnects": final["reconnects"],
        "stored_points": stored_points,
        "stored_distinct": distinct,
        "lost": len(lost),
        "duplicates_in_storage": stored_points - distinct,
        "unexpected_stored": unexpected,
        "clock_skewed_points": skewed,
        "alerts_stored": alerts,
        "offered_readings_per_s": round(total / streamed_s),
        # stored per second from the first reading until InfluxDB held them all
        "readings_per_s": round(distinct / ((drained_at or time.monotonic()) - t_start)),
        "drained": drained_at is not None,
        "drain_s": None if drained_at is None else round(drained_at - t_stop, 1),
        "baseline_catchup_s": baseline,
        "recovery_max_s": (max(r for r in recoveries if r is not None)
                           if all(r is not None for r in recoveries) else None),
        "spool_max_mb": mb(max(spool, default=0)),
        "spool_disk_max_mb": mb(max((s.spool_disk for s in samples), default=0)),
        "gateway_rss_max_mb": mb(max(rss, default=0)),
        "gateway_lives": len(lives),
        # summed over the gateway's processes, as last sampled (≤ SAMPLE_S before a kill)
        "gateway_accepted": int(sum(a for a, _ in lives.values())),
        "gateway_duplicates_dropped": int(sum(d for _, d in lives.values())),
        "gateway_last_metrics": {k.removeprefix("cuffwatch_"): v for k, v in gw_metrics.items()
                                 if k.startswith(("cuffwatch_readings", "cuffwatch_duplicates",
                                                  "cuffwatch_spool", "cuffwatch_ingest"))},
        "phases": [{k: v for k, v in ph.items() if k != "t"} for ph in phases],
        "timeline_columns": ["t_s", "acked", "stored", "spool_mb", "rss_mb"],
        "timeline": timeline,
    }
    if lost:
        result["lost_evidence"] = _evidence(lost, pub, phases, t_start)
    return result


def expected_seqs(final: dict[str, Any]) -> dict[str, set[int]]:
    """Per cuff, the seqs the broker acknowledged (the publisher's final accounting)."""
    return {c: set(range(n)) - set(unacked) for c, n, unacked in final["cuffs"]}


def wait_drained(srv: Servers, db: str, total: int) -> float | None:
    """Until InfluxDB holds `total` readings, steadily for DRAIN_STABLE_S; when it first did."""
    drained_at: float | None = None
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        n = stored_count(srv, db, timeout=10)
        if n is not None and n >= total:
            drained_at = drained_at or time.monotonic()
            if time.monotonic() - drained_at >= DRAIN_STABLE_S:
                break
        else:
            drained_at = None
        time.sleep(SAMPLE_S)
    return drained_at


def storage_accounting(
    srv: Servers, db: str, expected: dict[str, set[int]],
) -> tuple[list[tuple[str, int]], int, int, int]:
    """Every broker-acknowledged reading, per cuff: (lost (cuff, seq) pairs, stored points,
    distinct stored readings, stored readings the broker never acknowledged)."""
    lost: list[tuple[str, int]] = []
    stored_points = distinct = unexpected = 0
    for cuff, want in expected.items():
        seqs = stored_seqs(srv, db, cuff)
        have = set(seqs)
        stored_points += len(seqs)
        distinct += len(have)
        unexpected += len(have - want)
        lost += [(cuff, s) for s in sorted(want - have)]
    return lost, stored_points, distinct, unexpected


def _evidence(lost: list[tuple[str, int]], pub: SoakPublisher, phases: list[dict[str, Any]],
              t_start: float) -> dict[str, Any]:
    """Where the missing readings were published: per fault window, per cuff, examples."""
    rate = {str(s[1]): int(s[3]) for s in pub.specs}
    by_phase: dict[str, int] = {}
    by_cuff: dict[str, int] = {}
    for cuff, seq in lost:
        t = t_start + seq / rate[cuff]
        where = "steady"
        for ph in phases:
            t_inject, _back, end = ph["t"]
            if t_inject - 1 <= t <= end:
                where = ph["fault"]
        by_phase[where] = by_phase.get(where, 0) + 1
        by_cuff[cuff] = by_cuff.get(cuff, 0) + 1
    return {
        "by_fault_window": by_phase,
        "cuffs_affected": len(by_cuff),
        "worst_cuffs": sorted(by_cuff.items(), key=lambda kv: -kv[1])[:10],
        "examples_columns": ["cuff", "seq", "published_at_s"],
        "examples": [[c, s, round(s / rate[c], 2)] for c, s in lost[:MISSING_EXAMPLES]],
    }


def main() -> None:
    """`python -m bench.soak --publish ...`: the publishing cuffs (a child of the soak)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publish", action="store_true", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--plan", required=True)
    args = parser.parse_args()
    asyncio.run(_publish_main(args, json.loads(Path(args.plan).read_text())))


if __name__ == "__main__":
    main()
