"""The gateway process: the one place that wires MQTT, the handler, alerts and ingest.

Per message, synchronously as the link parses it (see docs/architecture.md):
  `MessageHandler.handle` decides (validate → roster + dedup → alert engine) → this edge
  publishes the alerts at once, publishes a rejection, and stores: readings are staged
  and spooled as one record per socket read, and the link acknowledges the message once
  that record is fsynced.
Everything long-running lives in one TaskGroup with named tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry

from alerts.engine import AlertEngine
from alerts.model import Alert
from alerts.notify import Notifier
from core.config import ConfigError, Settings
from core.topics import Topics
from gateway.ack_endpoint import AckServer
from gateway.ack_guard import UsedLinks
from gateway.decode import Rejected
from gateway.delivery import AlertDelivery
from gateway.errors import BrokerRefusedError
from gateway.gmqtt_compat import ReplyTo
from gateway.handler import Actions, Answer, MessageHandler, Store
from gateway.health import HealthServer
from gateway.hold import HoldState, StorageHold, encode
from gateway.metrics import Counters, GatewayCollector, RejectLog
from gateway.mqtt import STAGED, FastResult, MqttError, Staged
from gateway.mqtt_build import link_from_settings
from gateway.state import CuffState, Fleet
from ingest import lineproto
from ingest.pipeline import IngestPipeline, PipelineState
from ingest.sinks import Sink, make_sink
from ingest.spool import Spool, SpoolError

log = logging.getLogger("cuffwatch.gateway")
# The alert lane's MQTT client id: the data connection's plus this.
ALERT_LINK_SUFFIX = "-alerts"
# Beside the spool (one gateway per spool directory): the ack links used and not yet expired.
USED_LINKS_FILE = "ack-links.used"
TICK_INTERVAL_S = 0.2  # stale/escalation/silence timers: well inside the 1 s alert budget
STATS_INTERVAL_S = 10.0  # SPEC §4: gateway_stats every 10 s
DRAIN_TIMEOUT_S = 10.0  # SIGTERM: in-flight messages and the final flush get this long
DRAIN_POLL_S = 0.02  # the drain polls two counters owned by other tasks; cheap and rare
_STAGED = Store.STAGED
_LINES = Store.LINES


class Gateway:
    """The whole gateway process; `run()` until `stop()`."""

    def __init__(
        self,
        settings: Settings,
        *,
        sink: Sink | None = None,
        notifiers: Sequence[Notifier] = (),
        clock: Callable[[], float] = time.time,
        health: bool | None = None,
        stats_interval_s: float = STATS_INTERVAL_S,
    ) -> None:
        ack_secret = settings.ack.secret_bytes() if settings.ack.enabled else None
        if settings.ack.enabled and ack_secret is None:  # `run` says so before it gets here
            raise ConfigError(["ack.secret: ack.public_url is set, so the links need a secret "
                               "(CUFFWATCH_ACK__SECRET or ack.secret_file)"])
        self.settings = settings
        self.clock = clock
        self.stats_interval_s = stats_interval_s
        self.topics = Topics(settings.topic_root)
        self.fleet = Fleet(settings)
        self.engine = AlertEngine(clock=clock)
        self.counters = Counters()
        self.rejects = RejectLog(self.counters)
        self.handler = MessageHandler(settings, fleet=self.fleet, engine=self.engine,
                                      counters=self.counters, rejects=self.rejects)
        self.notifiers = list(notifiers)
        self.spool = Spool(Path(settings.spool.dir), max_bytes=settings.spool.max_bytes)
        self.pipeline = IngestPipeline(self.spool, sink or make_sink(settings.influx))
        self.hold = StorageHold(self.pipeline, self.spool, self.counters,
                                max_bytes=settings.spool.max_bytes, on_change=self._on_hold)
        self._health_enabled = settings.health.enabled if health is None else health
        self.registry = CollectorRegistry()  # no auto_describe: collectors run only when scraped
        self.registry.register(GatewayCollector(self.counters, self._gauges, self._labeled))
        self.health = HealthServer(
            settings.health.host, settings.health.port, self._readiness, self.registry
        )
        self.status = "offline"
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()
        # alert lines from timer-driven transitions and link acks, stored by their own task
        self._timer_lines: list[str] = []
        self._timer_lines_ready = asyncio.Event()
        self.mqtt = link_from_settings(
            settings.broker,
            client_id=settings.client_id,
            will=(self.topics.gateway_status(settings.instance), b"offline"),
            subscriptions=self._subscriptions(),
            on_message_fast=self.on_message,
            on_request=self.on_request,
            on_flush=self.flush_stage,
            wait_durable=self.hold.wait_durable,
            on_connected=self._on_connected,
            logger=log,
        )
        self.alert_link = link_from_settings(
            settings.broker,
            client_id=f"{settings.client_id}{ALERT_LINK_SUFFIX}",
            on_connected=self._on_lane_connected,
            logger=logging.getLogger("cuffwatch.gateway.alert_link"),
        )
        assert self.mqtt.inbound is not None  # a link with a fast handler receives
        self.inbound = self.mqtt.inbound
        self.delivery = AlertDelivery(self.topics, self.counters, self.notifiers,
                                      data_link=self.mqtt, lane=self.alert_link)
        self.ack_server = None if ack_secret is None else self._ack_server(ack_secret)

    def _ack_server(self, secret: bytes) -> AckServer:
        """The one-tap ack endpoint (`[ack]`), its used links read back from the spool's dir."""
        used = UsedLinks(Path(self.settings.spool.dir) / USED_LINKS_FILE)
        used.load(self.clock())
        return AckServer(self.settings, _LinkAcks(self), secret=secret, used=used,
                         counters=self.counters, clock=self.clock)

    def add_notifier(self, notifier: Notifier) -> None:
        """Hand alert transitions to `notifier` too (before `run()`, which runs it)."""
        self.notifiers.append(notifier)

    def _subscriptions(self) -> list[str]:
        broker = self.settings.broker
        filters = self.topics.subscriptions(broker.teams)
        if broker.shared_group and broker.protocol == 5:
            # §9: data topics are split across the group; acks and state stay per gateway
            filters = [
                f"$share/{broker.shared_group}/{f}" if f.endswith("/telemetry") else f
                for f in filters
            ]
        return filters

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until `stop()`; then drain in-flight messages and flush, bounded in time.

        Raises `BrokerRefusedError` if the broker refuses the first connection (credentials,
        not authorised): retrying cannot help, and the operator must be told in one line. A
        broker that cannot be reached is retried until it can.
        """
        if self._health_enabled:
            await self.health.start()
        refusal: MqttError | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.pipeline.run(), name="cuffwatch.ingest")
                tg.create_task(self.inbound.ack_loop(), name="cuffwatch.ack_loop")
                for n in self.notifiers:
                    tg.create_task(n.run(), name=f"cuffwatch.notify[{type(n).__name__}]")
                connecting = tg.create_task(self._first_connect(), name="cuffwatch.connect")
                stopping = tg.create_task(self._stopping.wait(), name="cuffwatch.stop_wait")
                await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not connecting.done() or connecting.result() is not None:
                    # stop() while the broker is away, or the broker refused us
                    refusal = connecting.result() if connecting.done() else None
                    connecting.cancel()
                    stopping.cancel()
                    await self.mqtt.disconnect()
                    await self.pipeline.aclose(DRAIN_TIMEOUT_S)
                    raise _Stopped  # noqa: TRY301
                stopping.cancel()
                tg.create_task(self.mqtt.supervise(), name="cuffwatch.mqtt_supervisor")
                tg.create_task(self.delivery.run_lane(), name="cuffwatch.alert_link")
                tg.create_task(self._tick_loop(), name="cuffwatch.alert_ticker")
                tg.create_task(self._stats_loop(), name="cuffwatch.stats")
                tg.create_task(self._timer_store_loop(), name="cuffwatch.timer_store")
                await self._start_ack_server()
                self.ready.set()
                await self._stopping.wait()
                await self._shutdown()
                raise _Stopped  # noqa: TRY301 - leaving the TaskGroup cancels its tasks
        except* _Stopped:
            pass
        finally:
            await asyncio.shield(self._stop_ack_server())
            await asyncio.shield(self.health.stop())
            try:
                self.spool.close()  # releases the spool's lock for the next process
            except SpoolError as exc:  # a full disk: what it refused was never acknowledged
                log.warning("spool closed without its last records (%s): their messages were "
                            "never acknowledged; the broker redelivers them", exc)
        if refusal is not None:
            raise BrokerRefusedError(
                f"{refusal}; check broker.username and the password "
                "(CUFFWATCH_BROKER__PASSWORD or broker.password_file) and the broker's ACL"
            ) from None

    def stop(self) -> None:
        """Ask `run()` to drain and return (SIGTERM / Ctrl-C)."""
        self._stopping.set()

    async def _first_connect(self) -> MqttError | None:
        """Connect (retrying while the broker is unreachable); the refusal, if it refuses."""
        try:
            await self.mqtt.connect()
        except MqttError as exc:
            return exc
        return None

    async def _start_ack_server(self) -> None:
        """Listen for taps once connected (before, no alert is open to acknowledge). A port
        that cannot be had leaves the gateway alerting, and says so: acks go over MQTT."""
        if self.ack_server is None:
            return
        try:
            await self.ack_server.start()
        except OSError as exc:
            log.error("ack endpoint: cannot listen on %s:%s (%s): one-tap acks from pushes "
                      "are off; alerts are still acknowledged over MQTT",
                      self.settings.ack.host, self.settings.ack.port, exc.strerror or exc)

    async def _stop_ack_server(self) -> None:
        if self.ack_server is not None:
            await self.ack_server.stop()

    async def _shutdown(self) -> None:
        await asyncio.shield(self._stop_ack_server())  # no tap after the links are gone
        if self.hold.disk_full:  # waiting cannot help: the broker keeps what is unacknowledged
            log.info("stopping: the disk is full: %d message(s) stay unacknowledged; the broker "
                     "redelivers them", self.mqtt.pending_acks)
        else:
            log.info("stopping: draining %d unacknowledged message(s)", self.mqtt.pending_acks)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_TIMEOUT_S):
                    while (self.inbound.pending_acks or self.inbound.busy  # noqa: ASYNC110
                           or self.hold.busy) and not self.hold.disk_full:
                        await asyncio.sleep(DRAIN_POLL_S)
        await self.inbound.cancel_slow()
        if self._timer_lines:
            lines, self._timer_lines = self._timer_lines, []
            with contextlib.suppress(SpoolError):  # full or failing: alerts were published
                await self.pipeline.submit(encode(lines), len(lines))
        await asyncio.shield(self.alert_link.disconnect())
        self._set_status("offline")
        await asyncio.shield(self.mqtt.disconnect())
        self.rejects.flush(self.clock(), final=True)  # no more messages: what was held back
        await asyncio.shield(self.pipeline.aclose(DRAIN_TIMEOUT_S))
        for n in self.notifiers:
            await asyncio.shield(n.aclose())
        log.info("stopped")

    # -- status ---------------------------------------------------------------------------

    def _on_lane_connected(self, session_present: bool) -> None:
        self.delivery.on_lane_connected(session_present)

    def _on_connected(self, session_present: bool) -> None:
        self._set_status(self._storage_status())

    def _on_hold(self, state: HoldState) -> None:
        if self.hold.refusing or state is HoldState.FAILING:
            self._set_status("degraded")

    def _storage_status(self) -> str:
        """degraded while storage is not keeping up: spool refusing (cap, full or failing
        disk), InfluxDB failing, or InfluxDB refusing data."""
        held = self.hold.refusing or self.hold.state is HoldState.FAILING
        failing = self.pipeline.state is PipelineState.FAILING
        return "degraded" if held or failing or self.pipeline.refusing else "online"

    def _set_status(self, status: str) -> None:
        if status == self.status:
            return
        self.status = status
        self.mqtt.publish(
            self.topics.gateway_status(self.settings.instance), status.encode(), qos=1, retain=True
        )

    # -- the per-message edge ---------------------------------------------------------------

    def on_message(
        self, topic: str, payload: bytes, qos: int, retain: bool
    ) -> FastResult | Staged:
        """Let the handler decide, then carry its actions out (the hot path; gateway/mqtt.py).

        Alerts are published at once, before anything touches the disk. Telemetry is STAGED:
        its lines wait for `flush_stage`, which the link calls once the socket read that
        brought it is parsed, and the link acknowledges the message once that spool record
        is fsynced. A message with lines of its own (status, ack) is acknowledged once they
        are durable; anything else at once.
        """
        actions = self.handler.handle(topic, payload, retain, self.clock())
        return self._carry_out(actions)

    def on_request(
        self, topic: str, payload: bytes, qos: int, retain: bool, reply_to: ReplyTo
    ) -> FastResult | Staged:
        """A message whose sender asked for an answer (MQTT 5 Response Topic): as any other,
        then answer what became of it (`cuffwatch ack`/`assign` wait for this)."""
        actions = self.handler.handle(topic, payload, retain, self.clock())
        result = self._carry_out(actions)
        if not retain:  # a retained copy's sender is not waiting any more
            self._answer(actions, reply_to)
        return result

    def _answer(self, actions: Actions, reply_to: ReplyTo) -> None:
        rejection = actions.rejection
        answer = Answer.refused(rejection) if rejection is not None else actions.answer
        if answer is None:
            return  # not a request we answer (telemetry, status)
        team = answer.team
        if not team or not self.topics.is_reply_topic(team, reply_to.topic):
            # never publish where a sender says: only on its team's reply topics
            log.debug("not answering on %r: not a reply topic of team %r",
                      reply_to.topic[:200], team)
            return
        self.mqtt.outbound.publish_request(reply_to.topic, answer.to_json(), reply=reply_to)

    def _carry_out(self, actions: Actions) -> FastResult | Staged:
        for t in actions.alerts:
            self.delivery.deliver(t)
        rejection = actions.rejection
        if rejection is not None:
            self.mqtt.publish(self.topics.rejected(rejection.team, rejection.cuff),
                              rejection.to_json(), qos=0)
        store = actions.store
        if store is _STAGED:
            return STAGED
        if store is _LINES:
            return self.hold.submit(list(actions.lines))
        return None

    def flush_stage(self) -> FastResult:
        """Spool the staged messages' lines as one record: its position, or a coroutine
        holding them while the spool refuses. Never raises."""
        staged = self.handler.take_staged()
        if staged is None:
            return None
        if not staged.lines:  # duplicates only: wait for what is stored before them
            return self.hold.durable_end()
        return self.hold.submit(staged.lines)

    # -- acks from push links ------------------------------------------------------------------

    def acknowledge(self, team: str, cuff: str, kind: str, by: str) -> Alert | None:
        """A tap on a push's link (the ack endpoint), applied exactly as an `…/ack` message:
        the handler's same ack, its transition published at once and its line stored (through
        the timers' store task, which waits out a full spool without blocking the endpoint).
        The alert as acknowledged, or None if there was no open alert to acknowledge."""
        try:
            actions = self.handler.ack(team, cuff, kind, by)
        except Rejected:
            return None
        for t in actions.alerts:
            self.delivery.deliver(t)
        if actions.lines:
            self._timer_lines.extend(actions.lines)
            self._timer_lines_ready.set()
        answer = actions.answer
        return answer.alert if answer is not None and answer.ok else None

    # -- timers -----------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL_S)
            transitions = self.handler.tick()
            self.rejects.flush(self.clock())  # the summary of a flood that has stopped
            self.hold.observe()  # a disk that filled or emptied meanwhile: logged once
            if self.mqtt.connected.is_set():
                self._set_status(self._storage_status())
            if transitions:
                # publish now; storing goes through its own task so that a full spool can
                # never stall the timers (stale cuffs, escalations) behind it
                for t in transitions:
                    self.delivery.deliver(t)
                self._timer_lines.extend(lineproto.alert_line(t) for t in transitions)
                self._timer_lines_ready.set()

    async def _timer_store_loop(self) -> None:
        while True:
            await self._timer_lines_ready.wait()
            self._timer_lines_ready.clear()
            lines = list(self._timer_lines)
            self._timer_lines.clear()
            if lines:
                await self.hold.hold(lines)

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.stats_interval_s)
            await self.hold.hold([self._stats_line()])

    def _stats_line(self) -> str:
        c = self.counters
        p = self.pipeline.snapshot()
        line = lineproto.stats_line(
            self.settings.instance,
            int(self.clock() * 1000),
            received=c.received,
            accepted=c.accepted,
            rejected=c.rejected,
            duplicates=c.duplicates,
            written=p.written_lines,
            refused=p.rejected_lines,
            refused_batches=p.rejected_batches,
            refused_dropped=p.rejected_lines_deleted + p.rejected_unsaved_lines,
            spooled=p.pending_records,
            spool_bytes=int(self.spool.bytes_used),
            alerts_open=len(self.engine.open_alerts()),
            lag_ms=c.lag_ms_max,
        )
        c.lag_ms_max = 0
        return line

    # -- health ---------------------------------------------------------------------------------

    def _readiness(self) -> tuple[bool, str]:
        if not self.mqtt.connected.is_set():
            return False, "broker: not connected"
        if self.hold.state is HoldState.FULL:
            return False, "spool: full"
        if self.hold.disk_full:
            return False, f"spool: disk full ({self.spool.disk_full_reason})"
        return True, f"ok ({self.status})"

    def _gauges(self) -> dict[str, float]:
        out = {f"ingest_{name}": value for name, value in self.pipeline.snapshot().gauges()}
        out.update(
            spool_bytes=float(self.spool.bytes_used),
            spool_full=float(self.hold.state is HoldState.FULL),
            spool_disk_full=float(self.hold.disk_full),
            spool_disk_full_episodes=float(self.hold.disk_full_episodes),
            alerts_open=float(len(self.engine.open_alerts())),
            unacked_messages=float(self.mqtt.pending_acks),
            broker_connected=float(self.mqtt.connected.is_set()),
            alert_link_connected=float(self.alert_link.connected.is_set()),
            mqtt_held_publishes=float(self.mqtt.outbound.held_publishes
                                      + self.alert_link.outbound.held_publishes),
            mqtt_dropped_publishes=float(self.mqtt.outbound.dropped_publishes
                                         + self.alert_link.outbound.dropped_publishes),
        )
        return out

    def _labeled(self) -> list[tuple[str, dict[str, str], float, str]]:
        out: list[tuple[str, dict[str, str], float, str]] = []
        for n in self.notifiers:
            for route, stats in n.stats().items():
                for key, value in dataclasses.asdict(stats).items():
                    if isinstance(value, int | float):
                        out.append(
                            (f"push_{key}", {"route": route}, float(value), f"push route {key}")
                        )
        return out

    def cuff(self, cuff_id: str) -> CuffState:
        return self.fleet.cuffs[cuff_id]


class _LinkAcks:
    """The gateway as the ack endpoint sees it (`gateway.ack_desk.AckTarget`)."""

    def __init__(self, gateway: Gateway) -> None:
        self._gw = gateway

    def knows(self, team: str, cuff: str, kind: str) -> bool:
        return self._gw.handler.knows(team, cuff, kind)

    def open_alert(self, team: str, cuff: str, kind: str) -> Alert | None:
        return self._gw.handler.open_alert(team, cuff, kind)

    def acknowledge(self, team: str, cuff: str, kind: str, by: str) -> Alert | None:
        return self._gw.acknowledge(team, cuff, kind, by)


class _Stopped(Exception):
    """Internal: ends the TaskGroup once the drain is done."""
