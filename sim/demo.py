"""`cuffwatch demo`: the whole pipeline on embedded defaults, nothing to install or configure.

An in-process amqtt broker (MQTT 3.1.1), a simulated squad with a few injected faults, the
gateway, alerts on the console, a live squad table, and readings written as line protocol
files (`influx write` / `influx -import` can load them) under the demo's data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import tempfile
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from alerts.console import ConsoleNotifier, format_transition
from alerts.model import Alert, Transition
from alerts.notify import RouteStats
from core.config import Settings, load_settings
from core.model import CuffPhase, Severity
from gateway.app import Gateway
from gateway.state import CuffState
from sim import simulate

if TYPE_CHECKING:
    from amqtt.broker import Broker

log = logging.getLogger("cuffwatch.demo")

DEMO_TEAMS = 2
TABLE_REFRESH_PER_S = 4
RECENT_ALERTS = 8  # alert lines kept under the live table
PIPED_WIDTH = 140  # rich assumes 80 columns without a terminal, which truncates every cell
COLUMNS = ("team", "cuff", "athlete", "limb", "state", "mmHg", "target", "bout", "battery",
           "alerts")
NUMERIC_COLUMNS = frozenset({"mmHg", "target", "bout", "battery"})  # right-aligned
# a cuff's state, and its alerts by the worst open one's severity
PHASE_STYLES = {CuffPhase.INFLATED: "green", CuffPhase.STALE: "red", CuffPhase.OFFLINE: "red"}
SEVERITY_STYLES = {Severity.CRITICAL: "bold red", Severity.WARNING: "yellow",
                   Severity.INFO: "cyan"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_faults(squad: list[simulate.CuffSpec], speed: float) -> list[simulate.FaultSpec]:
    """A few faults early in the run so that every kind of alert shows within minutes."""
    plan = [
        ("over_pressure", 20),
        ("leak", 35),
        ("low_battery", 15),
        ("dropout", 50),
        ("sensor", 25),
        ("forgotten", 10),
    ]
    faults = []
    for (kind, at), spec in zip(plan, squad[1:], strict=False):
        faults.append(simulate.FaultSpec.parse(f"{kind}:{spec.cuff}@{at}s"))
    return faults


class SquadTable:
    """The live view: one row per cuff, then the latest alert transitions."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.recent: deque[Text] = deque(maxlen=RECENT_ALERTS)

    def submit(self, transition: Transition) -> None:
        line = format_transition(transition)
        line.no_wrap, line.overflow = True, "ellipsis"  # a wrapped line garbles the live view
        self.recent.append(line)

    async def run(self) -> None:
        """Nothing to run: `rich.live` redraws the table from the gateway's state."""

    async def aclose(self) -> None:
        """Nothing queued to drop."""

    def stats(self) -> Mapping[str, RouteStats]:
        """No delivery routes, so no counters."""
        return {}

    def __rich__(self) -> Group:
        table = Table(title="cuffwatch demo — squad live", title_justify="left", expand=False)
        for col in COLUMNS:
            table.add_column(col, justify="right" if col in NUMERIC_COLUMNS else "left")
        open_alerts = self.gw.engine.open_alerts()
        open_by_cuff: dict[str, list[Alert]] = {}
        for alert in open_alerts:
            open_by_cuff.setdefault(alert.cuff, []).append(alert)
        for state in sorted(self.gw.fleet.cuffs.values(), key=lambda s: (s.team, s.cuff)):
            table.add_row(*self._row(state, open_by_cuff.get(state.cuff, [])))
        c = self.gw.counters
        footer = Text(
            f"received {c.received}  accepted {c.accepted}  rejected {c.rejected}  "
            f"duplicates {c.duplicates}  open alerts "
            f"{len(open_alerts)}   (Ctrl-C to stop)",
            style="dim",
        )
        return Group(table, footer, Text("latest alerts:", style="bold"), *self.recent)

    def _row(self, state: CuffState, alerts: list[Alert]) -> tuple[str | Text, ...]:
        """One cuff's cells, in `COLUMNS` order."""
        params = state.params(self.gw.settings, state.athlete, state.limb)
        worst = max((a.severity for a in alerts), default=None)
        phase = state.phase
        return (
            state.team,
            state.cuff,
            state.athlete,
            state.limb.value,
            Text(phase.value, style=PHASE_STYLES.get(phase, "")),
            "" if state.last_pressure is None else f"{state.last_pressure:.0f}",
            "" if params.target_mmhg is None else f"{params.target_mmhg:.0f}",
            f"{state.last_elapsed_s:.0f} s" if phase is CuffPhase.INFLATED else "",
            "" if state.battery_pct is None else f"{state.battery_pct:.0f} %",
            Text(
                ", ".join(sorted(a.kind.value for a in alerts)),
                style="" if worst is None else SEVERITY_STYLES[worst],
            ),
        )


