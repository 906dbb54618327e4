"""What every benchmark shares: the servers, a generated config, the gateway and the publisher.

The gateway under test always runs as its own process (`cuffwatch run -c FILE`), so it gets
its own core; the load comes from another process (`bench.mqttpub` or `cuffwatch simulate`).
The servers and the gateway launcher are the tests' own (tests/support/), so the benchmarks
run from the repository root: `python -m bench`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]

from bench.mqttpub import Cuff, Plan
from gateway.app import ALERT_LINK_SUFFIX
from tests.support.gateway_process import GatewayProcess, write_config
from tests.support.paths import REPO
from tests.support.servers import InfluxDB1Server, MosquittoServer, free_port

TOPIC_ROOT = "bfr"  # SPEC §2's default root; the run's broker is private, so no collisions
LOAD_TEAMS = ("t1", "t2")  # the load cuffs; two teams so scale-out can partition by team
LATENCY_TEAM = "lat"  # cuffs that cross the hard ceiling once each (alert latency)
POLL_S = 0.05  # progress polls of /metrics: cheap for the gateway, fine-grained for timing
# Device time of the load's reading 0 lies this far back: readings stay inside SPEC's
# max_backlog_s (3600) so the gateway keeps their timestamps (no collisions in InfluxDB).
MAX_DEVICE_SPAN_S = 3300
# The deployed broker's autosave (deploy/mosquitto/mosquitto.conf); the test servers save every
# second for crash tests, which with a backlog queued for the gateway costs the broker dearly.
DEPLOYED_AUTOSAVE_S = 60


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, memory, load and versions: the context every figure needs."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {"python": platform.python_version()}
    for name, cmd in (("mosquitto", ["mosquitto", "-h"]), ("influxd", ["influxd", "version"])):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            exe = cmd[0] if name != "mosquitto" else "/usr/sbin/mosquitto"
            out = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=10,
                                 check=False)
            text = (out.stdout + out.stderr).strip().splitlines()
            versions[name] = text[0] if text else "?"
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "versions": versions,
        "date": datetime.now(tz=UTC).isoformat(timespec="seconds"),
    }


# -- the roster ------------------------------------------------------------------------------------


def load_cuffs(n: int) -> list[Cuff]:
    """`n` load cuffs over LOAD_TEAMS (first half t1, second t2) with prescribed targets."""
    from sim.simulate import generated_squad

    squad = generated_squad(n, teams=len(LOAD_TEAMS))
    return [Cuff(s.team, s.cuff, s.target_mmhg) for s in squad]


def latency_cuffs(n: int) -> list[str]:
    """Ids of the cuffs that cross the hard ceiling once each."""
    return [f"l{k:05d}" for k in range(n)]


def roster(n_load: int, n_latency: int) -> dict[str, Any]:
    """SPEC §7 teams: `simulate --cuffs n --teams 2`'s squad, plus left-leg latency cuffs."""
    from sim.simulate import generated_roster

    teams = generated_roster(n_load, teams=len(LOAD_TEAMS))
    if n_latency:
        teams[LATENCY_TEAM] = {
            "name": "latency probes",
            "cuffs": {c: {"athlete": f"a-{c}", "limb": "left_leg"}
                      for c in latency_cuffs(n_latency)},
        }
    return teams


# -- servers ---------------------------------------------------------------------------------------


class BenchMosquitto(MosquittoServer):
    """The tests' Mosquitto, saving its persistence file as the deployed one does."""

    def _config_lines(self) -> list[str]:
        return [f"autosave_interval {DEPLOYED_AUTOSAVE_S}" if line.startswith("autosave_interval")
                else line for line in super()._config_lines()]


