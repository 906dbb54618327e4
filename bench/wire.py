"""Kernel timestamps of MQTT packets on the gateway's own connections (tcpdump on loopback).

SPEC §3 times an alert "from the broker delivering the reading that crosses a critical
threshold to the alert's MQTT publish": both ends are on the gateway's sockets, so neither
a client's clock (which adds the broker's hops) nor the gateway's own (which misses the time
a reading waits in its socket buffer) measures it. A capture does: `Capture` runs tcpdump on
`lo` for the gateway's connections to the broker only, and `Streams` rebuilds each direction
of each connection as one byte stream with the kernel time at which every byte was seen, so
`first_seen(marker)` is when the last byte of the first packet holding a topic crossed the
wire. Topics are unique per latency sample (one cuff each), so the reading is the first
`…/cuffs/{cuff}/telemetry` towards the gateway and its alert the first
`…/alerts/{cuff}/over_pressure` from it.
"""

from __future__ import annotations

import bisect
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

TCPDUMP_BUFFER_KIB = 65_536  # the kernel ring: a burst must not drop packets
START_TIMEOUT_S = 10.0
# The kernel hands tcpdump its ring in blocks, each when full or after libpcap's 1 s timeout,
# and tcpdump stopping discards a block not yet handed over: the last packets wait this long.
# (--immediate-mode would hand over every packet at once, costing CPU during the benchmark.)
BLOCK_TIMEOUT_S = 1.2
_NANO_MAGIC = 0xA1B23C4D  # pcap, nanosecond timestamps
_MICRO_MAGIC = 0xA1B2C3D4
_LINKTYPE_ETHERNET = 1
_LINKTYPE_NULL = 0  # BSD loopback
_LINKTYPE_LINUX_SLL = 113


def tcpdump() -> str:
    """The tcpdump binary (Debian puts it in /usr/bin or /usr/sbin)."""
    for name in ("tcpdump", "/usr/sbin/tcpdump", "/usr/bin/tcpdump"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("tcpdump not found: scripts/ensure-services installs it (as root)")


def broker_ports(pid: int, broker_port: int) -> list[int]:
    """Local ports of process `pid`'s TCP connections to the broker (its MQTT links)."""
    return sorted(c.laddr.port for c in psutil.Process(pid).net_connections(kind="tcp")
                  if c.raddr and c.raddr.port == broker_port
                  and c.status == psutil.CONN_ESTABLISHED)


class Capture:
    """tcpdump on lo for some TCP ports, to `path`; `stop()` reports kernel drops."""

    def __init__(self, path: Path, ports: list[int]) -> None:
        if not ports:
            raise ValueError("no port to capture")
        self.path = path
        self.ports = ports
        self.dropped: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._err = path.with_suffix(".stderr")

    def start(self) -> Capture:
        """Start tcpdump and wait until it listens."""
        expr = " or ".join(f"port {p}" for p in self.ports)
        with self._err.open("wb") as err:
            self._proc = subprocess.Popen(
                [tcpdump(), "-i", "lo", "-n", "-s", "0", "-B", str(TCPDUMP_BUFFER_KIB),
                 "--time-stamp-precision=nano", "-w", str(self.path), f"tcp and ({expr})"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + START_TIMEOUT_S
        while b"listening on" not in self._err.read_bytes():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tcpdump did not start: {self._err.read_text()!r}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop tcpdump (it flushes on SIGINT) and read its drop count."""
        if self._proc is None:
            return
        time.sleep(BLOCK_TIMEOUT_S)
        self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None
        for line in self._err.read_text().splitlines():
            if "dropped by kernel" in line:
                self.dropped = int(line.split()[0])

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@dataclass
class _Stream:
    data: bytearray = field(default_factory=bytearray)
    ends: list[int] = field(default_factory=list)  # stream offset after each segment
    times: list[float] = field(default_factory=list)  # its kernel time, s


class Streams:
    """Every TCP direction in a pcap file as (bytes, per-byte kernel time).

    Segments are placed by sequence number, not by capture order: with both cores sending on
    loopback, the capture ring can hold a segment ahead of the one before it in the stream.
    """

    def __init__(self, path: Path) -> None:
        pieces: dict[tuple[int, int], list[tuple[int, float, bytes]]] = {}
        base: dict[tuple[int, int], int] = {}
        for ts, sport, dport, seq, payload in _segments(path):
            if not payload:
                continue
            key = (sport, dport)
            rel = (seq - base.setdefault(key, seq)) % 2**32
            if rel >= 2**31:  # before the first segment captured
                rel -= 2**32
            pieces.setdefault(key, []).append((rel, ts, payload))
        self._streams: dict[tuple[int, int], _Stream] = {}
        for key, segments in pieces.items():
            s = self._streams[key] = _Stream()
            segments.sort(key=lambda piece: piece[0])
            start = segments[0][0]
            for rel, ts, payload in segments:
                placed = start + len(s.data)
                skip = max(0, placed - rel)  # bytes already placed (a retransmission)
                if skip >= len(payload):
                    continue
                s.data += payload[skip:]  # a gap (a segment not captured) just closes up
                s.ends.append(len(s.data))
                s.times.append(ts)

    def directions(self, *, to_port: int | None = None,
                   from_port: int | None = None) -> list[tuple[int, int]]:
        """(source port, destination port) of the directions matching."""
        return [k for k in self._streams
                if (to_port is None or k[1] == to_port)
                and (from_port is None or k[0] == from_port)]

    def first_seen(self, marker: bytes, directions: list[tuple[int, int]]) -> float | None:
        """Kernel time the first occurrence of `marker` in those directions was complete."""
        best: float | None = None
        for key in directions:
            s = self._streams[key]
            at = s.data.find(marker)
            if at < 0:
                continue
            ts = s.times[bisect.bisect_left(s.ends, at + len(marker))]
            best = ts if best is None else min(best, ts)
        return best


def _segments(path: Path) -> Iterator[tuple[float, int, int, int, bytes]]:
    """(time s, source port, destination port, sequence, payload) of each TCP/IPv4 packet."""
    raw = path.read_bytes()
    magic = struct.unpack_from("<I", raw, 0)[0]
    endian = "<"
    if magic not in (_NANO_MAGIC, _MICRO_MAGIC):
        endian = ">"
        magic = struct.unpack_from(">I", raw, 0)[0]
    scale = 1e-9 if magic == _NANO_MAGIC else 1e-6
    linktype = struct.unpack_from(endian + "I", raw, 20)[0]
    link = {_LINKTYPE_ETHERNET: 14, _LINKTYPE_NULL: 4, _LINKTYPE_LINUX_SLL: 16}[linktype]
    record = struct.Struct(endian + "IIII")
    pos = 24
    while pos + record.size <= len(raw):
        sec, frac, incl, _orig = record.unpack_from(raw, pos)
        pos += record.size
        frame = memoryview(raw)[pos:pos + incl]
        pos += incl
        ip = frame[link:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:  # IPv4, TCP
            continue
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from(">H", ip, 2)[0]
        tcp = ip[ihl:total]
        sport, dport, seq = struct.unpack_from(">HHI", tcp, 0)
        offset = (tcp[12] >> 4) * 4
        yield sec + frac * scale, sport, dport, seq, bytes(tcp[offset:])
