"""The gateway's MQTT edge: persistent session, acknowledgement on our terms.

Stock gmqtt runs `on_message` as a task per message and (MQTT 5, non-optimistic) sends
each PUBACK when that task returns; on MQTT 3.1.1 it acknowledges on receipt. Both cost
too much or promise too little, so with `on_message_fast` the link takes over QoS 1
delivery: the handler runs synchronously as the packet is parsed (no task, no future per
message), returns the spool position of what it stored (or STAGED: the messages of one
socket read are then stored together by one flush call after the read is parsed), and one
`ack_loop` waits for the group commit covering a whole batch of messages and then writes
their PUBACKs together.
A PUBACK therefore leaves only once the message's readings are fsynced — on MQTT 5 and
3.1.1 alike. Acks owed on a connection that has since dropped are not sent: the broker
redelivers those messages and the gateway drops them as duplicates.

gmqtt is reached only through `gateway.gmqtt_compat` (which checks its version); the packets
are read and the PUBACKs encoded by `gateway.mqtt_wire` (pure functions).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from core.backoff import backoff_delays
from gateway import mqtt_wire
from gateway.errors import GatewayError
from gateway.gmqtt_compat import LinkClient, NoPacketId, PacketSink, new_client

log = logging.getLogger(__name__)

# Reconnect backoff: first retry soon (a broker restart takes a second or two), doubling up
# to a cap that keeps a gateway from hammering a broker that is down for long.
INITIAL_BACKOFF_S = 0.5
MAXIMUM_BACKOFF_S = 30.0
# The broker may keep this many unacknowledged QoS 1 messages in flight to us: enough to
# cover the spool's group-commit latency at full rate (we acknowledge after fsync).
RECEIVE_MAXIMUM = 65535
# Our QoS 1 publishes held for a packet id: the broker's Receive Maximum caps how many may
# await its PUBACK (Mosquitto's default: 20), and none are acknowledged while it is away.
# Past this many the oldest held one is dropped, counted and logged: memory stays bounded.
HELD_PUBLISHES_MAX = 10_000
HELD_RETRY_S = 0.05  # publishes_acked(): how often to look again while some are held


class Staged(enum.Enum):
    """The type of `STAGED` (an enum, so that type checkers narrow on `is STAGED`)."""

    STAGED = "staged"


# A fast handler may also return STAGED: it kept the message's work for the link's next call
# of the flush handler, which the link makes once the bytes of one socket read are parsed
# (at once for a message gmqtt delivers) and which returns one result for all the messages
# staged: one spool record and one position per read instead of one per message.
STAGED: Final = Staged.STAGED  # a module global: cheaper to reach than the member

# What a fast handler returns for a message: None (handled: acknowledge now), a spool
# position (acknowledge once it is durable), an awaitable (a slow path: acknowledge when
# it completes; not acknowledged if it is cancelled, so the broker redelivers), or STAGED.
FastResult = int | Awaitable[object] | None
FastHandler = Callable[[str, bytes, int, bool], FastResult | Staged]
FlushHandler = Callable[[], FastResult]
DurableWaiter = Callable[[int], Awaitable[None]]
CONNECT_TIMEOUT_S = 10.0  # TCP + TLS + CONNACK; a broker slower than this is treated as down
ACK_RETRY_S = 0.5  # a failed fsync: hold the acks and wait for the disk again


class MqttError(GatewayError):
    """The broker could not be reached or refused us."""


class _LostError(Exception):
    """The connection closed before the broker's CONNACK."""