@dataclass
class Servers:
    """One Mosquitto and one InfluxDB 1.x for the whole run, in one temporary directory."""

    tmp: Path
    mosquitto: MosquittoServer
    influx: InfluxDB1Server

    def fresh_database(self, name: str) -> str:
        """Drop and create database `name`; return it."""
        with contextlib.suppress(Exception):
            self.influx.drop_database(name)
        self.influx.create_database(name)
        return name

    def count(self, db: str, measurement: str = "cuff_telemetry", field_: str = "seq") -> int:
        """Points stored in `measurement` (count of `field_`)."""
        # S608: the names are our own constants, never input
        rows = self.influx.query(db, f'SELECT count("{field_}") FROM "{measurement}"')  # noqa: S608
        return int(rows[0]["count"]) if rows else 0


@contextlib.contextmanager
def servers(keep: bool = False) -> Iterator[Servers]:
    """Start Mosquitto and influxd on free loopback ports; stop them and clean up after."""
    tmp = Path(tempfile.mkdtemp(prefix="cuffwatch-bench-"))
    mq = BenchMosquitto(tmp / "mosquitto")
    influx = InfluxDB1Server(tmp / "influxd")
    try:
        mq.start()
        influx.start()
        yield Servers(tmp, mq, influx)
    finally:
        influx.stop()
        mq.stop()
        if not keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


# -- the gateway process ---------------------------------------------------------------------------


def gateway_config(
    srv: Servers, *, name: str, database: str, teams: dict[str, Any],
    broker_teams: tuple[str, ...] = (), shared_group: str | None = None,
    spool_dir: Path | None = None,
) -> tuple[Path, int]:
    """Write `<tmp>/<name>.toml` for one gateway (its spool in `<tmp>/spool-<name>` unless
    `spool_dir`); return its path and health port."""
    port = free_port()
    broker: dict[str, Any] = {"url": srv.mosquitto.url, "protocol": 5}
    if broker_teams:
        broker["teams"] = list(broker_teams)
    if shared_group:
        broker["shared_group"] = shared_group
    config = {
        "instance": name,
        "topic_root": TOPIC_ROOT,
        "broker": broker,
        "influx": {"api": "v1", "url": srv.influx.url, "database": database},
        "spool": {"dir": str(spool_dir or srv.tmp / f"spool-{name}")},
        "health": {"host": "127.0.0.1", "port": port},
        "teams": teams,
    }
    return write_config(srv.tmp / f"{name}.toml", config), port


@contextlib.contextmanager
def gateways(srv: Servers, *, database: str, teams: dict[str, Any],
             partitions: tuple[tuple[str, ...], ...] = ((),), label: str = "gw",
             ) -> Iterator[list[GatewayProcess]]:
    """Start one gateway per partition (a tuple of teams; () = every team), all ready."""
    procs: list[GatewayProcess] = []
    names: list[str] = []
    try:
        for k, part in enumerate(partitions):
            name = f"{label}{k + 1}-{int(time.time() * 1000) % 10**8}"
            names.append(name)
            cfg, port = gateway_config(srv, name=name, database=database, teams=teams,
                                       broker_teams=part)
            procs.append(GatewayProcess(cfg, port, srv.tmp / f"{name}.log").start())
        for p in procs:
            p.wait_ready()
        time.sleep(0.3)  # SUBACK before anything is published
        yield procs
    finally:
        for p in procs:
            p.stop()
        for name in names:
            forget_gateway(srv, name)


def connect_packet(client_id: str, *, clean: bool) -> bytes:
    """An MQTT 3.1.1 CONNECT, keepalive off (a dead broker closes the socket)."""
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04" + (b"\x02" if clean else b"\x00") + b"\x00\x00"
    body += len(cid).to_bytes(2, "big") + cid
    return b"\x10" + bytes([len(body)]) + body  # client ids here keep it under 128 bytes


def forget_sessions(host: str, port: int, client_ids: list[str]) -> int:
    """Connect each client id with a clean session and leave: the broker drops its session."""
    done = 0
    for cid in client_ids:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=5) as s:
            s.sendall(connect_packet(cid, clean=True))
            if s.recv(4)[:1] == b"\x20":
                done += 1
            s.sendall(b"\xe0\x00")
    return done


