"""The link's sending side: QoS 1 publishes held in order while no packet id is free."""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from gateway import mqtt_wire
from gateway.gmqtt_compat import LinkClient, NoPacketId, ReplyTo

# Our QoS 1 publishes held for a packet id: the broker's Receive Maximum caps how many may
# await its PUBACK (Mosquitto's default: 20), and none are acknowledged while it is away.
# Past this many the oldest held one is dropped, counted and logged: memory stays bounded.
HELD_PUBLISHES_MAX = 10_000
HELD_RETRY_S = 0.05  # publishes_acked(): how often to look again while some are held


class Outbound:
    """Sends publishes, holding them in order while the broker allows no more in flight."""

    def __init__(self, client: LinkClient, log: logging.Logger) -> None:
        self.client = client
        self._log = log
        self._held: deque[tuple[str, bytes, int, bool]] = deque()  # waiting for a packet id
        self.dropped_publishes = 0  # held ones dropped past HELD_PUBLISHES_MAX
        self.refused_publishes = 0  # PUBACKs with a failure reason code (MQTT 5)
        self.resent_topics: set[str] = set()  # of the publishes resent on the last CONNACK
        client.watch_pubacks(self._on_puback)
        client.keep_unacknowledged()

    def _on_puback(self, body: bytes) -> None:
        # gmqtt ignores the reason code (MQTT 5 §3.4.2.1); a refusal must be seen
        if mqtt_wire.puback_refused(body):
            self.refused_publishes += 1
        if self._held:
            self.release_held()  # a packet id is free again

    def resend_unacknowledged(self) -> int:
        """On a CONNACK: send our unacknowledged publishes again, in order; how many.

        gmqtt would resend them only after on_connect, and only if the broker kept the
        session; to a broker without the session they are new messages (their packet ids
        stay reserved until acknowledged).
        """
        unacknowledged = self.client.unacknowledged()
        for _mid, package in unacknowledged:
            self.client.send_raw(package)
        self.resent_topics = {mqtt_wire.publish_topic(package) for _mid, package in unacknowledged}
        self.release_held()
        return len(unacknowledged)

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

        QoS 1 publishes are resent on every reconnect until acknowledged (resend_unacknowledged).
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

    def publish_request(
        self, topic: str, payload: bytes, *, reply: ReplyTo | None = None,
        response_topic: str | None = None, retain: bool = False,
    ) -> bool:
        """MQTT 5 request/response, QoS 1: answer `reply`, or ask for an answer on
        `response_topic`. Not held (answers are few and their asker waits a bounded time):
        False if no packet id is free or the transport is closed."""
        try:
            self.client.send_publish(topic, payload, qos=1, retain=retain, reply=reply,
                                     response_topic=response_topic)
        except Exception as exc:  # noqa: BLE001 - a closed transport must never break the caller
            self._log.debug("publish to %s failed: %s", topic, exc)
            return False
        return True

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

    def release_held(self) -> None:
        """Send held publishes, oldest first, while the broker allows more in flight."""
        held = self._held
        while held:
            topic, payload, qos, retain = held[0]
            try:
                self.client.send_publish(topic, payload, qos=qos, retain=retain)
            except Exception:  # noqa: BLE001 - no id yet, or no connection: the next try
                return
            held.popleft()
