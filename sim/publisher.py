"""The MQTT side of `cuffwatch simulate`: broker connections publishing what the feeds queue.

`run_simulation(options)` publishes the squad's messages (`sim.feed`) with QoS 1, one
connection per cuff (its own client id, retained `online` status and `offline` last will) up
to PER_CUFF_CLIENTS_MAX cuffs, a few shared connections beyond that (load tests; no per-cuff
last will then). A clean stop publishes `offline` for every cuff. An unreachable broker is
retried with backoff, forever; a refusal (credentials, TLS) raises SimulationError.

gmqtt is reached only through `gateway.gmqtt_compat`, by `_Link` (one connection) and
`gmqtt_tasks` (its own tasks, let finish after a stop); the rest of the module speaks to
`_Link` only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable
from typing import Any

from core.backoff import backoff_delays
from gateway import mqtt_wire
from gateway.gmqtt_compat import ConnectRefused, NoPacketId, gmqtt_tasks, new_client
from gateway.mqtt import make_ssl_context
from sim.errors import SimulationError
from sim.feed import LaneFeed, Message, SimStats, feeds_for_run
from sim.options import SimOptions
from sim.squad import LOGGER

__all__ = ["SimulationError", "run_simulation"]

log = logging.getLogger(LOGGER)

KEEPALIVE_S = 15  # the broker publishes a vanished cuff's last will ~22 s after its last packet
CONNECT_TIMEOUT_S = 10.0  # no CONNACK by then: e.g. an MQTT 3.1.1-only broker ignoring MQTT 5
# Reconnect delays as the gateway's own (gateway/mqtt.py): from 0.5 s, doubling up to 30 s,
# jittered so that a squad which lost a restarting broker does not come back in one burst.
RECONNECT_INITIAL_S = 0.5
RECONNECT_CAP_S = 30.0
SHUTDOWN_TIMEOUT_S = 5.0  # clean stop: last readings and `offline` statuses get this long
SETTLE_TIMEOUT_S = 1.0  # gmqtt's own tasks end within a loop iteration or two of a disconnect
STATS_INTERVAL_S = 10.0  # progress line in the log
# The Receive Maximum we grant the broker (MQTT 5): its default (§3.1.2.11.3), as if absent; the
# simulator subscribes to nothing, on clean sessions (session expiry 0: none kept).
RECEIVE_MAXIMUM = 65535


# == the broker connection ======================================================================
# gmqtt is reached only through gateway/gmqtt_compat.py (version checked, each reach commented).
# gmqtt reconnects from tasks nobody owns and checks whether to go on only before its delay,
# so a client stopped during that delay connects again afterwards: a LinkClient's reconnects
# do nothing unless asked (`on_lost`, left unset here). A lane reconnects itself, inside its
# own task, with a fresh client per connection (fresh packet ids, nothing behind).
class _Link:
    """One client for one connection: connect, publish with QoS 1, await PUBACKs, close."""

    def __init__(
        self,
        client_id: str,
        options: SimOptions,
        *,
        will: Message | None,
        on_connect: Callable[[_Link, bool], None],
        on_disconnect: Callable[[_Link], None],
        on_refused: Callable[[_Link], None],
    ) -> None:
        """A client with our id, credentials and last will; `on_*` get this link (and resumed).

        `on_refused`: the broker refused a publish (MQTT 5 PUBACK with a failure reason, e.g.
        its ACL); MQTT 3.1.1 has no way to say so (Mosquitto drops the message silently).
        """
        assert will is None or will.retain  # new_client's last will is retained, QoS 1
        username, password = options.credentials_for(client_id)
        self._client = new_client(
            client_id, protocol=options.protocol, clean_start=True, session_expiry_s=0,
            receive_maximum=RECEIVE_MAXIMUM,
            will=None if will is None else (will.topic, will.payload),
            username=username, password=password,
        )
        self._client.watch_connection(self._connected, self._disconnected)
        self._client.watch_pubacks(self._puback)
        self._on_refused = on_refused
        self._client_id = client_id
        self._protocol = options.protocol
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._open = False  # our transport may be open: disconnect on stop

    async def connect(self, host: str, port: int, tls: ssl.SSLContext | bool) -> None:
        """Connect; SimulationError if refused, OSError or TimeoutError if unreachable."""
        self._open = True
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await self._client.connect_once(host, port, tls=tls, keepalive_s=KEEPALIVE_S,
                                                protocol=self._protocol)
        except ConnectRefused as exc:
            raise SimulationError(f"{host}:{port} refused {self._client_id}: {exc}") from None
        except ssl.SSLError as exc:  # an OSError, but no retry will mend it
            raise SimulationError(f"TLS with {host}:{port} failed: {exc}") from None

    def publish(self, message: Message) -> bool:
        """Publish with QoS 1; False when the broker's in-flight window is full."""
        try:
            self._client.send_publish(message.topic, message.payload, qos=1,
                                      retain=message.retain)
        except NoPacketId:  # every packet id allowed in flight is taken
            return False
        return True

    async def acked(self) -> None:
        """Return once the broker has acknowledged every QoS 1 message sent on this link."""
        # Closing the socket before then can make the broker drop our DISCONNECT (the PUBACKs
        # it writes meet a closed socket) and publish the last will.
        await self._client.wait_acknowledged()

    async def disconnect(self) -> None:
        """Close the transport if it may be open, with a DISCONNECT (no last will)."""
        if self._open:
            self._open = False
            await self._client.leave()

    def _puback(self, body: bytes) -> None:
        if mqtt_wire.puback_refused(body):
            self._on_refused(self)

    def _connected(self, resumed: bool) -> None:
        """Each CONNACK."""
        self._on_connect(self, resumed)

    def _disconnected(self) -> None:
        """Each lost or closed connection."""
        self._open = False
        self._on_disconnect(self)


