#!/usr/bin/env python3
"""A reference MQTT client for cuffwatch: one simulated BFR cuff, for bridges and devices.

One file, the standard library and paho-mqtt (the MQTT client most bridges are written with).
It does what docs/contract.md asks of a cuff, and `cuffwatch conform` passes it:

- topics `{root}/{team}/cuffs/{cuff}/telemetry` and `.../status`; MQTT 3.1.1 or 5;
- status `online`, QoS 1, retained, published on every connect, before any reading; `offline`,
  QoS 1, retained, as the last will (the broker announces a cuff that vanishes), and published
  before a clean stop;
- one reading per sample at a steady cadence, QoS 1, never retained: `ts` from the wall clock
  (keep it by SNTP), `seq` +1 per reading from 0 at boot (wrapping at 2^32), `elapsed_s` from
  a monotonic clock since this bout's inflation and 0 while deflated, `inflated`,
  `target_mmhg`, `battery_pct`;
- readings taken while the broker is out of reach are kept (up to --max-backlog, the oldest
  dropped beyond it) and sent on reconnect, oldest first, as arrays of at most 256 readings
  and 64 KiB;
- a restart (power cut) starts again: seq from 0, deflated, a new bout.

It runs in one thread: sampling on absolute deadlines, paho's `loop()` between them, its own
reconnect with backoff (paho resends unacknowledged QoS 1 publishes on reconnect).

Test hooks: SIGUSR1 drops the network for --outage-s seconds (as a lost Wi-Fi: no DISCONNECT,
so the broker publishes the last will); SIGTERM or Ctrl-C stops cleanly; SIGKILL is a power
cut. `--defect` breaks one rule on purpose, for testing checkers such as `cuffwatch conform`:
skip-seq, clock-jump, no-will, oversize-array, qos0, unretained-status, elapsed-no-reset.

    pip install 'paho-mqtt>=2.1,<3'
    python cuff_client.py --broker mqtt://127.0.0.1:1883 --team t1 --cuff c7
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import os
import random
import signal
import socket
import sys
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger("cuff_client")

SEQ_MODULUS = 1 << 32  # seq wraps to 0 after 2^32 - 1
MAX_ARRAY_READINGS = 256  # the contract's largest array
MAX_MESSAGE_BYTES = 64 * 1024  # the contract's largest message
RECONNECT_INITIAL_S = 0.5  # a broker restart takes a second or two
RECONNECT_MAX_S = 30.0  # never hammer a broker that is down for long
STOP_TIMEOUT_S = 3.0  # a clean stop waits this long for the broker's PUBACKs
DEFECT_AFTER_READINGS = 10  # skip-seq and clock-jump strike after this many readings
CLOCK_JUMP_MS = 90_000  # clock-jump: the wall clock steps this far ahead
DEFECTS = ("skip-seq", "clock-jump", "no-will", "oversize-array", "qos0",
           "unretained-status", "elapsed-no-reset")


@dataclass(frozen=True)
class Options:
    """What the client is told on its command line."""

    host: str
    port: int
    tls: bool
    ca_file: str | None
    username: str | None
    password: str | None
    protocol: int
    topic_root: str
    team: str
    cuff: str
    rate_hz: float
    batch: int
    target_mmhg: float
    bout_s: float
    rest_s: float
    keepalive_s: int
    backlog: int
    max_backlog: int
    outage_s: float
    duration_s: float | None
    defects: frozenset[str]

    @property
    def telemetry_topic(self) -> str:
        return f"{self.topic_root}/{self.team}/cuffs/{self.cuff}/telemetry"

    @property
    def status_topic(self) -> str:
        return f"{self.topic_root}/{self.team}/cuffs/{self.cuff}/status"


class Cuff:
    """The simulated cuff: rest, then a bout, over and over, from boot; time is given."""

    def __init__(self, options: Options, boot_s: float) -> None:
        self.o = options
        self.boot_s = boot_s
        self.seq = 0
        self.readings = 0
        self.last_bout_s = 0.0
        self._rng = random.Random(options.cuff)

    def phase(self, now_s: float) -> tuple[bool, float]:
        """(inflated, seconds since this bout's inflation) at `now_s` (monotonic)."""
        into = (now_s - self.boot_s) % (self.o.rest_s + self.o.bout_s)
        if into < self.o.rest_s:
            return False, 0.0
        return True, into - self.o.rest_s

    def sample(self, now_s: float, wall_ms: int) -> dict[str, Any]:
        """The reading object at this moment; seq moves on."""
        inflated, elapsed = self.phase(now_s)
        noise = self._rng.uniform(-1.0, 1.0)
        if inflated:
            ramp = min(1.0, elapsed / 0.5)  # the pump reaches the target in half a second
            swing = 12.0 * math.sin(2 * math.pi * elapsed / 2.4)  # a contraction every 2.4 s
            pressure = self.o.target_mmhg * ramp + swing * ramp + noise
            self.last_bout_s = elapsed
        else:
            pressure = 1.0 + noise / 2
        if "elapsed-no-reset" in self.o.defects and not inflated:
            elapsed = self.last_bout_s  # defect: deflated, yet the bout's time is still reported
        if "clock-jump" in self.o.defects and self.readings >= DEFECT_AFTER_READINGS:
            wall_ms += CLOCK_JUMP_MS  # defect: the clock stepped ahead and stays there
        if "skip-seq" in self.o.defects and self.readings == DEFECT_AFTER_READINGS:
            self.seq = (self.seq + 1) % SEQ_MODULUS  # defect: one number skipped
        battery = max(0.0, 100.0 - 0.01 * (now_s - self.boot_s))
        reading = {
            "ts": wall_ms,
            "seq": self.seq,
            "pressure_mmhg": round(pressure, 1),
            "elapsed_s": round(elapsed, 3),
            "inflated": inflated,
            "target_mmhg": self.o.target_mmhg,
            "battery_pct": round(battery, 1),
        }
        self.seq = (self.seq + 1) % SEQ_MODULUS
        self.readings += 1
        return reading


def _encode(readings: list[dict[str, Any]], array: bool) -> bytes:
    body: Any = readings if array else readings[0]
    return json.dumps(body, separators=(",", ":")).encode()


class Client:
    """The MQTT side: connect, announce, publish what the cuff samples, survive outages."""

    def __init__(self, options: Options) -> None:
        self.o = options
        self.boot_s = time.monotonic()
        self.cuff = Cuff(options, self.boot_s)
        self.interval_s = 1.0 / options.rate_hz
        self.outbox: collections.deque[dict[str, Any]] = collections.deque()
        self.dropped = 0
        self.connected = False
        self.dialled = False  # connect() called once; later dials are reconnect()
        self.next_dial_s = 0.0
        self.backoff_s = RECONNECT_INITIAL_S
        self.outage_until_s = 0.0
        self.cut_requested = False
        self.stop_requested = False
        self.status_retain = "unretained-status" not in options.defects
        self.telemetry_qos = 0 if "qos0" in options.defects else 1
        self.mqtt = self._make_client()
        self.next_sample_s = self._prefill(options.backlog)

    def _make_client(self) -> mqtt.Client:
        v5 = self.o.protocol == 5
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.o.cuff,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, clean_session=None if v5 else True,
        )
        if self.o.username:
            client.username_pw_set(self.o.username, self.o.password)
        if self.o.tls:
            client.tls_set(ca_certs=self.o.ca_file)
        if "no-will" not in self.o.defects:
            client.will_set(self.o.status_topic, b"offline", qos=1, retain=self.status_retain)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        return client

    def _prefill(self, n: int) -> float:
        """--backlog: N readings taken before the broker was reached; when the next one is due."""
        wall_ms = time.time_ns() // 1_000_000
        self.boot_s = self.cuff.boot_s = time.monotonic() - n * self.interval_s
        for k in range(n):
            back_ms = round((n - k) * self.interval_s * 1000)
            self.outbox.append(self.cuff.sample(self.boot_s + k * self.interval_s,
                                                wall_ms - back_ms))
        return self.boot_s + n * self.interval_s

    # -- paho's callbacks (called from loop(), in this thread) -------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any,
                    reason: ReasonCode, _properties: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        # before any reading: per topic the broker keeps our order
        client.publish(self.o.status_topic, b"online", qos=1, retain=self.status_retain)
        self.connected = True
        self.backoff_s = RECONNECT_INITIAL_S
        log.info("connected to %s:%d; %d reading(s) waiting", self.o.host, self.o.port,
                 len(self.outbox))

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any,
                       reason: ReasonCode, _properties: Any) -> None:
        if self.connected:
            log.warning("disconnected (%s); keeping readings until the broker is back", reason)
        self.connected = False

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        """Sample, publish and stay connected until stopped."""
        start = time.monotonic()
        end = None if self.o.duration_s is None else start + self.o.duration_s
        while not self.stop_requested and (end is None or time.monotonic() < end):
            now = time.monotonic()
            while now >= self.next_sample_s:
                self._keep(self.cuff.sample(now, time.time_ns() // 1_000_000))
                self.next_sample_s += self.interval_s
            if self.cut_requested:
                self._cut_network()
            if self.connected:
                self._flush(self.o.batch)
            elif self.mqtt.socket() is None and now >= max(self.next_dial_s,
                                                           self.outage_until_s):
                self._dial()  # once per connection: a second dial would drop the first
            wait = max(0.0, min(self.next_sample_s - time.monotonic(), 0.05))
            if self.mqtt.socket() is not None:
                self.mqtt.loop(timeout=wait)
            else:
                time.sleep(wait)
        self._stop()

    def _keep(self, reading: dict[str, Any]) -> None:
        self.outbox.append(reading)
        if len(self.outbox) > self.o.max_backlog:
            self.outbox.popleft()
            self.dropped += 1

    def _flush(self, batch: int) -> None:
        """Publish what is due: live readings `batch` at a time, a backlog in full arrays."""
        while self.connected and self.outbox and len(self.outbox) >= batch:
            backlog = len(self.outbox) > batch
            if "oversize-array" in self.o.defects and backlog:
                n = len(self.outbox)  # defect: the whole backlog in one array
            else:
                n = min(len(self.outbox), MAX_ARRAY_READINGS) if backlog else batch
            chunk = [self.outbox[k] for k in range(n)]
            array = n > 1 or self.o.batch > 1
            payload = _encode(chunk, array)
            while len(payload) > MAX_MESSAGE_BYTES and "oversize-array" not in self.o.defects:
                chunk = chunk[: len(chunk) // 2]
                payload = _encode(chunk, True)
            info = self.mqtt.publish(self.o.telemetry_topic, payload, qos=self.telemetry_qos)
            if info.rc == mqtt.MQTT_ERR_NO_CONN and self.telemetry_qos == 0:
                return  # the connection just went; paho keeps QoS 1 publishes, not these
            for _ in chunk:
                self.outbox.popleft()

    def _dial(self) -> None:
        try:
            if self.dialled:
                self.mqtt.reconnect()
            else:
                self.dialled = True
                self.mqtt.connect(self.o.host, self.o.port, keepalive=self.o.keepalive_s)
        except OSError as exc:
            log.warning("broker %s:%d unreachable (%s); retrying in %.1f s", self.o.host,
                        self.o.port, exc, self.backoff_s)
            self.next_dial_s = time.monotonic() + self.backoff_s * random.uniform(0.8, 1.2)
            self.backoff_s = min(self.backoff_s * 2, RECONNECT_MAX_S)

    def _cut_network(self) -> None:
        """SIGUSR1: lose the network (no DISCONNECT: the broker publishes the last will)."""
        self.cut_requested = False
        sock = self.mqtt.socket()
        if sock is not None and isinstance(sock, socket.socket):
            log.warning("network cut for %.1f s (test hook)", self.o.outage_s)
            sock.shutdown(socket.SHUT_RDWR)
        self.connected = False
        self.outage_until_s = time.monotonic() + self.o.outage_s

    def _stop(self) -> None:
        """A clean stop: the last readings, then `offline`, acknowledged, then DISCONNECT."""
        if not self.connected:
            return
        self._flush(1)  # a part-filled batch too
        info = self.mqtt.publish(self.o.status_topic, b"offline", qos=1, retain=self.status_retain)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while not info.is_published() and self.connected and time.monotonic() < deadline:
            self.mqtt.loop(timeout=0.05)
        self.mqtt.disconnect()
        self.mqtt.loop(timeout=0.1)
        log.info("stopped: %d reading(s) sampled, %d dropped while offline", self.cuff.readings,
                 self.dropped)


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883",
                   help="mqtt://host:1883 or mqtts://host:8883")
    p.add_argument("--ca-file", help="CA bundle for mqtts:// (default: the system's)")
    p.add_argument("--username", help="broker user (password from MQTT_PASSWORD)")
    p.add_argument("--protocol", type=int, choices=(5, 3), default=5,
                   help="MQTT 5 or 3 (3.1.1) (default 5)")
    p.add_argument("--topic-root", default="bfr")
    p.add_argument("--team", required=True)
    p.add_argument("--cuff", required=True, help="the cuff id, also the MQTT client id")
    p.add_argument("--rate", type=float, default=1.0, help="readings per second (default 1)")
    p.add_argument("--batch", type=int, default=1,
                   help=f"readings per message, 1 to {MAX_ARRAY_READINGS} (default 1)")
    p.add_argument("--target", type=float, default=150.0, help="target pressure, mmHg")
    p.add_argument("--bout-s", type=float, default=120.0, help="inflated for (default 120 s)")
    p.add_argument("--rest-s", type=float, default=60.0, help="deflated for (default 60 s)")
    p.add_argument("--keepalive", type=int, default=15,
                   help="MQTT keepalive: a lost network shows after 1.5x this (default 15 s)")
    p.add_argument("--backlog", type=int, default=0,
                   help="start with N readings waiting, as if sampled before the broker was "
                   "reached (test hook for arrays)")
    p.add_argument("--max-backlog", type=int, default=36_000,
                   help="readings kept while offline, the oldest dropped beyond (default 36000)")
    p.add_argument("--outage-s", type=float, default=3.0,
                   help="how long SIGUSR1 cuts the network (default 3 s)")
    p.add_argument("--duration", type=float, help="stop cleanly after S seconds")
    p.add_argument("--defect", action="append", choices=DEFECTS, default=[],
                   help="break one rule on purpose (repeatable)")
    args = p.parse_args(argv)
    url = urlsplit(args.broker)
    if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
        p.error("--broker must look like mqtt://host:1883")
    if not 0 < args.rate <= 1000 or not 1 <= args.batch <= MAX_ARRAY_READINGS:
        p.error("--rate must be > 0, --batch 1 to 256")
    if args.bout_s <= 0 or args.rest_s <= 0:
        p.error("--bout-s and --rest-s must be > 0")
    tls = url.scheme == "mqtts"
    return Options(
        host=url.hostname, port=url.port or (8883 if tls else 1883), tls=tls,
        ca_file=args.ca_file, username=args.username, password=os.environ.get("MQTT_PASSWORD"),
        protocol=args.protocol, topic_root=args.topic_root, team=args.team, cuff=args.cuff,
        rate_hz=args.rate, batch=args.batch, target_mmhg=args.target, bout_s=args.bout_s,
        rest_s=args.rest_s, keepalive_s=args.keepalive, backlog=args.backlog,
        max_backlog=args.max_backlog, outage_s=args.outage_s, duration_s=args.duration,
        defects=frozenset(args.defect),
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s cuff_client: %(message)s")
    client = Client(parse_args(argv))

    def stop(_signum: int, _frame: FrameType | None) -> None:
        client.stop_requested = True

    def cut(_signum: int, _frame: FrameType | None) -> None:
        client.cut_requested = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGUSR1, cut)
    client.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
