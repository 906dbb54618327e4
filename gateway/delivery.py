"""Alert delivery: each transition to its MQTT alert topic (SPEC §2) and to the notifiers.

Alerts leave on a connection of their own, the alert lane (`{client_id}-alerts`). On the
data connection they queued in the broker behind the PUBACK batches written just before
them (a batch covers one group commit, often hundreds of acks), and Mosquitto works
through one socket's packets in turn with every other client's: p99 136–159 ms at half
load in the latency bench, 38–41 ms with the lane. Until the lane is first up, alerts take
the data connection; they move once everything published there is acknowledged (per
topic, the broker must see alerts in order), and stay on the lane through its reconnects
(the link resends its unacknowledged publishes in order on every CONNACK).
"""

from __future__ import annotations

import logging

from alerts.model import AlertState, Transition
from alerts.notify import Notifier
from core.topics import Topics
from gateway.metrics import Counters
from gateway.mqtt import MqttError, MqttLink

log = logging.getLogger("cuffwatch.gateway")


class AlertDelivery:
    """Publishes transitions (retained per alert topic) and hands them to the notifiers."""

    def __init__(
        self,
        topics: Topics,
        counters: Counters,
        notifiers: list[Notifier],
        *,
        data_link: MqttLink,
        lane: MqttLink,
    ) -> None:
        self.topics = topics
        self.counters = counters
        self.notifiers = notifiers  # the gateway's list: notifiers added later get alerts too
        self.data_link = data_link
        self.lane = lane
        self.link = data_link  # the link alerts are published on now
        # Each alert topic's latest retained payload (b"" once cleared): one per cuff and
        # kind of the roster at most. Republished when the lane comes back without its
        # session, because gmqtt then drops the publishes it had not had acknowledged.
        self._retained: dict[str, bytes] = {}

    @property
    def on_lane(self) -> bool:
        """Whether alerts have moved to their own connection."""
        return self.link is self.lane

    def deliver(self, t: Transition) -> None:
        """Publish on MQTT and hand to the notifiers; never blocks, never raises for them."""
        a = t.alert
        topic = self.topics.alert(a.team, a.cuff, a.kind.value)
        link = self.link
        payload = a.to_json()
        if a.state is AlertState.RESOLVED:
            link.publish(topic, payload, qos=1, retain=False)
            link.publish(topic, b"", qos=1, retain=True)  # clears the retained alert
            self._retained[topic] = b""
        else:
            link.publish(topic, payload, qos=1, retain=True)
            self._retained[topic] = payload
        self.counters.alerts_published += 1
        for n in self.notifiers:
            try:
                n.submit(t)
            except Exception:
                log.exception("notifier %s failed", type(n).__name__)

    async def run_lane(self) -> None:
        """Connect the lane (retrying with backoff), move alerts onto it, keep it up.

        The move waits until every publish on the data connection is acknowledged, so no
        older alert can reach the broker after a newer one on the lane (a retained alert
        topic must end in its latest state). Refused (not just unreachable): alerts stay on
        the data connection.
        """
        try:
            await self.lane.connect()
        except MqttError as exc:
            log.error("alert connection refused (%s); alerts go out on the data connection",
                      exc)
            return
        while self.data_link.outbound.unacked_publishes:
            await self.data_link.outbound.publishes_acked()
        self.link = self.lane
        await self.lane.supervise()

    def on_lane_connected(self, session_present: bool) -> None:
        """The lane's CONNACK: after a lost session, republish every alert topic's state."""
        if session_present or not self.on_lane:
            return  # the broker kept its state; the link has resent what it had not acked
        # a new session: the broker may have lost its retained messages too (a restart
        # without persistence). The link has resent what was unacknowledged, in order (each
        # such topic's last publish is its latest state); every other alert topic's latest
        # state goes out once more so the retained store ends right.
        resent = self.lane.outbound.resent_topics
        again = {t: p for t, p in self._retained.items() if t not in resent}
        log.warning("alert connection came back without its session; republishing %d "
                    "alert topic(s)", len(again))
        for topic, payload in again.items():
            self.lane.publish(topic, payload, qos=1, retain=True)
