"""A lean MQTT 3.1.1 QoS 1 load publisher, run as its own process (`python -m bench.mqttpub`).

Why not gmqtt or `cuffwatch simulate`: the benchmarks need a publisher that costs the
2-core box as little as possible, so every PUBLISH packet is encoded before the clock
starts and the timed part only writes bytes and counts PUBACKs. Cuffs publish realistic
reading objects (SPEC §2) at 1 Hz of device time: 200 s bouts around the prescribed target
with a ±20 mmHg rep swing, then 400 s deflated, so the load raises (almost) no alerts.

Protocol with the parent, one line each way: the parent sends `prepare N` (encode the next
N messages), the child answers `ready`; `go [RATE]` publishes them (as fast as the in-flight
window allows, or at RATE messages/s) and answers one JSON line of figures; `quit` ends it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MQTT_PORT_DEFAULT = 1883  # the parent always passes the run's broker port
# Unacknowledged QoS 1 messages per connection: enough to keep a loopback pipe full, well
# under the test broker's max_inflight_messages (1000) and the 65,535 packet ids.
WINDOW = 500
# Packets joined into one write(): fewer syscalls, and still a small share of the window.
CHUNK = 64
# Rate mode tops the connections up on this tick: smooth enough for latency under load.
RATE_TICK_S = 0.005
CONNECT_TIMEOUT_S = 10.0  # a loopback CONNACK takes ms; only a wedged broker hits this
# Rest of a bout cycle, in readings (1 Hz device time): under every bout, rest and session
# limit of SPEC §3 (IPC's 240 s warn_bout_s, 300 s min_rest_s) so the load stays alert-free.
BOUT_READINGS = 200
CYCLE_READINGS = 600
# The rep swing sampled at 1 Hz: a 2.3 s rep period seen through 23 samples, ±20 mmHg.
SWING = tuple(round(20.0 * math.sin(2 * math.pi * k / 2.3), 1) for k in range(23))
DEFLATED_MMHG = 2.0  # a deflated cuff still reads a mmHg or two
PACKET_ID_MODULUS = 65535  # ids 1…65535; ids are reused in order, never while in flight


@dataclass(frozen=True, slots=True)
class Cuff:
    """One publishing cuff: its topic and the target its readings swing around."""

    team: str
    cuff: str
    target_mmhg: float


@dataclass(slots=True)
class Plan:
    """What to publish: the cuffs, their clocks, readings per message, the connections."""

    topic_root: str
    cuffs: list[Cuff]
    base_ts_ms: int  # device time of every cuff's reading 0
    step_ms: int = 1000  # one reading per second of device time (SPEC's 1 Hz cuffs)
    batch: int = 1  # readings per message (a JSON array when > 1)
    connections: int = 8
    next_index: list[int] = field(default_factory=list)  # per cuff: the next reading's index

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON for the child's --plan file."""
        return {
            "topic_root": self.topic_root,
            "cuffs": [[c.team, c.cuff, c.target_mmhg] for c in self.cuffs],
            "base_ts_ms": self.base_ts_ms,
            "step_ms": self.step_ms,
            "batch": self.batch,
            "connections": self.connections,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        """Read what `to_json` wrote."""
        return cls(
            topic_root=data["topic_root"],
            cuffs=[Cuff(t, c, float(x)) for t, c, x in data["cuffs"]],
            base_ts_ms=int(data["base_ts_ms"]),
            step_ms=int(data["step_ms"]),
            batch=int(data["batch"]),
            connections=int(data["connections"]),
        )


def reading_json(i: int, ts_ms: int, target: float) -> str:
    """Reading `i` of a cuff: inflated around target for a bout, then deflated (SPEC §2 fields)."""
    phase = i % CYCLE_READINGS
    battery = 90.0 - (i % 1000) * 0.01
    if phase < BOUT_READINGS:
        pressure = round(target + SWING[i % len(SWING)], 1)
        return (
            f'{{"ts":{ts_ms},"seq":{i},"pressure_mmhg":{pressure},"elapsed_s":{float(phase)},'
            f'"inflated":true,"target_mmhg":{target},"battery_pct":{battery:.2f}}}'
        )
    return (
        f'{{"ts":{ts_ms},"seq":{i},"pressure_mmhg":{DEFLATED_MMHG},"elapsed_s":0.0,'
        f'"inflated":false,"target_mmhg":{target},"battery_pct":{battery:.2f}}}'
    )


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def publish_packet(topic: bytes, payload: bytes, packet_id: int) -> bytes:
    """An MQTT 3.1.1 PUBLISH, QoS 1, not retained."""
    body_len = 2 + len(topic) + 2 + len(payload)
    return b"".join((
        b"\x32", _remaining_length(body_len), len(topic).to_bytes(2, "big"), topic,
        packet_id.to_bytes(2, "big"), payload,
    ))


def connect_packet(client_id: str) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session and keepalive off (idle phases are long)."""
    cid = client_id.encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x00"
    body = variable + len(cid).to_bytes(2, "big") + cid
    return b"\x10" + _remaining_length(len(body)) + body


def encode_messages(plan: Plan, count: int) -> list[list[bytes]]:
    """The next `count` messages, cuffs interleaved round-robin, split over the connections."""
    if not plan.next_index:
        plan.next_index = [0] * len(plan.cuffs)
    topics = [f"{plan.topic_root}/{c.team}/cuffs/{c.cuff}/telemetry".encode() for c in plan.cuffs]
    per_conn: list[list[bytes]] = [[] for _ in range(plan.connections)]
    made = 0
    while made < count:
        for k, cuff in enumerate(plan.cuffs):
            if made >= count:
                break
            first = plan.next_index[k]
            items = [
                reading_json(i, plan.base_ts_ms + i * plan.step_ms, cuff.target_mmhg)
                for i in range(first, first + plan.batch)
            ]
            plan.next_index[k] = first + plan.batch
            text = items[0] if plan.batch == 1 else "[" + ",".join(items) + "]"
            conn = per_conn[k % plan.connections]
            pid = len(conn) % PACKET_ID_MODULUS + 1
            conn.append(publish_packet(topics[k], text.encode(), pid))
            made += 1
    return per_conn


class Connection:
    """One publishing connection: writes pre-encoded packets within the window, counts PUBACKs."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.sent = 0
        self.acked = 0
        self._acks = asyncio.Event()
        self._pending = b""

    @classmethod
    async def open(cls, host: str, port: int, client_id: str) -> Connection:
        """Connect and wait for a successful CONNACK."""
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(connect_packet(client_id))
            connack = await reader.readexactly(4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise ConnectionError(f"broker refused {client_id}: CONNACK {connack.hex()}")
        return cls(reader, writer)

    async def read_acks(self) -> None:
        """Count PUBACKs until the connection closes (3.1.1: always 4 bytes)."""
        while True:
            data = await self.reader.read(1 << 16)
            if not data:
                return
            data = self._pending + data
            whole = len(data) - len(data) % 4
            self._pending = data[whole:]
            self.acked += whole // 4
            self._acks.set()

    async def send(self, packets: list[bytes], allowed: list[int]) -> None:
        """Send `packets`; `allowed[0]` caps how many may be sent so far (rate mode)."""
        done = 0
        total = len(packets)
        start_sent = self.sent
        while done < total:
            room = WINDOW - (self.sent - self.acked)
            budget = min(room, CHUNK, total - done, allowed[0] - done)
            if budget <= 0:
                self._acks.clear()
                if room <= 0:
                    await self._acks.wait()
                else:
                    await asyncio.sleep(RATE_TICK_S)
                continue
            self.writer.write(b"".join(packets[done : done + budget]))
            done += budget
            self.sent = start_sent + done
            await self.writer.drain()

    async def until_acked(self) -> None:
        """Wait for the PUBACK of everything sent."""
        while self.acked < self.sent:
            self._acks.clear()
            await self._acks.wait()


async def _publish(conns: list[Connection], batches: list[list[bytes]],
                   rate: float | None) -> dict[str, float]:
    """Publish one prepared phase; figures in seconds from `go`."""
    t0 = time.monotonic()
    allowances = [[len(b) if rate is None else 0] for b in batches]

    async def pace() -> None:
        per_conn = [len(b) / sum(map(len, batches)) for b in batches]
        while any(a[0] < len(b) for a, b in zip(allowances, batches, strict=True)):
            elapsed = time.monotonic() - t0
            assert rate is not None
            for a, share, b in zip(allowances, per_conn, batches, strict=True):
                a[0] = min(len(b), int(elapsed * rate * share) + 1)
            await asyncio.sleep(RATE_TICK_S)

    async with asyncio.TaskGroup() as tg:
        if rate is not None:
            tg.create_task(pace(), name="bench-pub.pace")
        for conn, packets, allowed in zip(conns, batches, allowances, strict=True):
            tg.create_task(conn.send(packets, allowed), name="bench-pub.send")
    published = time.monotonic() - t0
    await asyncio.gather(*(c.until_acked() for c in conns))
    return {"publish_s": published, "acked_s": time.monotonic() - t0}


async def _main(args: argparse.Namespace, plan: Plan) -> None:
    conns = [
        await Connection.open(args.host, args.port, f"bench-pub-{os.getpid()}-{k}")
        for k in range(plan.connections)
    ]
    loop = asyncio.get_running_loop()
    async with asyncio.TaskGroup() as tg:
        readers = [tg.create_task(c.read_acks(), name="bench-pub.read_acks") for c in conns]
        prepared: list[list[bytes]] = []
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
            if not line or line[0] == "quit":
                break
            if line[0] == "prepare":
                prepared = encode_messages(plan, int(line[1]))
                print("ready", flush=True)
            elif line[0] == "go":
                rate = float(line[1]) if len(line) > 1 else None
                figures = await _publish(conns, prepared, rate)
                messages = sum(map(len, prepared))
                figures |= {"messages": messages, "readings": messages * plan.batch}
                print(json.dumps(figures), flush=True)
        for c in conns:
            c.writer.write(b"\xe0\x00")  # DISCONNECT: no last will
            c.writer.close()
        for r in readers:
            r.cancel()


def main() -> None:
    """Entry point of the child process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=MQTT_PORT_DEFAULT)
    parser.add_argument("--plan", required=True, help="JSON written by Plan.to_json")
    args = parser.parse_args()
    asyncio.run(_main(args, Plan.from_json(json.loads(Path(args.plan).read_text()))))


if __name__ == "__main__":
    main()