def demo_settings(data_dir: Path, port: int, n_cuffs: int) -> Settings:
    return load_settings(
        instance="demo",
        broker={"url": f"mqtt://127.0.0.1:{port}", "protocol": 3, "username": "gateway"},
        influx={"api": "file", "file_dir": str(data_dir / "lines")},
        spool={"dir": str(data_dir / "spool")},
        health={"host": "127.0.0.1", "port": 0},
        teams=simulate.generated_roster(n_cuffs, teams=DEMO_TEAMS, seed=7),
    )


async def _start_broker(port: int) -> Broker:
    """The embedded amqtt broker on 127.0.0.1:`port`, started."""
    from amqtt.broker import Broker

    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            # with anonymous access amqtt keeps no session; the gateway logs in by name
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False}
            },
        }
    )
    await broker.start()
    return broker


async def _show(table: SquadTable, console: Console, stop: asyncio.Event) -> None:
    """Until `stop`: the live table on a terminal; piped, its rows every 5 s."""
    if console.is_terminal:
        with Live(table, console=console, refresh_per_second=TABLE_REFRESH_PER_S, transient=False):
            await stop.wait()
        return
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 5)
        console.print(table.__rich__().renderables[0])


async def _run(
    gw: Gateway, options: simulate.SimOptions, table: SquadTable, console: Console, *,
    stop: asyncio.Event, duration: float | None,
) -> None:
    """The gateway, then the simulator against it, the table on show, until `stop` is set
    (a signal, or after `duration` s)."""
    async with asyncio.TaskGroup() as tg:
        gw_task = tg.create_task(gw.run(), name="cuffwatch.demo.gateway")
        await gw.ready.wait()
        sim_task = tg.create_task(
            simulate.run_simulation(options), name="cuffwatch.demo.simulator"
        )
        if duration:
            asyncio.get_running_loop().call_later(duration, stop.set)
        await _show(table, console, stop)
        sim_task.cancel()
        gw.stop()
        await gw_task


async def _demo(args: argparse.Namespace, console: Console) -> None:
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="cuffwatch-demo-"))
    port = args.port or _free_port()
    broker = await _start_broker(port)
    settings = demo_settings(data_dir, port, args.cuffs)
    squad = simulate.squad_from_settings(settings)
    faults = [] if args.no_faults else demo_faults(squad, args.speed)
    options = simulate.SimOptions(
        squad=tuple(squad),
        port=port,
        protocol=3,
        username="squad",
        topic_root=settings.topic_root,
        speed=args.speed,
        faults=tuple(faults),
        seed=7,
    )
    gw = Gateway(settings)
    table = SquadTable(gw)
    gw.add_notifier(table if console.is_terminal else ConsoleNotifier(console))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    console.print(
        f"[bold]cuffwatch demo[/]: broker 127.0.0.1:{port}, {len(squad)} cuffs in "
        f"{DEMO_TEAMS} teams, session speed {args.speed:g}x, data in {data_dir}"
    )
    if faults:
        console.print("injected faults: " + ", ".join(str(f) for f in faults))
    started = time.monotonic()
    try:
        await _run(gw, options, table, console, stop=stop, duration=args.duration)
    finally:
        # the embedded broker drops its queue with it: "N messages not broadcasted" is noise
        logging.getLogger("amqtt").setLevel(logging.ERROR)
        await broker.shutdown()
    lines = sorted((data_dir / "lines").glob("*.lp"))
    console.print(
        f"stopped after {time.monotonic() - started:.0f} s: {gw.counters.accepted} readings "
        f"accepted, {len(lines)} line-protocol file(s) in {data_dir / 'lines'}"
    )


def run_demo(args: argparse.Namespace) -> int:
    console = Console(highlight=False)
    if not console.is_terminal:  # piped or logged: wide enough for the table's columns
        console = Console(highlight=False, width=PIPED_WIDTH)
    # the live table is the interface; keep library chatter out of it
    logging.getLogger().setLevel(logging.WARNING)
    try:
        asyncio.run(_demo(args, console))
    except KeyboardInterrupt:
        return 130
    return 0