def _first_leaf(exc: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


# Two tasks per lane: the tick loop advances the feed (it samples and queues readings whether
# or not the broker is reachable; its outbox is bounded) and publishes what it can; the
# connection loop (re)connects with jittered backoff. Readings in flight when a connection
# drops are lost, as with a real cuff; those queued meanwhile follow the reconnect.
class _Lane:
    """One MQTT connection publishing one feed's messages as they fall due."""

    def __init__(self, feed: LaneFeed, *, options: SimOptions, stats: SimStats, t0: float) -> None:
        """A lane; nothing connects before `run()`."""
        self.name = feed.plan.name
        self._client_id = feed.plan.client_id
        self._feed = feed
        self._options = options
        self._stats = stats
        self._t0 = t0
        self._tls: ssl.SSLContext | bool = (
            make_ssl_context(options.ca_file, options.cert_file, options.key_file)
            if options.tls else False
        )
        self._link: _Link | None = None
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._connections = 0
        self._refused_logged = False

    async def run(self) -> None:
        """Tick until the duration is over (or cancelled), then stop cleanly."""
        try:
            async with asyncio.TaskGroup() as tg:
                connector = tg.create_task(
                    self._connection_loop(), name=f"cuffwatch-sim[{self.name}].connection_loop"
                )
                await self._tick_loop()
                connector.cancel()
        finally:
            await self._close()

    # -- connection --------------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        """Connect, wait for the loss, reconnect after a jittered backoff; forever."""
        host, port = self._options.host, self._options.port
        delays = backoff_delays(RECONNECT_INITIAL_S, RECONNECT_CAP_S)
        while True:
            self._lost.clear()
            link = self._link = _Link(self._client_id, self._options, will=self._feed.will,
                                      on_connect=self._on_connect,
                                      on_disconnect=self._on_disconnect,
                                      on_refused=self._on_refused)
            try:
                await link.connect(host, port, self._tls)
            except (OSError, TimeoutError) as exc:
                await link.disconnect()
                delay = next(delays)
                log.warning("%s: broker %s:%d unreachable (%s); retrying in %.1f s",
                            self.name, host, port, exc or "no CONNACK", delay)
                await asyncio.sleep(delay)
                continue
            delays = backoff_delays(RECONNECT_INITIAL_S, RECONNECT_CAP_S)
            await self._lost.wait()
            log.warning("%s: lost the connection to %s:%d; reconnecting", self.name, host, port)

    def _on_connect(self, link: _Link, resumed: bool) -> None:
        """Connected: announce every cuff's status, let telemetry flow."""
        if link is not self._link:
            return
        self._connections += 1
        if self._connections > 1:
            self._stats.reconnects += 1
        log.debug("%s: connected (session %s)", self.name, "resumed" if resumed else "new")
        self._feed.announce_all()
        self._connected.set()

    def _on_refused(self, link: _Link) -> None:
        """The broker refused one of our publishes: count it, say so once per lane."""
        self._stats.denied += 1
        if not self._refused_logged:
            self._refused_logged = True
            log.warning(
                "%s: the broker refused a publish from client %s (not authorised? check its "
                "ACL; per-cuff credentials: --credentials)", self.name, self._client_id,
            )

    def _on_disconnect(self, link: _Link) -> None:
        """Disconnected: hold telemetry and wake the connection loop."""
        if link is not self._link:
            return
        self._connected.clear()
        self._lost.set()

    # -- publishing --------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        """Advance the feed to each deadline and publish what it queued, until it is finished."""
        loop = asyncio.get_running_loop()
        while True:
            self._feed.advance(loop.time() - self._t0)
            self._flush()
            if self._feed.finished:
                return
            await asyncio.sleep(self._feed.next_due_s - (loop.time() - self._t0))

    def _flush(self) -> bool:
        """Publish queued statuses, then telemetry, while connected; True when all is out."""
        if not self._connected.is_set():
            return False
        assert self._link is not None  # connected
        while (message := self._feed.next_message()) is not None:
            if not self._link.publish(message):
                self._stats.throttled += 1
                return False
            self._feed.sent()
        return True

    # -- stopping ----------------------------------------------------------------------------

    async def _until_acked(self, link: _Link) -> None:
        """Wait until the broker has acknowledged every QoS 1 message sent, or the link drops."""
        acked = asyncio.ensure_future(link.acked())
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({acked, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (acked, lost):
                waiter.cancel()
            await asyncio.gather(acked, lost, return_exceptions=True)

    async def _drain(self, link: _Link) -> None:
        """Flush everything and wait for its PUBACKs (the in-flight window limits a flush)."""
        while self._connected.is_set():
            done = self._flush()
            await self._until_acked(link)
            if done:
                return

    async def _close(self) -> None:
        """Send what is left and `offline` for every cuff, then disconnect (no last will)."""
        self._feed.close_batches()
        try:
            async with asyncio.timeout(SHUTDOWN_TIMEOUT_S):
                link = self._link
                if link is not None and self._connected.is_set():
                    await self._drain(link)
                    self._feed.go_offline()
                    await self._drain(link)
                if link is not None:
                    await link.disconnect()
        except TimeoutError:
            log.warning("%s: stopped with %d message(s) unsent", self.name, self._feed.unsent)
        self._connected.clear()
        self._feed.drop_unsent()


async def _settle(before: set[asyncio.Task[Any]]) -> None:
    """Let the gmqtt tasks our disconnects started or cancelled finish (a loop turn or two)."""
    ending = {t for t in gmqtt_tasks() if t not in before or t.cancelling()}
    if ending:
        await asyncio.wait(ending, timeout=SETTLE_TIMEOUT_S)


async def _report_loop(stats: SimStats) -> None:
    """Log progress every STATS_INTERVAL_S."""
    readings = messages = 0
    while True:
        await asyncio.sleep(STATS_INTERVAL_S)
        log.info(
            "simulated %d readings (%.0f/s) in %d messages (%.0f/s); dropped %d, throttled %d, "
            "skipped %d, reconnects %d", stats.readings,
            (stats.readings - readings) / STATS_INTERVAL_S, stats.messages,
            (stats.messages - messages) / STATS_INTERVAL_S, stats.dropped, stats.throttled,
            stats.skipped_ticks, stats.reconnects,
        )
        readings, messages = stats.readings, stats.messages


async def run_simulation(options: SimOptions, *, stats: SimStats | None = None) -> None:
    """Publish until `duration_s` or cancelled, then `offline` per cuff; SimulationError if refused.

    An unreachable broker is retried with backoff, forever; a refusal (credentials, TLS) raises.
    """
    stats = stats if stats is not None else SimStats()
    t0 = asyncio.get_running_loop().time()
    feeds = feeds_for_run(options, stats, epoch_s=time.time(), run_id=os.getpid())
    lanes = [_Lane(feed, options=options, stats=stats, t0=t0) for feed in feeds]
    log.info(
        "simulating %d cuff(s) over %d connection(s) to %s:%d (MQTT %s), %.3g readings/s per "
        "cuff, speed %gx, %s", len(options.squad), len(lanes), options.host, options.port,
        "5" if options.protocol == 5 else "3.1.1", options.cuff_hz, options.speed,
        f"for {options.duration_s:g} s" if options.duration_s else "until stopped",
    )
    before = gmqtt_tasks()
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(lane.run(), name=f"cuffwatch-sim[{lane.name}].lane")
                     for lane in lanes]
            reporter = tg.create_task(_report_loop(stats), name="cuffwatch-sim.report_loop")
            await asyncio.wait(tasks)
            reporter.cancel()
    except* SimulationError as group:
        raise _first_leaf(group) from None
    finally:
        await _settle(before)
        log.info(
            "simulation stopped: %d readings in %d messages, %d dropped, %d refused by the "
            "broker, %d reconnects",
            stats.readings, stats.messages, stats.dropped, stats.denied, stats.reconnects,
        )

