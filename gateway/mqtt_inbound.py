"""The link's receiving side: each message handled synchronously, acknowledged once durable.

Stock gmqtt runs `on_message` as a task per message and (MQTT 5, non-optimistic) sends
each PUBACK when that task returns; on MQTT 3.1.1 it acknowledges on receipt. Both cost
too much or promise too little, so `Inbound` takes over QoS 1 delivery: the handler runs
synchronously as the packet is parsed (no task, no future per message) and returns what
the message waits for (see `FastResult`); `ack_loop` waits for the group commit covering a
whole batch of messages and then writes their PUBACKs together. A PUBACK therefore leaves
only once the message's readings are fsynced, on MQTT 5 and 3.1.1 alike. Acks owed on a
connection that has since dropped are not sent: the broker redelivers those messages and
the gateway drops them as duplicates.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from gateway import mqtt_wire
from gateway.gmqtt_compat import LinkClient, PacketSink, ReplyTo

ACK_RETRY_S = 0.5  # a failed fsync: hold the acks and wait for the disk again


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
# A request (MQTT 5: the message names a Response Topic): as a fast handler, and told where
# the sender wants the answer. Requests are rare (acks, assignments), so they take gmqtt's path.
RequestHandler = Callable[[str, bytes, int, bool, ReplyTo], FastResult | Staged]
FlushHandler = Callable[[], FastResult]
DurableWaiter = Callable[[int], Awaitable[None]]


class Inbound:
    """Runs the fast handler per message and acknowledges each once its work is durable."""

    def __init__(
        self,
        client: LinkClient,
        connected: asyncio.Event,
        *,
        mqtt5: bool,
        on_message_fast: FastHandler,
        on_flush: FlushHandler,
        wait_durable: DurableWaiter,
        log: logging.Logger,
        on_request: RequestHandler | None = None,
    ) -> None:
        self.client = client
        self._request = on_request
        self.connected = connected
        self.generation = 0  # the connection messages arrive on; older ones' acks are not sent
        self._mqtt5 = mqtt5
        self._fast = on_message_fast
        self._flush = on_flush
        self._wait_durable = wait_durable
        self._log = log
        # (spool position, mids, connection): acknowledged once the position is durable
        self._pending: list[tuple[int, list[int], int]] = []
        self._pending_count = 0
        self._staged: list[int] = []  # mids of STAGED messages, until the flush handler runs
        self._awaiting = 0  # acks in the batch whose fsync ack_loop is waiting for
        self._acks_due = asyncio.Event()
        self._slow: dict[asyncio.Future[object], int] = {}  # slow paths: acks each one owes
        self._slow_acks = 0
        client.deliver_messages_to(self._deliver_qos0, self._deliver_qos1)

    def on_connect(self, generation: int) -> None:
        """A new connection: its messages are acknowledged on it; read its packets ourselves."""
        self.generation = generation
        self._install_reader()

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
        try:
            return self._fast(topic, payload, qos, retain)
        except Exception:  # noqa: BLE001 - one bad message must never stop the others
            self._log.exception("message handler failed on %s", topic[:200])
            return None

    def _run_request(
        self, topic: str, payload: bytes, qos: int, retain: bool, reply_to: ReplyTo | None
    ) -> FastResult | Staged:
        """The request handler for a message that asks for an answer, else the fast one."""
        if reply_to is None or self._request is None:
            return self._run_fast(topic, payload, qos, retain)
        try:
            return self._request(topic, payload, qos, retain, reply_to)
        except Exception:  # noqa: BLE001 - one bad message must never stop the others
            self._log.exception("request handler failed on %s", topic[:200])
            return None

    def _deliver_qos0(
        self, topic: str, payload: bytes, qos: int, retain: bool, reply_to: ReplyTo | None
    ) -> None:
        result = self._run_request(topic, payload, qos, retain, reply_to)
        if result is STAGED:
            self._flush_staged()  # nothing to acknowledge, but the work must be stored
        elif result is not None and not isinstance(result, int):
            self._track(asyncio.ensure_future(result), [], self.generation)

    def _deliver_qos1(
        self, mid: int, payload: bytes, topic: str, retain: int, reply_to: ReplyTo | None
    ) -> None:
        # gmqtt's path: a PUBLISH with properties, or received before our reader was installed
        if reply_to is None:
            self._deliver_qos1_plain(mid, payload, topic, retain)
        else:
            result = self._run_request(topic, payload, 1, bool(retain), reply_to)
            self._settle_one(mid, result)
        if self._staged:
            self._flush_staged()

    def _flush_staged(self) -> None:
        """Run the flush handler for the STAGED messages and settle their acks on its result.

        A flush handler that raises (a bug: the gateway's never does) leaves the messages
        unacknowledged: nothing says their work is stored, and the broker redelivers them
        on the next connection.
        """
        mids, self._staged = self._staged, []
        try:
            result = self._flush()
        except Exception:  # noqa: BLE001 - the reader must go on with the next read
            self._log.exception("storing %d message(s) failed; not acknowledged", len(mids))
            return
        self._settle(result, mids, self.generation)

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
        mqtt5 = self._mqtt5
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
        self._settle_one(mid, self._run_fast(topic, payload, 1, bool(retain)))

    def _settle_one(self, mid: int, result: FastResult | Staged) -> None:
        if result is STAGED:
            self._staged.append(mid)
        elif result is None:
            self._puback(mid, self.generation)
        elif isinstance(result, int):
            self._pending.append((result, [mid], self.generation))
            self._pending_count += 1
            self._acks_due.set()
        else:
            self._track(asyncio.ensure_future(result), [mid], self.generation)

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
        if generation != self.generation or not self.connected.is_set():
            return  # that connection is gone; the broker redelivers on the new one
        self.client.send_puback(mid)

    async def ack_loop(self) -> None:
        """Acknowledge batches of messages once the spool has fsynced them (runs forever)."""
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
            generation = self.generation
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
