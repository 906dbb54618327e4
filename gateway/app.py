"""The gateway: the one place that wires MQTT, per-cuff state, alerts and ingest together.

Per telemetry message (one task per message, run by gmqtt):
  decode → roster + dedup → alert engine → alerts published at once → lines to the spool
  → return (gmqtt PUBACKs only now, on MQTT 5).
Everything long-running lives in one TaskGroup with named tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from alerts.engine import NOTHING, AlertEngine, Outcome
from alerts.model import Alert, AlertKind, AlertState, Transition
from core.config import Assignment, Settings
from core.model import CuffPhase, Reading
from core.topics import BadTopic, ParsedTopic, TopicKind, Topics
from gateway.decode import (
    Rejected,
    Rejection,
    RejectReason,
    decode_readings,
    decode_status,
)
from gateway.health import Counters, GatewayCollector, HealthServer
from gateway.mqtt import STAGED, FastResult, MqttError, MqttLink, Staged, make_ssl_context
from gateway.state import CuffState, Fleet
from ingest import lineproto
from ingest.pipeline import IngestPipeline, PipelineState
from ingest.sinks import Sink, make_sink
from ingest.spool import Spool, SpoolFull

log = logging.getLogger("cuffwatch.gateway")
# The alert lane's MQTT client id: the data connection's plus this.
ALERT_LINK_SUFFIX = "-alerts"
# enum members as module globals: the per-message path reads them without the class lookup
_INFLATED = CuffPhase.INFLATED
_DEFLATED = CuffPhase.DEFLATED

TICK_INTERVAL_S = 0.2  # stale/escalation/silence timers: well inside the 1 s alert budget
STATS_INTERVAL_S = 10.0  # SPEC §4: gateway_stats every 10 s
REJECT_LOG_INTERVAL_S = 60.0  # log a cuff's rejections at most once a minute (STYLE 5)
REJECT_LOG_MAX_KEYS = 10_000  # hostile ids are unbounded; the rate limiter's memory is not
SPOOL_FULL_RETRY_S = 0.5  # while the spool is full, hold the message (no PUBACK) and retry
DRAIN_TIMEOUT_S = 10.0  # SIGTERM: in-flight messages and the final flush get this long
DRAIN_POLL_S = 0.02  # the drain polls two counters owned by other tasks; cheap and rare
RETAINED_ACK = "an ack must not be retained (SPEC §2): a retained ack is not someone acting now"
RETAINED_TELEMETRY = (
    "telemetry must not be retained (SPEC §2): a retained reading is not live; clear it with "
    "an empty retained message on this topic"
)


class Notifier(Protocol):
    """Anything that takes alert transitions without blocking (push routes, the console)."""

    def submit(self, transition: Transition) -> None: ...


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
        self.settings = settings
        self.clock = clock
        self.stats_interval_s = stats_interval_s
        self.topics = Topics(settings.topic_root)
        self.fleet = Fleet(settings)
        self.engine = AlertEngine(clock=clock)
        self.counters = Counters()
        self.notifiers = list(notifiers)
        self.spool = Spool(Path(settings.spool.dir), max_bytes=settings.spool.max_bytes)
        self.pipeline = IngestPipeline(self.spool, sink or make_sink(settings.influx))
        self._health_enabled = settings.health.enabled if health is None else health
        self.registry = CollectorRegistry()  # no auto_describe: collectors run only when scraped
        self.registry.register(GatewayCollector(self.counters, self._gauges, self._labeled))
        self.health = HealthServer(
            settings.health.host, settings.health.port, self._readiness, self.registry
        )
        self.status = "offline"
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()
        # accepted readings (and their targets) and alert/bout lines of the messages staged
        # since the link's last flush: formatted and spooled as one record by `_flush_stage`
        self._stage_readings: list[Reading] = []
        self._stage_targets: list[float | None] = []
        self._stage_lines: list[str] = []
        self._stage_dups = False  # a staged message repeated readings already taken
        # _store coroutines run one at a time, in order; while one holds lines the spool
        # refused (`_refusing`), every later record queues behind it
        self._holding = 0
        self._refusing = False
        self._store_lock = asyncio.Lock()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._reject_log: dict[tuple[str, str], tuple[float, int]] = {}
        self._spool_full = False
        # alert lines from timer-driven transitions, stored by their own task
        self._timer_lines: list[str] = []
        self._timer_lines_ready = asyncio.Event()
        broker = settings.broker
        tls = (
            make_ssl_context(broker.ca_file, broker.cert_file, broker.key_file)
            if broker.tls
            else None
        )
        filters = self.topics.subscriptions(broker.teams)
        if broker.shared_group and broker.protocol == 5:
            # §9: data topics are split across the group; acks and state stay per gateway
            filters = [
                f"$share/{broker.shared_group}/{f}" if f.endswith("/telemetry") else f
                for f in filters
            ]
        self.mqtt = MqttLink(
            client_id=settings.client_id,
            host=broker.host,
            port=broker.port,
            protocol=broker.protocol,
            username=broker.username,
            password=broker.secret_password(),
            tls=tls,
            session_expiry_s=broker.session_expiry_s,
            keepalive_s=broker.keepalive_s,
            will=(self.topics.gateway_status(settings.instance), b"offline"),
            subscriptions=filters,
            on_message_fast=self._on_message_fast,
            on_flush=self._flush_stage,
            wait_durable=self.pipeline.wait_durable,
            on_connected=self._on_connected,
            logger=log,
        )
        # Alerts leave on a connection of their own. On the data connection they queued in
        # the broker behind the PUBACK batches written just before them (a batch covers one
        # group commit, often hundreds of acks), and Mosquitto works through one socket's
        # packets in turn with every other client's: p99 136-159 ms at half load in the
        # latency bench, 38-41 ms with this lane. Until it is up, alerts take the data
        # connection (see _alert_link_up).
        self.alert_link = MqttLink(
            client_id=f"{settings.client_id}{ALERT_LINK_SUFFIX}",
            host=broker.host,
            port=broker.port,
            protocol=broker.protocol,
            username=broker.username,
            password=broker.secret_password(),
            tls=tls,
            session_expiry_s=broker.session_expiry_s,
            keepalive_s=broker.keepalive_s,
            on_connected=self._on_alert_link_connected,
            logger=logging.getLogger("cuffwatch.gateway.alert_link"),
        )
        self._alert_lane = self.mqtt  # the link alerts are published on
        # Each alert topic's latest retained payload (b"" once cleared): one per cuff and
        # kind of the roster at most. Republished when the lane comes back without its
        # session, because gmqtt then drops the publishes it had not had acknowledged.
        self._alert_retained: dict[str, bytes] = {}

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until `stop()`; then drain in-flight messages and flush, bounded in time."""
        if self._health_enabled:
            await self.health.start()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.pipeline.run(), name="cuffwatch.ingest")
                tg.create_task(self.mqtt.ack_loop(), name="cuffwatch.ack_loop")
                for n in self.notifiers:
                    runner = getattr(n, "run", None)
                    if runner is not None:
                        tg.create_task(runner(), name=f"cuffwatch.notify[{type(n).__name__}]")
                connecting = tg.create_task(self.mqtt.connect(), name="cuffwatch.connect")
                stopping = tg.create_task(self._stopping.wait(), name="cuffwatch.stop_wait")
                await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not connecting.done():  # stop() while the broker refuses or is away
                    connecting.cancel()
                    await self.mqtt.disconnect()
                    await self.pipeline.aclose(DRAIN_TIMEOUT_S)
                    raise _Stopped  # noqa: TRY301
                stopping.cancel()
                tg.create_task(self.mqtt.supervise(), name="cuffwatch.mqtt_supervisor")
                tg.create_task(self._alert_link_up(), name="cuffwatch.alert_link")
                tg.create_task(self._tick_loop(), name="cuffwatch.alert_ticker")
                tg.create_task(self._stats_loop(), name="cuffwatch.stats")
                tg.create_task(self._timer_store_loop(), name="cuffwatch.timer_store")
                self.ready.set()
                await self._stopping.wait()
                await self._shutdown()
                raise _Stopped  # noqa: TRY301 - leaving the TaskGroup cancels its tasks
        except* _Stopped:
            pass
        finally:
            await asyncio.shield(self.health.stop())
            self.spool.close()  # releases the spool's lock for the next process

    async def _alert_link_up(self) -> None:
        """Connect the alert lane (retrying with backoff), move alerts onto it, keep it up.

        Alerts use the data connection until then. The move waits until every publish on
        the data connection is acknowledged, so no older alert can reach the broker after a
        newer one on the lane (a retained alert topic must end in its latest state). From
        then on alerts stay on the lane, also while it reconnects: the link resends its
        unacknowledged publishes in order. Refused (not just unreachable): alerts stay on
        the data connection.
        """
        try:
            await self.alert_link.connect()
        except MqttError as exc:
            log.error("alert connection refused (%s); alerts go out on the data connection",
                      exc)
            return
        while self.mqtt.unacked_publishes:
            await self.mqtt.publishes_acked()
        self._alert_lane = self.alert_link
        await self.alert_link.supervise()

    def _on_alert_link_connected(self, session_present: bool) -> None:
        if session_present or self._alert_lane is not self.alert_link:
            return  # the broker kept its state; the link has resent what it had not acked
        # a new session: the broker may have lost its retained messages too (a restart
        # without persistence). The link has resent what was unacknowledged, in order (each
        # such topic's last publish is its latest state); every other alert topic's latest
        # state goes out once more so the retained store ends right.
        again = {t: p for t, p in self._alert_retained.items()
                 if t not in self.alert_link.resent_topics}
        log.warning("alert connection came back without its session; republishing %d "
                    "alert topic(s)", len(again))
        for topic, payload in again.items():
            self.alert_link.publish(topic, payload, qos=1, retain=True)

    def stop(self) -> None:
        """Ask `run()` to drain and return (SIGTERM / Ctrl-C)."""
        self._stopping.set()

    async def _shutdown(self) -> None:
        log.info("stopping: draining %d unacknowledged message(s)", self.mqtt.pending_acks)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                while (  # noqa: ASYNC110
                    self.mqtt.pending_acks or self.mqtt.busy or not self._idle.is_set()
                ):
                    await asyncio.sleep(DRAIN_POLL_S)
        await self.mqtt.cancel_slow()
        if self._timer_lines:
            lines, self._timer_lines = self._timer_lines, []
            with contextlib.suppress(SpoolFull):
                await self.pipeline.submit(_encode(lines), len(lines))
        await asyncio.shield(self.alert_link.disconnect())
        self._set_status("offline")
        await asyncio.shield(self.mqtt.disconnect())
        await asyncio.shield(self.pipeline.aclose(DRAIN_TIMEOUT_S))
        for n in self.notifiers:
            closer = getattr(n, "aclose", None)
            if closer is not None:
                await asyncio.shield(closer())
        log.info("stopped")

    def _on_connected(self, session_present: bool) -> None:
        self._set_status("degraded" if self._spool_full else "online")

    def _set_status(self, status: str) -> None:
        if status == self.status:
            return
        self.status = status
        self.mqtt.publish(
            self.topics.gateway_status(self.settings.instance), status.encode(), qos=1, retain=True
        )

    # -- the per-message path ---------------------------------------------------------------

    def _on_message_fast(
        self, topic: str, payload: bytes, qos: int, retain: bool
    ) -> FastResult | Staged:
        """Handle a message synchronously as it is parsed (the hot path; see gateway/mqtt.py).

        Telemetry is STAGED: its alerts are out at once, its lines wait for `_flush_stage`,
        which the link calls once the socket read that brought it is parsed (at once for a
        message gmqtt delivered), and the link acknowledges the message once that spool
        record is fsynced. Everything else (status, assignment, acks, retained alerts)
        returns a coroutine: the slow path. Never raises: on an internal error the readings
        staged before it are still stored, with the message acknowledged after them.
        """
        self.counters.received += 1
        try:
            return self._handle_fast(topic, payload, retain)
        except Exception:
            self.counters.internal_errors += 1
            log.exception("internal error handling a message on %s", topic[:200])
            return STAGED if self._stage_readings or self._stage_lines else None

    def _handle_fast(self, topic: str, payload: bytes, retain: bool) -> FastResult | Staged:
        try:
            parsed = self.topics.parse(topic)
        except BadTopic as exc:
            self._count_reject(RejectReason.BAD_TOPIC, "", "", str(exc))
            return None
        if parsed is None:
            return None
        if parsed.kind is not TopicKind.TELEMETRY:
            return self._on_message_slow(parsed, payload, retain)
        if retain:
            # a retained reading outlives its moment: the broker hands it to every new
            # subscription, hours later. Its data came live when it was published.
            self._reject(Rejection(parsed.team, parsed.cuff, RejectReason.RETAINED,
                                   RETAINED_TELEMETRY, payload))
            return None
        try:
            self._stage_telemetry(parsed.team, parsed.cuff, payload)
        except Rejected as rej:
            self._reject(Rejection(parsed.team, parsed.cuff, rej.reason, rej.detail, payload))
            return None
        return STAGED

    def _flush_stage(self) -> FastResult:
        """Spool the staged messages' lines as one record; its position, or a coroutine.

        The link calls it after each socket read, so a read's worth of messages costs one
        record, one CRC and one pipeline entry, and the line formatting comes after the
        read's alerts are out. A record the spool cannot take (full, failing) goes to a
        coroutine that holds all of these messages until it does. A message of duplicates
        only is acknowledged once everything stored before it is durable: its originals may
        still be waiting for the disk. Never raises.
        """
        readings, targets, extra = self._stage_readings, self._stage_targets, self._stage_lines
        dups, self._stage_dups = self._stage_dups, False
        if not readings and not extra:
            if not dups:
                return None
            return self._store([]) if self._refusing else self.spool.end_position
        self._stage_readings, self._stage_targets, self._stage_lines = [], [], []
        try:
            lines = list(map(lineproto.telemetry_line, readings, targets))
        except Exception:  # noqa: BLE001 - a formatting bug costs its reading, not the read
            lines = self._format_each(readings, targets)
        lines += extra
        if self._refusing:
            return self._store(lines)  # behind the records already held, in order
        try:
            return self.pipeline.submit_nowait(_encode(lines), len(lines))
        except Exception:  # noqa: BLE001 - SpoolError or whatever the disk raised: hold, retry
            self._refusing = True
            return self._store(lines)

    def _format_each(self, readings: list[Reading], targets: list[float | None]) -> list[str]:
        lines: list[str] = []
        for reading, target in zip(readings, targets, strict=True):
            try:
                lines.append(lineproto.telemetry_line(reading, target))
            except Exception:
                self.counters.internal_errors += 1
                log.exception("cannot format a reading of %s/%s", reading.team, reading.cuff)
        return lines

    async def _on_message_slow(self, parsed: ParsedTopic, payload: bytes, retain: bool) -> None:
        """The slow path for non-telemetry messages; never raises."""
        self._inflight += 1
        self._idle.clear()
        team, cuff = parsed.team, parsed.cuff
        try:
            if parsed.kind is TopicKind.STATUS:
                await self._status(team, cuff, payload)
            elif parsed.kind is TopicKind.ASSIGNMENT:
                self._assignment(team, cuff, payload)
            elif parsed.kind is TopicKind.ACK:
                if retain:  # replayed to every new subscription: it would silence forever
                    raise Rejected(RejectReason.RETAINED, RETAINED_ACK)  # noqa: TRY301
                await self._ack(team, cuff, parsed.alert_kind or "", payload)
            elif parsed.kind is TopicKind.ALERT and retain and payload:
                self._restore_alert(team, cuff, payload)
        except Rejected as rej:
            self._reject(Rejection(team, cuff, rej.reason, rej.detail, payload))
        except Exception:
            self.counters.internal_errors += 1
            log.exception("internal error handling a message for %s/%s", team, cuff)
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    def _stage_telemetry(self, team: str, cuff: str, payload: bytes) -> None:
        """Validate, dedup, run the rules, publish alerts; stage what to store.

        Once per reading: everything loop-invariant is hoisted, and the cuff's summary
        (phase, last values, counters) is set once per message from its last reading.
        """
        state = self.fleet.lookup(team, cuff)
        raws = decode_readings(payload)
        now_s = self.clock()
        received_ms = int(now_s * 1000)
        counters = self.counters
        counters.readings_received += len(raws)
        stage_reading = self._stage_readings.append
        stage_target = self._stage_targets.append
        outcomes: list[Outcome] | None = None  # the rare readings that changed an alert or a bout
        is_duplicate = state.is_duplicate
        to_reading = self.fleet.to_reading
        rule_params = state.params
        settings = self.settings
        on_reading = self.engine.on_reading
        oldest_ts: int | None = None
        reading: Reading | None = None
        accepted = 0
        for raw in raws:
            device_ts = raw.ts_ms()
            if is_duplicate(raw.seq, device_ts, raw.pressure_mmhg, raw.elapsed_s):
                counters.duplicates += 1
                self._stage_dups = True
                continue
            reading = to_reading(state, raw, received_ms, device_ts)
            params = rule_params(settings, reading.athlete, reading.limb)
            outcome = on_reading(reading, params)
            if oldest_ts is None or device_ts < oldest_ts:
                oldest_ts = device_ts
            accepted += 1
            if reading.battery_pct is not None:
                state.battery_pct = reading.battery_pct
            stage_reading(reading)
            # the target the rules judged by: the prescription, else the cuff's own (SPEC §3)
            rx = params.target_mmhg
            stage_target(rx if rx is not None else reading.target_mmhg)
            if outcome is not NOTHING:
                if outcomes is None:
                    outcomes = []
                outcomes.append(outcome)
        if reading is not None and oldest_ts is not None:
            lag = received_ms - oldest_ts
            if lag > counters.lag_ms_max:  # noqa: PLR1730 - max() is a call per message
                counters.lag_ms_max = lag
            counters.accepted += accepted
            state.accepted += accepted
            state.last_seen_s = now_s
            state.phase = _INFLATED if reading.inflated else _DEFLATED
            state.last_pressure = reading.pressure_mmhg
            state.last_elapsed_s = reading.elapsed_s
        if outcomes is not None:
            self._stage_outcomes(outcomes)

    def _stage_outcomes(self, outcomes: list[Outcome]) -> None:
        # alerts go out before anything touches the disk: the alert path never waits on storage
        extra = self._stage_lines
        for o in outcomes:
            for t in o.transitions:
                self._deliver(t)
                extra.append(lineproto.alert_line(t))
        for o in outcomes:
            if o.bout is not None:
                extra.append(lineproto.bout_line(o.bout))

    async def _store(self, lines: list[str]) -> None:
        """Make lines durable (spool group commit), holding the messages they came from.

        While the spool refuses them (full, or the disk failing) the messages stay
        unacknowledged and this retries. Holds run one at a time, in the order they began,
        so a later hold (or a duplicate's, with no lines) never completes before an earlier
        one. Never raises but CancelledError (at shutdown: the broker redelivers).
        """
        self._holding += 1
        try:
            async with self._store_lock:
                await self._store_held(lines)
        finally:
            self._holding -= 1
            if not self._holding:
                self._refusing = False

    async def _store_held(self, lines: list[str]) -> None:
        body = _encode(lines) if lines else b""
        while True:
            try:
                if lines:
                    await self.pipeline.submit(body, len(lines))
                else:
                    await self.pipeline.wait_durable(self.spool.end_position)
                if self._spool_full:
                    self._spool_full = False
                    log.warning("spool has room again; accepting messages")
                return
            except Exception as exc:  # noqa: BLE001 - whatever the disk raised: hold and retry
                self._refusing = True
                if not isinstance(exc, SpoolFull):
                    # an fsync failed or the disk is gone: never acknowledge what is not
                    # durable; hold the messages and try again
                    self.counters.internal_errors += 1
                    log.error("spool write failed (%s); holding the message(s)", exc)
                    self._set_status("degraded")
                    await asyncio.sleep(SPOOL_FULL_RETRY_S)
                    continue
                if not self._spool_full:
                    self._spool_full = True
                    log.error(
                        "SPOOL FULL (%d bytes, cap %d): holding messages unacknowledged until "
                        "InfluxDB drains it; the broker keeps them",
                        self.spool.bytes_used,
                        self.settings.spool.max_bytes,
                    )
                    self._set_status("degraded")
                self.counters.backpressure_waits += 1
                await asyncio.sleep(SPOOL_FULL_RETRY_S)

    async def _status(self, team: str, cuff: str, payload: bytes) -> None:
        state = self.fleet.lookup(team, cuff)
        online = decode_status(payload)
        state.online = online
        if not online:
            state.phase = CuffPhase.OFFLINE
        transitions = self.engine.on_status(
            team, cuff, online, athlete=state.athlete, limb=state.limb.value
        )
        await self._deliver_and_store(transitions)

    def _assignment(self, team: str, cuff: str, payload: bytes) -> None:
        state = self.fleet.lookup(team, cuff)
        if not payload.strip():
            state.set_assignment(None)
            log.info("%s/%s: assignment cleared", team, cuff)
            return
        try:
            assignment = Assignment.model_validate_json(payload)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "assignment"
            raise Rejected(RejectReason.INVALID_ASSIGNMENT, f"{where}: {first['msg']}") from None
        state.set_assignment(assignment)
        log.info("%s/%s: assigned to %s %s", team, cuff, assignment.athlete, state.limb.value)

    async def _ack(self, team: str, cuff: str, kind_text: str, payload: bytes) -> None:
        state = self.fleet.lookup(team, cuff)
        try:
            kind = AlertKind(kind_text)
        except ValueError:
            raise Rejected(RejectReason.INVALID_STATUS, f"no alert kind {kind_text[:64]}") from None
        by: str | None = None
        if payload.strip():
            try:
                obj = json.loads(payload)
            except (ValueError, RecursionError):
                raise Rejected(RejectReason.INVALID_STATUS, "ack is not valid JSON") from None
            if isinstance(obj, dict) and isinstance(obj.get("by"), str):
                by = obj["by"][:64]
        transitions = self.engine.on_ack(state.team, cuff, kind, by)
        await self._deliver_and_store(transitions)

    def _restore_alert(self, team: str, cuff: str, payload: bytes) -> None:
        try:
            alert = Alert.from_dict(json.loads(payload))
        except (ValueError, TypeError, RecursionError):
            log.warning("%s/%s: ignoring an unreadable retained alert", team, cuff)
            return
        self.fleet.lookup(team, cuff)  # only the roster's cuffs: Rejected otherwise
        if alert.team == team and alert.cuff == cuff and alert.state is not AlertState.RESOLVED:
            self.engine.restore(alert)

    # -- alert delivery -------------------------------------------------------------------

    def _deliver(self, t: Transition) -> None:
        """Publish on MQTT (SPEC §2 alert topics) and hand to the notifiers; never blocks."""
        a = t.alert
        topic = self.topics.alert(a.team, a.cuff, a.kind.value)
        link = self._alert_lane
        if a.state is AlertState.RESOLVED:
            link.publish(topic, a.to_json(), qos=1, retain=False)
            link.publish(topic, b"", qos=1, retain=True)
            self._alert_retained[topic] = b""
        else:
            payload = a.to_json()
            link.publish(topic, payload, qos=1, retain=True)
            self._alert_retained[topic] = payload
        self.counters.alerts_published += 1
        for n in self.notifiers:
            try:
                n.submit(t)
            except Exception:
                log.exception("notifier %s failed", type(n).__name__)

    async def _deliver_and_store(self, transitions: Sequence[Transition]) -> None:
        if not transitions:
            return
        for t in transitions:
            self._deliver(t)
        await self._store([lineproto.alert_line(t) for t in transitions])

    # -- timers -----------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL_S)
            transitions = self.engine.tick()
            if self.mqtt.connected.is_set():
                # degraded: storage is not keeping up (spool at its cap, or InfluxDB failing)
                failing = self.pipeline.state is PipelineState.FAILING
                self._set_status("degraded" if self._spool_full or failing else "online")
            now = self.clock()
            for state in self.fleet.cuffs.values():
                if state.phase is CuffPhase.INFLATED:
                    params = state.params(self.settings, state.athlete, state.limb)
                    if now - state.last_seen_s >= params.stale_after_s:
                        state.phase = CuffPhase.STALE
            if transitions:
                # publish now; storing goes through its own task so that a full spool can
                # never stall the timers (stale cuffs, escalations) behind it
                for t in transitions:
                    self._deliver(t)
                self._timer_lines.extend(lineproto.alert_line(t) for t in transitions)
                self._timer_lines_ready.set()

    async def _timer_store_loop(self) -> None:
        while True:
            await self._timer_lines_ready.wait()
            self._timer_lines_ready.clear()
            lines = list(self._timer_lines)
            self._timer_lines.clear()
            if lines:
                await self._store(lines)

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.stats_interval_s)
            await self._store([self._stats_line()])

    def _stats_line(self) -> str:
        c = self.counters
        p = self.pipeline.stats()
        line = lineproto.stats_line(
            self.settings.instance,
            int(self.clock() * 1000),
            received=c.received,
            accepted=c.accepted,
            rejected=c.rejected,
            duplicates=c.duplicates,
            written=int(p.get("written_lines", 0)),
            spooled=int(p.get("pending_records", 0)),
            spool_bytes=int(self.spool.bytes_used),
            alerts_open=len(self.engine.open_alerts()),
            lag_ms=c.lag_ms_max,
        )
        c.lag_ms_max = 0
        return line

    # -- rejections ---------------------------------------------------------------------------

    def _reject(self, rej: Rejection) -> None:
        self._count_reject(rej.reason, rej.team, rej.cuff, rej.detail)
        self.mqtt.publish(self.topics.rejected(rej.team, rej.cuff), rej.to_json(), qos=0)

    def _count_reject(self, reason: RejectReason, team: str, cuff: str, detail: str) -> None:
        self.counters.rejected += 1
        self.counters.rejected_by_reason[reason] += 1
        key = (team, cuff)
        now = self.clock()
        last, suppressed = self._reject_log.get(key, (0.0, 0))
        if now - last >= REJECT_LOG_INTERVAL_S:
            if len(self._reject_log) >= REJECT_LOG_MAX_KEYS:
                self._reject_log.clear()
            more = f" (+{suppressed} more since last logged)" if suppressed else ""
            log.warning(
                "rejected from %s/%s: %s: %s%s",
                team or "?",
                cuff or "?",
                reason.value,
                detail,
                more,
            )
            self._reject_log[key] = (now, 0)
        else:
            self._reject_log[key] = (last, suppressed + 1)

    # -- health ---------------------------------------------------------------------------------

    def _readiness(self) -> tuple[bool, str]:
        if not self.mqtt.connected.is_set():
            return False, "broker: not connected"
        if self._spool_full:
            return False, "spool: full"
        return True, f"ok ({self.status})"

    def _gauges(self) -> dict[str, float]:
        p = self.pipeline.stats()
        out = {f"ingest_{k}": float(v) for k, v in p.items() if isinstance(v, int | float)}
        out.update(
            spool_bytes=float(self.spool.bytes_used),
            spool_full=float(self._spool_full),
            alerts_open=float(len(self.engine.open_alerts())),
            unacked_messages=float(self.mqtt.pending_acks),
            broker_connected=float(self.mqtt.connected.is_set()),
            alert_link_connected=float(self.alert_link.connected.is_set()),
            mqtt_held_publishes=float(self.mqtt.held_publishes + self.alert_link.held_publishes),
            mqtt_dropped_publishes=float(self.mqtt.dropped_publishes
                                         + self.alert_link.dropped_publishes),
        )
        return out

    def _labeled(self) -> list[tuple[str, dict[str, str], float, str]]:
        out: list[tuple[str, dict[str, str], float, str]] = []
        for n in self.notifiers:
            stats = getattr(n, "stats", None)
            if stats is None:
                continue
            for route, values in stats().items():
                for key, value in values.items():
                    if isinstance(value, int | float):
                        out.append(
                            (f"push_{key}", {"route": route}, float(value), f"push route {key}")
                        )
        return out

    def cuff(self, cuff_id: str) -> CuffState:
        return self.fleet.cuffs[cuff_id]


def _encode(lines: list[str]) -> bytes:
    """Line protocol lines as one spool record."""
    return ("\n".join(lines) + "\n").encode()


class _Stopped(Exception):
    """Internal: ends the TaskGroup once the drain is done."""