def make_ssl_context(
    ca_file: str | None, cert_file: str | None, key_file: str | None
) -> ssl.SSLContext:
    """TLS client context: system CAs or `ca_file`, optional client certificate."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


class MqttLink:
    """One MQTT client with a persistent session, birth/will and resubscribe on connect."""

    def __init__(
        self,
        *,
        client_id: str,
        host: str,
        port: int,
        protocol: int = 5,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        clean_start: bool = False,
        session_expiry_s: int = 3600,
        keepalive_s: int = 30,
        will: tuple[str, bytes] | None = None,
        subscriptions: Sequence[str] = (),
        on_message_fast: FastHandler | None = None,
        on_flush: FlushHandler | None = None,
        wait_durable: DurableWaiter | None = None,
        on_connected: Callable[[bool], None] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if on_message_fast is not None and (wait_durable is None or on_flush is None):
            raise ValueError("on_message_fast needs wait_durable and on_flush")
        self._host = host
        self._port = port
        self._protocol = 5 if protocol == 5 else 3
        self._tls: ssl.SSLContext | bool = tls or False
        self._keepalive = keepalive_s
        self._subscriptions = list(subscriptions)
        self._on_connected = on_connected
        self._log = logger or log
        self.connected = asyncio.Event()
        self.connections = 0
        self._closing = False
        self._backoff = backoff_delays(INITIAL_BACKOFF_S, MAXIMUM_BACKOFF_S)
        self._lost = asyncio.Event()
        self.refused_publishes = 0  # PUBACKs with a failure reason code (MQTT 5)
        self.resent_topics: set[str] = set()  # of the publishes resent on the last CONNACK
        self._held: deque[tuple[str, bytes, int, bool]] = deque()  # waiting for a packet id
        self.dropped_publishes = 0  # held ones dropped past HELD_PUBLISHES_MAX
        self._fast = on_message_fast
        self._flush = on_flush
        self._wait_durable = wait_durable
        # (spool position, mids, connection): acknowledged once the position is durable
        self._pending: list[tuple[int, list[int], int]] = []
        self._pending_count = 0
        self._staged: list[int] = []  # mids of STAGED messages, until the flush handler runs
        self._awaiting = 0  # acks in the batch whose fsync ack_loop is waiting for
        self._acks_due = asyncio.Event()
        self._slow: dict[asyncio.Future[object], int] = {}  # slow paths: acks each one owes
        self._slow_acks = 0
        self.client = new_client(
            client_id, protocol=self._protocol, clean_start=clean_start,
            session_expiry_s=session_expiry_s, receive_maximum=RECEIVE_MAXIMUM, will=will,
            username=username, password=password,
        )
        self._hook_client(self.client)

    def _hook_client(self, client: LinkClient) -> None:
        """Hand the client's reconnects, resends and (with a fast handler) QoS 1 delivery to us.

        Our unacknowledged QoS 1 publishes go out again on every CONNACK, in order, before
        on_connected's own publishes (_handle_connect): gmqtt would resend them only after
        on_connect, and only if the broker kept the session. To a broker without the session
        they are new messages; their packet ids stay reserved until acknowledged.
        """
        client.on_lost = self._on_lost
        client.watch_pubacks(self._on_puback)
        client.keep_unacknowledged()
        client.watch_connection(self._handle_connect, self._handle_disconnect)
        if self._fast is not None:
            client.deliver_messages_to(self._deliver_qos0, self._deliver_qos1)

    def _on_puback(self, body: bytes) -> None:
        # gmqtt ignores the reason code (MQTT 5 §3.4.2.1); a refusal must be seen
        if mqtt_wire.puback_refused(body):
            self.refused_publishes += 1
        if self._held:
            self._release_held()  # a packet id is free again

    @property
    def protocol_version(self) -> int:
        """The MQTT version spoken: 5 or 3 (3.1.1)."""
        return self._protocol

    async def connect(self, *, retry: bool = True) -> None:
        """Connect, retrying with jittered backoff while `retry`; `supervise()` keeps it up."""
        while True:
            try:
                await self._attempt()
                return
            except (TimeoutError, OSError, _LostError) as exc:
                if not retry:
                    raise MqttError(f"cannot reach {self._host}:{self._port}: {exc}") from exc
                delay = next(self._backoff)
                self._log.warning("broker %s:%s unreachable (%s); retrying in %.1f s",
                                  self._host, self._port, exc or type(exc).__name__, delay)
                with contextlib.suppress(Exception):
                    await self.client.drop_connection()
                await asyncio.sleep(delay)
            except Exception as exc:
                # gmqtt raises its own errors for refusals (bad credentials, not authorised)
                raise MqttError(f"broker {self._host}:{self._port} refused us: {exc}") from exc

    async def _attempt(self) -> None:
        """One connection attempt: CONNACK, or the connection lost, or a timeout."""
        self._lost.clear()
        attempt = asyncio.ensure_future(
            self.client.connect_to(self._host, self._port, tls=self._tls,
                                   keepalive_s=self._keepalive, protocol=self._protocol)
        )
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait(
                {attempt, lost}, timeout=CONNECT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            lost.cancel()
            if not attempt.done():
                attempt.cancel()
                with contextlib.suppress(BaseException):
                    await attempt
        if attempt in done:
            attempt.result()  # raises what the connect raised
            return
        if lost in done:
            # e.g. a TLS listener that wants a client certificate closes after the handshake
            raise _LostError("the broker closed the connection")
        raise TimeoutError(f"no CONNACK within {CONNECT_TIMEOUT_S:g} s")

    def _on_lost(self) -> None:
        if not self._closing:
            self._lost.set()

    async def supervise(self) -> None:
        """Reconnect after every lost connection, with jittered backoff (runs forever).

        Start it once `connect()` has succeeded: it is then the only one dialling.
        """
        while True:
            await self._lost.wait()
            self._lost.clear()
            if self._closing:
                return
            if self.connected.is_set():
                continue  # a late report about a connection already replaced
            with contextlib.suppress(Exception):  # the old connection is gone or going
                await self.client.drop_connection()
            delay = next(self._backoff)
            self._log.warning(
                "disconnected from %s:%s; reconnecting in %.1f s", self._host, self._port, delay
            )
            await asyncio.sleep(delay)
            try:
                await self.connect()
            except MqttError as exc:  # refused (credentials, ACL): keep trying, slowly
                self._log.error("%s", exc)
                self._lost.set()

    def _handle_connect(self, session_present: bool) -> None:
        self.connections += 1
        if self._fast is not None:
            self._install_reader()
        self._backoff = backoff_delays(INITIAL_BACKOFF_S, MAXIMUM_BACKOFF_S)
        if self._subscriptions:
            self.client.subscribe_qos1(self._subscriptions)
        unacknowledged = self.client.unacknowledged()
        for _mid, package in unacknowledged:
            self.client.send_raw(package)
        self.resent_topics = {mqtt_wire.publish_topic(package) for _mid, package in unacknowledged}
        self._release_held()
        self.connected.set()
        if unacknowledged:
            self._log.info("sent %d unacknowledged publish(es) again (session %s)",
                           len(unacknowledged), "resumed" if session_present else "new")
        self._log.info("connected to %s:%s (MQTT %s, session %s)", self._host, self._port,
                       self._protocol, "resumed" if session_present else "new")
        if self._on_connected:
            self._on_connected(session_present)

    def _handle_disconnect(self) -> None:
        self.connected.clear()
        self._on_lost()

    # -- the fast path: synchronous handling, batched PUBACKs ---------------------------------

    @property
    def pending_acks(self) -> int:
        """Messages received and not yet acknowledged (waiting for the disk or a slow path)."""
        return self._pending_count + self._awaiting + self._slow_acks

    @property
    def busy(self) -> bool:
        """Whether a slow path is still running (QoS 0 ones owe no ack but do work)."""
        return bool(self._slow)

    def _run_fast(
        self, topic: str, payload: bytes, qos: int, retain: bool
    ) -> FastResult | Staged:
        assert self._fast is not None
        try:
            return self._fast(topic, payload, qos, retain)
        except Exception:  # noqa: BLE001 - one bad message must never stop the others
            self._log.exception("message handler failed on %s", topic[:200])
            return None

    def _deliver_qos0(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        result = self._run_fast(topic, payload, qos, retain)
        if result is STAGED:
            self._flush_staged()  # nothing to acknowledge, but the work must be stored
        elif result is not None and not isinstance(result, int):
            self._track(asyncio.ensure_future(result), [], self.connections)

    def _deliver_qos1(self, mid: int, payload: bytes, topic: str, retain: int) -> None:
        # gmqtt's path: a PUBLISH with properties, or received before our reader was installed
        self._deliver_qos1_plain(mid, payload, topic, retain)
        if self._staged:
            self._flush_staged()

    def _flush_staged(self) -> None:
        """Run the flush handler for the STAGED messages and settle their acks on its result.

        A flush handler that raises (a bug: the gateway's never does) leaves the messages
        unacknowledged: nothing says their work is stored, and the broker redelivers them
        on the next connection.
        """
        mids, self._staged = self._staged, []
        assert self._flush is not None  # the constructor requires it with a fast handler
        try:
            result = self._flush()
        except Exception:  # noqa: BLE001 - the reader must go on with the next read
            self._log.exception("storing %d message(s) failed; not acknowledged", len(mids))
            return
        self._settle(result, mids, self.connections)

    def _settle(self, result: FastResult, mids: list[int], generation: int) -> None:
        if result is None:
            for mid in mids:
                self._puback(mid, generation)
        elif isinstance(result, int):
            self._pending.append((result, mids, generation))
            self._pending_count += len(mids)
            self._acks_due.set()
        else:
            self._track(asyncio.ensure_future(result), mids, generation)

    def _install_reader(self) -> None:
        """Parse this connection's QoS 1 PUBLISH packets ourselves (`mqtt_wire.read_packets`).

        gmqtt turns every packet into a `Package`, routes it through three calls (one formats
        a debug line), and unpacks it with struct formats built per packet: a fifth of the
        gateway's time at one reading per message. The reader hands a plain QoS 1 PUBLISH (no
        properties, UTF-8 topic) straight to the fast handler and gives every other packet,
        and any PUBLISH it is unsure of, to gmqtt unchanged; once a read is parsed, the
        messages it staged are flushed (also when the handler raised: they are stored).
        """
        mqtt5 = self._protocol == 5
        deliver = self._deliver_qos1_plain
        read_packets = mqtt_wire.read_packets

        def read(data: bytes, to_gmqtt: PacketSink) -> int:
            try:
                return read_packets(data, mqtt5, deliver, to_gmqtt)
            finally:
                if self._staged:
                    self._flush_staged()

        self.client.install_reader(read)

    def _deliver_qos1_plain(self, mid: int, payload: bytes, topic: str, retain: int) -> None:
        result = self._run_fast(topic, payload, 1, bool(retain))
        if result is STAGED:
            self._staged.append(mid)
        elif result is None:
            self._puback(mid, self.connections)
        elif isinstance(result, int):
            self._pending.append((result, [mid], self.connections))
            self._pending_count += 1
            self._acks_due.set()
        else:
            self._track(asyncio.ensure_future(result), [mid], self.connections)

    def _track(self, fut: asyncio.Future[object], mids: list[int], generation: int) -> None:
        self._slow[fut] = len(mids)
        self._slow_acks += len(mids)

        def done(f: asyncio.Future[object]) -> None:
            self._slow_acks -= self._slow.pop(f, 0)
            if f.cancelled():
                return  # not acknowledged: the broker redelivers it
            if f.exception() is not None:
                self._log.error("slow message handler failed: %r", f.exception())
            for mid in mids:
                self._puback(mid, generation)

        fut.add_done_callback(done)

    def _puback(self, mid: int, generation: int) -> None:
        if generation != self.connections or not self.connected.is_set():
            return  # that connection is gone; the broker redelivers on the new one
        self.client.send_puback(mid)

    async def ack_loop(self) -> None:
        """Acknowledge batches of messages once the spool has fsynced them (runs forever)."""
        assert self._wait_durable is not None
        while True:
            await self._acks_due.wait()
            self._acks_due.clear()
            if not self._pending:
                continue
            batch, self._pending = self._pending, []
            self._awaiting, self._pending_count = self._pending_count, 0
            top = max(position for position, _, _ in batch)
            while True:
                try:
                    await self._wait_durable(top)
                    break
                except Exception as exc:  # noqa: BLE001 - a failed fsync: never ack, retry
                    self._log.error("spool not durable (%s); holding %d ack(s)", exc, len(batch))
                    await asyncio.sleep(ACK_RETRY_S)
            generation = self.connections
            self._puback_all([mid for _, mids, gen in batch if gen == generation for mid in mids])
            self._awaiting = 0

    def _puback_all(self, mids: list[int]) -> None:
        """Acknowledge many messages in one socket write (4-byte PUBACKs, valid on 3.1.1 and 5)."""
        if not mids or not self.connected.is_set():
            return
        self.client.send_raw(mqtt_wire.encode_pubacks(mids))

    async def cancel_slow(self) -> None:
        """Cancel slow-path handlers still running at shutdown (they are redelivered)."""
        for fut in list(self._slow):
            fut.cancel()
        if self._slow:
            await asyncio.gather(*self._slow, return_exceptions=True)

    @property
    def unacked_publishes(self) -> int:
        """Our QoS 1 publishes the broker has not acknowledged, or that wait for a packet id."""
        return len(self.client.unacknowledged()) + len(self._held)

    @property
    def held_publishes(self) -> int:
        """Publishes waiting for a packet id (the broker's Receive Maximum is reached)."""
        return len(self._held)

    async def publishes_acked(self) -> None:
        """Return once no publish of ours awaits the broker's acknowledgement or an id."""
        while True:
            await self.client.wait_acknowledged()
            if not self._held:
                return
            await asyncio.sleep(HELD_RETRY_S)  # they go out on the next PUBACK or connect

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        """Send a publish, or hold it in order until a packet id is free; False if refused.

        QoS 1 publishes are resent on every reconnect until acknowledged (_handle_connect).
        """
        if self._held:  # behind those already waiting: per topic, order is state
            return self._hold(topic, payload, qos, retain)
        try:
            self.client.send_publish(topic, payload, qos=qos, retain=retain)
            return True
        except NoPacketId:  # every packet id the broker allows is in flight
            return self._hold(topic, payload, qos, retain)
        except Exception as exc:  # noqa: BLE001 - a closed transport must never break the caller
            self._log.debug("publish to %s failed: %s", topic, exc)
            return False

    def _hold(self, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        if len(self._held) >= HELD_PUBLISHES_MAX:
            dropped, *_ = self._held.popleft()
            self.dropped_publishes += 1
            if self.dropped_publishes % 1000 == 1:  # loud, not a flood
                self._log.error("%d publish(es) dropped: %d held for the broker already "
                                "(last dropped: %s)", self.dropped_publishes,
                                HELD_PUBLISHES_MAX, dropped)
        self._held.append((topic, payload, qos, retain))
        return True

    def _release_held(self) -> None:
        """Send held publishes, oldest first, while the broker allows more in flight."""
        held = self._held
        while held:
            topic, payload, qos, retain = held[0]
            try:
                self.client.send_publish(topic, payload, qos=qos, retain=retain)
            except Exception:  # noqa: BLE001 - no id yet, or no connection: the next try
                return
            held.popleft()

    async def lost_within(self, seconds: float) -> bool:
        """Whether the connection drops within `seconds` (a broker's answer to a refusal)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._lost.wait(), seconds)
        return not self.connected.is_set()

    async def disconnect(self) -> None:
        """Disconnect cleanly (no last will) and stop reconnecting."""
        self._closing = True
        self._lost.set()  # wakes the supervisor, which sees _closing and returns
        try:
            # also when not connected: marks the client inactive
            await self.client.leave()
        except OSError as exc:  # e.g. a TLS close_notify race: we are leaving anyway
            self._log.debug("disconnect from %s:%s: %s", self._host, self._port, exc)