def forget_gateway(srv: Servers, name: str) -> None:
    """Drop a finished gateway's persistent sessions (`cuffwatch-<name>` and its alert lane).

    Left in place, every stopped gateway's session keeps its subscriptions for an hour
    and the broker queues every later benchmark's messages for it: by the latency run
    five dead sessions multiplied the broker's work, and its autosave of millions of queued
    messages stalled it for seconds (an alert latency of 2.35 s in one run).
    """
    forget_sessions(srv.mosquitto.host, srv.mosquitto.port,
                    [f"cuffwatch-{name}", f"cuffwatch-{name}{ALERT_LINK_SUFFIX}"])


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far (0 if it is gone)."""
    if pid is None:
        return 0.0
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


def wait_written(procs: list[GatewayProcess], readings: int, timeout: float) -> float | None:
    """Poll until the gateways accepted `readings` and wrote all they submitted; time or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        accepted = submitted = written = 0.0
        for p in procs:
            try:
                m = p.metrics()
            except OSError:  # a saturated event loop answers late; poll again
                accepted = -1.0
                break
            accepted += m.get("cuffwatch_readings_accepted_total", 0.0)
            submitted += m.get("cuffwatch_ingest_submitted_lines", 0.0)
            written += m.get("cuffwatch_ingest_written_lines", 0.0)
        if accepted >= readings and written >= submitted > 0:
            return time.monotonic()
        time.sleep(POLL_S)
    return None


# -- the publisher process -------------------------------------------------------------------------


@dataclass
class Publisher:
    """A `bench.mqttpub` child: `prepare(n)` then `go(rate)`; see that module."""

    srv: Servers
    plan: Plan
    proc: subprocess.Popen[str] | None = None
    plan_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.plan_path = self.srv.tmp / f"plan-{id(self)}.json"

    def start(self) -> Publisher:
        """Spawn the child (it connects at once)."""
        self.plan_path.write_text(json.dumps(self.plan.to_json()))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.mqttpub", "--host", self.srv.mosquitto.host,
             "--port", str(self.srv.mosquitto.port), "--plan", str(self.plan_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
        )
        return self

    def _ask(self, line: str) -> str:
        assert self.proc is not None
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"publisher exited ({self.proc.poll()}) after {line!r}")
        return answer

    def prepare(self, messages: int) -> None:
        """Encode the next `messages` messages (outside any timing)."""
        if self._ask(f"prepare {messages}").strip() != "ready":
            raise RuntimeError("publisher did not get ready")

    def go(self, rate: float | None = None) -> dict[str, float]:
        """Publish what was prepared; block until every PUBACK; the child's figures."""
        figures: dict[str, float] = json.loads(self._ask("go" if rate is None else f"go {rate}"))
        return figures

    def go_async(self, rate: float | None = None) -> Callable[[], dict[str, float]]:
        """Start publishing; return a function that waits for the figures."""
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(("go" if rate is None else f"go {rate}") + "\n")
        self.proc.stdin.flush()

        def result() -> dict[str, float]:
            assert self.proc is not None
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("publisher exited before its figures")
            figures: dict[str, float] = json.loads(line)
            return figures

        return result

    def renice(self, niceness: int) -> None:
        """Set the publisher process's nice value (raising it needs no privilege)."""
        assert self.proc is not None
        os.setpriority(os.PRIO_PROCESS, self.proc.pid, niceness)

    def stop(self) -> None:
        """Ask the child to quit; kill it if it does not."""
        if self.proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> Publisher:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def load_plan(cuffs: list[Cuff], *, batch: int, connections: int, per_cuff: int) -> Plan:
    """A plan whose `per_cuff` readings per cuff end about now (device time)."""
    span = min(per_cuff, MAX_DEVICE_SPAN_S)
    base = int(time.time() * 1000) - span * 1000
    return Plan(topic_root=TOPIC_ROOT, cuffs=cuffs, base_ts_ms=base, batch=batch,
                connections=connections)
