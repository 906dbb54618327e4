"""bench.wire: kernel-timestamped byte streams from a real tcpdump capture on loopback.

The alert-latency benchmark judges SPEC §3's figure (reading in on the gateway's socket →
alert out) from these times, so the reassembly and the marker timing are tested here on a
real TCP exchange whose timing the test controls.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import wire

GAP_S = 0.15  # between the exchanges the test times: far above loopback's microseconds


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected loopback TCP pair (client, server side), Nagle off."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    for s in (client, server):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    yield client, server
    client.close()
    server.close()


def _capture(tmp_path: Path, port: int) -> wire.Capture:
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("tcpdump needs root (CAP_NET_RAW); CI runs as root and fails instead")
    try:
        return wire.Capture(tmp_path / "t.pcap", [port]).start()
    except RuntimeError as exc:
        pytest.fail(f"tcpdump could not capture: {exc}", pytrace=False)


def _drain(sock: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        got += sock.recv(n - len(got))
    return got


def test_markers_are_timed_by_their_last_byte_in_each_direction(
        pair: tuple[socket.socket, socket.socket], tmp_path: Path) -> None:
    client, server = pair
    client_port = client.getsockname()[1]
    server_port = server.getsockname()[1]
    cap = _capture(tmp_path, client_port)
    try:
        client.sendall(b"noise bfr/t/cuffs/c1/tel")  # a marker split over two segments
        time.sleep(GAP_S)
        client.sendall(b"emetry more")
        _drain(server, 35)
        time.sleep(GAP_S)
        server.sendall(b"bfr/t/alerts/c1/over_pressure")
        _drain(client, 29)
    finally:
        cap.stop()
    assert cap.dropped == 0
    streams = wire.Streams(cap.path)
    inbound = streams.directions(to_port=server_port)
    outbound = streams.directions(from_port=server_port)
    assert inbound == [(client_port, server_port)]
    assert outbound == [(server_port, client_port)]
    began = streams.first_seen(b"noise", inbound)
    arrived = streams.first_seen(b"bfr/t/cuffs/c1/telemetry", inbound)
    left = streams.first_seen(b"bfr/t/alerts/c1/over_pressure", outbound)
    assert began is not None
    assert arrived is not None
    assert left is not None
    # The split marker counts from its second half (a gap after the first), and the answer
    # from after one more gap. (Lower bounds only: a loaded box may stretch a gap, not cut it.)
    assert arrived - began > GAP_S * 0.9
    assert left - arrived > GAP_S * 0.9
    assert streams.first_seen(b"bfr/t/alerts/c1/over_pressure", inbound) is None
    assert streams.first_seen(b"absent", inbound + outbound) is None


def test_gateway_ports_are_its_connections_to_the_broker(
        pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    server_port = server.getsockname()[1]
    assert wire.broker_ports(os.getpid(), server_port) == [client.getsockname()[1]]
