"""The MQTT wire functions (gateway/mqtt_wire.py): packet reading and PUBACKs, no servers.

The reader runs on gmqtt's socket buffer: it must deliver a plain QoS 1 PUBLISH exactly as
written, leave everything else whole for gmqtt, consume only whole packets however the bytes
are split across reads, and say MALFORMED to a remaining length longer than 4 bytes.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field

import gmqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mqtt_wire import (
    MALFORMED,
    VARINT_MAX,
    encode_puback,
    encode_pubacks,
    encode_remaining_length,
    puback_refused,
    publish_topic,
    read_packets,
)

NO_PROPERTIES = b"\x00"  # MQTT 5: a property length of 0
CONTENT_TYPE = b"\x03\x00\x10application/json"  # MQTT 5 property 0x03, a UTF-8 string


def publish(
    topic: str | bytes, payload: bytes, mid: int = 1, *, qos: int = 1, retain: bool = False,
    dup: bool = False, properties: bytes | None = None,
) -> bytes:
    """An encoded PUBLISH (`properties`: MQTT 5's property length and properties, or none)."""
    name = topic.encode() if isinstance(topic, str) else topic
    body = len(name).to_bytes(2, "big") + name
    if qos:
        body += mid.to_bytes(2, "big")
    body += (properties or b"") + payload
    header = 0x30 | qos << 1 | retain | dup << 3
    return bytes([header]) + encode_remaining_length(len(body)) + body


def reference_split(data: bytes) -> tuple[int, int]:
    """A reference reader: (bytes in whole packets or MALFORMED, how many whole packets)."""
    pos = count = 0
    while len(data) - pos >= 2:
        j, length = pos + 1, 0
        for n in range(4):
            if j >= len(data):
                return pos, count
            length |= (data[j] & 0x7F) << 7 * n
            j += 1
            if not data[j - 1] & 0x80:
                break
        else:
            return MALFORMED, count
        if j + length > len(data):
            return pos, count
        pos, count = j + length, count + 1
    return pos, count


def decode_varint(data: bytes) -> tuple[int, int]:
    """A reference decoder: (value, bytes used) of a variable byte integer (MQTT 5 §1.5.5)."""
    value = 0
    for n, byte in enumerate(data):
        value |= (byte & 0x7F) << 7 * n
        if not byte & 0x80:
            return value, n + 1
    raise ValueError("unterminated")


@dataclass
class Sink:
    """What the reader handed over: fast-path publishes and packets left for gmqtt."""

    mqtt5: bool = False
    publishes: list[tuple[int, bytes, str, int]] = field(default_factory=list)
    packets: list[tuple[int, bytes]] = field(default_factory=list)

    def on_publish(self, mid: int, payload: bytes, topic: str, retain: int) -> None:
        self.publishes.append((mid, payload, topic, retain))

    def on_packet(self, cmd: int, body: bytes) -> None:
        self.packets.append((cmd, body))

    def read(self, data: bytes) -> int:
        return read_packets(data, self.mqtt5, self.on_publish, self.on_packet)

    def stream(self, chunks: list[bytes]) -> bytes:
        """Feed reads the way gmqtt's read loop does (it keeps the unparsed tail); the tail."""
        buffer = b""
        for chunk in chunks:
            buffer += chunk
            consumed = self.read(buffer)
            assert consumed != MALFORMED
            assert 0 <= consumed <= len(buffer)
            buffer = buffer[consumed:]
        return buffer


# -- plain QoS 1 PUBLISH: the fast path -----------------------------------------------------------


@pytest.mark.parametrize("mqtt5", [False, True])
@pytest.mark.parametrize("retain", [False, True])
@pytest.mark.parametrize("dup", [False, True])
def test_a_plain_qos1_publish_round_trips(mqtt5: bool, retain: bool, dup: bool) -> None:
    sink = Sink(mqtt5)
    props = NO_PROPERTIES if mqtt5 else None
    packet = publish("bfr/t1/cuffs/c1/telemetry", b'{"seq":1}', 4711, retain=retain, dup=dup,
                     properties=props)
    assert sink.read(packet) == len(packet)
    assert sink.publishes == [(4711, b'{"seq":1}', "bfr/t1/cuffs/c1/telemetry", int(retain))]
    assert sink.packets == []


@pytest.mark.parametrize("mqtt5", [False, True])
def test_an_empty_payload_and_extreme_packet_ids_round_trip(mqtt5: bool) -> None:
    sink = Sink(mqtt5)
    props = NO_PROPERTIES if mqtt5 else None
    data = b"".join(publish("a", b"", mid, properties=props) for mid in (0, 1, 65535))
    assert sink.read(data) == len(data)
    assert sink.publishes == [(0, b"", "a", 0), (1, b"", "a", 0), (65535, b"", "a", 0)]


def test_a_utf8_topic_is_decoded() -> None:
    sink = Sink()
    sink.read(publish("bfr/équipe/cuffs/Ø1/telemetry", b"x"))
    assert sink.publishes[0][2] == "bfr/équipe/cuffs/Ø1/telemetry"


def test_the_protocol_version_decides_whether_a_property_length_is_read() -> None:
    # the same bytes: on MQTT 5 the first byte after the packet id is the property length
    packet = publish("t", b"\x00payload")
    v311, v5 = Sink(mqtt5=False), Sink(mqtt5=True)
    v311.read(packet)
    v5.read(packet)
    assert v311.publishes == [(1, b"\x00payload", "t", 0)]
    assert v5.publishes == [(1, b"payload", "t", 0)]


# -- everything else goes to gmqtt whole ---------------------------------------------------------


@pytest.mark.parametrize("mqtt5", [False, True])
@pytest.mark.parametrize("qos", [0, 2])
def test_qos_0_and_2_publishes_go_to_gmqtt(mqtt5: bool, qos: int) -> None:
    sink = Sink(mqtt5)
    packet = publish("t/x", b"payload", 9, qos=qos, retain=True,
                     properties=NO_PROPERTIES if mqtt5 else None)
    assert sink.read(packet) == len(packet)
    assert sink.publishes == []
    assert sink.packets == [(packet[0], packet[2:])]
    assert packet[0] == 0x30 | qos << 1 | 1


@pytest.mark.parametrize(
    "properties",
    # 128 bytes of properties: 18 user properties (7 bytes each), a payload format indicator
    [CONTENT_TYPE, b"\x80\x01" + b"\x26\x00\x01k\x00\x01v" * 18 + b"\x01\x01"],
    ids=["one-byte-length", "two-byte-length"],
)
def test_an_mqtt5_publish_with_properties_goes_to_gmqtt(properties: bytes) -> None:
    if properties[0] & 0x80:  # the multi-byte property length says what follows
        assert decode_varint(properties)[0] == len(properties) - 2
    sink = Sink(mqtt5=True)
    packet = publish("t", b"payload", 7, properties=properties)
    assert sink.read(packet) == len(packet)
    assert sink.publishes == []
    body_length, _ = decode_varint(packet[1:])
    assert sink.packets == [(0x32, packet[-body_length:])]


@pytest.mark.parametrize(
    "packet",
    [
        publish(b"\xff\xfe", b"x"),  # not UTF-8
        publish(b"", b"x", properties=NO_PROPERTIES),  # MQTT 5 topic alias: no topic
        bytes([0x32, 0]),  # no body at all, at the end of the read
        bytes([0x32, 4, 0, 1, ord("t"), 0]),  # shorter than topic length + topic + packet id
        bytes([0x32, 6, 0, 9, ord("t"), 0, 1, 0]),  # the topic length runs past the packet
    ],
    ids=["not-utf8", "empty-topic", "no-body", "too-short", "topic-past-the-end"],
)
def test_a_publish_the_reader_is_unsure_of_goes_to_gmqtt(packet: bytes) -> None:
    for mqtt5 in (False, True):
        sink = Sink(mqtt5)
        assert sink.read(packet) == len(packet)
        assert sink.publishes == []
        assert sink.packets == [(0x32, packet[2:])]


def test_other_packets_go_to_gmqtt_with_their_bodies() -> None:
    suback = bytes([0x90, 3, 0, 5, 1])
    pingresp = bytes([0xD0, 0])
    connack = bytes([0x20, 3, 0, 0, 0])
    sink = Sink(mqtt5=True)
    data = connack + suback + encode_puback(3) + pingresp
    assert sink.read(data) == len(data)
    assert sink.packets == [(0x20, b"\x00\x00\x00"), (0x90, b"\x00\x05\x01"),
                            (0x40, b"\x00\x03"), (0xD0, b"")]


def test_packets_keep_their_order_across_both_paths() -> None:
    order: list[str] = []
    data = publish("a", b"1", 1) + publish("b", b"2", qos=0) + publish("c", b"3", 2)
    read_packets(data, False, lambda mid, _p, topic, _r: order.append(f"fast {topic}"),
                 lambda cmd, _b: order.append(f"gmqtt {cmd:#x}"))
    assert order == ["fast a", "gmqtt 0x30", "fast c"]


# -- the remaining length, and bytes split across reads -----------------------------------------


@pytest.mark.parametrize(("payload_bytes", "length_bytes"),
                         [(0, 1), (200, 2), (20_000, 3), (2_100_000, 4)])
def test_remaining_lengths_of_one_to_four_bytes(payload_bytes: int, length_bytes: int) -> None:
    packet = publish("bfr/t", b"p" * payload_bytes, 12)
    assert packet[length_bytes] < 0x80 <= min(packet[1:length_bytes], default=0x80)
    sink = Sink()
    assert sink.read(packet) == len(packet)
    assert sink.publishes == [(12, b"p" * payload_bytes, "bfr/t", 0)]
    assert publish_topic(packet) == "bfr/t"
    assert sink.read(packet[:-1]) == 0  # one byte short: nothing consumed
    assert sink.read(packet[: 1 + length_bytes - 1]) == 0  # the length itself cut short


@pytest.mark.parametrize(
    "length", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, VARINT_MAX]
)
def test_remaining_length_encoding_at_the_boundaries(length: int) -> None:
    encoded = encode_remaining_length(length)
    assert decode_varint(encoded) == (length, len(encoded))
    assert len(encoded) == 1 + (length > 127) + (length > 16_383) + (length > 2_097_151)


@given(st.integers(min_value=0, max_value=VARINT_MAX))
def test_remaining_length_round_trips(length: int) -> None:
    encoded = encode_remaining_length(length)
    assert decode_varint(encoded) == (length, len(encoded))
    # a header announcing that much, with nothing of the body yet: wait for more
    partial = bytes([0xD0]) + encoded
    assert read_packets(partial, True, Sink().on_publish, Sink().on_packet) == (
        len(partial) if length == 0 else 0
    )


@pytest.mark.parametrize("length", [-1, VARINT_MAX + 1])
def test_remaining_lengths_outside_the_range_are_refused(length: int) -> None:
    with pytest.raises(ValueError, match="remaining length"):
        encode_remaining_length(length)


@pytest.mark.parametrize(
    "data",
    [
        bytes([0x32, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),  # a fifth length byte
        bytes([0x32, 0x80, 0x80, 0x80, 0x80]),  # the fourth says more follows: no need to wait
        publish("ok", b"1") + bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),  # after a good one
    ],
)
def test_a_remaining_length_of_more_than_four_bytes_is_malformed(data: bytes) -> None:
    sink = Sink()
    assert sink.read(data) == MALFORMED


def test_one_lone_byte_or_a_cut_length_waits_for_more() -> None:
    sink = Sink()
    assert sink.read(b"\x32") == 0
    assert sink.read(bytes([0x32, 0x80, 0x80])) == 0  # 2 of up to 4 length bytes
    packet = publish("t", b"x")
    assert sink.read(packet + packet[:1]) == len(packet)  # the next one's first byte stays


@pytest.mark.parametrize("mqtt5", [False, True])
def test_a_stream_split_at_every_byte_gives_the_same_packets(mqtt5: bool) -> None:
    props = NO_PROPERTIES if mqtt5 else None
    stream = b"".join([
        publish("bfr/t1/cuffs/c1/telemetry", b"a" * 300, 1, properties=props),  # 2-byte length
        publish("bfr/t1/cuffs/c2/status", b"online", 2, retain=True, properties=props),
        publish("bfr/t1/alerts/#", b"q0", qos=0, properties=props),
        encode_pubacks([5, 6]),
        bytes([0xD0, 0]),
        publish("bfr/t1/cuffs/c1/telemetry", b"", 3, dup=True, properties=props),
    ])
    whole = Sink(mqtt5)
    assert whole.stream([stream]) == b""
    assert len(whole.publishes) == 3
    assert len(whole.packets) == 4
    for cut in range(len(stream) + 1):
        split = Sink(mqtt5)
        assert split.stream([stream[:cut], stream[cut:]]) == b""
        assert (split.publishes, split.packets) == (whole.publishes, whole.packets), cut
    bytewise = Sink(mqtt5)
    assert bytewise.stream([stream[i : i + 1] for i in range(len(stream))]) == b""
    assert (bytewise.publishes, bytewise.packets) == (whole.publishes, whole.packets)


topics = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)
messages = st.tuples(topics, st.binary(max_size=300), st.integers(0, 65535),
                     st.sampled_from([0, 1]), st.booleans(), st.booleans())


@settings(max_examples=200, deadline=None)
@given(st.lists(messages, max_size=12), st.booleans(), st.data())
def test_any_stream_of_publishes_in_any_reads_is_delivered_as_written(
    batch: list[tuple[str, bytes, int, int, bool, bool]], mqtt5: bool, data: st.DataObject,
) -> None:
    props = NO_PROPERTIES if mqtt5 else None
    stream = b"".join(publish(t, p, mid, qos=qos, retain=r, dup=d, properties=props)
                      for t, p, mid, qos, r, d in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    sink = Sink(mqtt5)
    assert sink.stream(chunks) == b""
    assert sink.publishes == [(mid, p, t, int(r)) for t, p, mid, qos, r, _ in batch if qos == 1]
    assert [cmd & 0x06 for cmd, _ in sink.packets] == [0 for *_, qos, _, _ in batch if qos == 0]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_arbitrary_bytes_never_raise_and_are_consumed_at_packet_boundaries(
    data: bytes, mqtt5: bool
) -> None:
    sink = Sink(mqtt5)
    consumed, packets = reference_split(data)
    assert sink.read(data) == consumed
    assert len(sink.publishes) + len(sink.packets) == packets


@given(st.lists(st.binary(min_size=2, max_size=40), max_size=8), st.booleans())
def test_arbitrary_packets_split_as_the_reference_reader_splits_them(
    parts: list[bytes], mqtt5: bool
) -> None:
    # whole packets of any type and flags: the reader consumes them all, none lost
    stream = b"".join(bytes([p[0]]) + encode_remaining_length(len(p) - 1) + p[1:] for p in parts)
    sink = Sink(mqtt5)
    assert sink.read(stream) == len(stream) == reference_split(stream)[0]
    assert len(sink.publishes) + len(sink.packets) == len(parts)


# -- a resent publish: the link reads its topic back (gmqtt builds the packet) --------------------


@pytest.mark.parametrize("payload_bytes", [0, 100, 20_000, 3_000_000])
def test_the_topic_of_a_resent_publish_is_read_back_whatever_its_length(
    payload_bytes: int,
) -> None:
    # remaining lengths of 1, 2, 3 and 4 bytes (MQTT's variable byte integer)
    from types import SimpleNamespace

    from gmqtt.mqtt.constants import MQTTv50
    from gmqtt.mqtt.package import PublishPacket
    from gmqtt.mqtt.utils import IdGenerator

    topic = "bfr/t1/alerts/c-17_b/over_pressure"
    message = gmqtt.Message(topic, b"x" * payload_bytes, qos=1, retain=True)
    protocol = SimpleNamespace(proto_ver=MQTTv50, id_generator=IdGenerator())
    _mid, packet = PublishPacket.build_package(message, protocol)
    assert publish_topic(bytes(packet)) == topic


# -- PUBACKs -----------------------------------------------------------------------------------


def test_a_puback_is_four_bytes_of_success() -> None:
    assert encode_puback(1) == b"\x40\x02\x00\x01"
    assert encode_puback(65535) == b"\x40\x02\xff\xff"


def test_a_batch_of_pubacks_is_one_buffer_in_order() -> None:
    assert encode_pubacks([]) == b""
    assert encode_pubacks([1, 258, 65535]) == encode_puback(1) + encode_puback(258) + encode_puback(
        65535
    )
    assert encode_pubacks(iter([7])) == encode_puback(7)


@given(st.lists(st.integers(0, 65535), max_size=500))
def test_pubacks_round_trip_through_the_reader(mids: list[int]) -> None:
    sink = Sink(mqtt5=True)
    data = encode_pubacks(mids)
    assert sink.read(data) == len(data) == 4 * len(mids)
    assert sink.packets == [(0x40, mid.to_bytes(2, "big")) for mid in mids]
    assert sink.publishes == []


@pytest.mark.parametrize(
    ("body", "refused"),
    [
        (b"\x00\x01", False),  # MQTT 3.1.1, or MQTT 5 success without a reason code
        (b"\x00\x01\x00", False),
        (b"\x00\x01\x10", False),  # no matching subscribers: still a success
        (b"\x00\x01\x80", True),  # unspecified error
        (b"\x00\x01\x87\x00", True),  # not authorized, with a property length
    ],
)
def test_a_puback_reason_code_from_0x80_is_a_refusal(body: bytes, refused: bool) -> None:
    assert puback_refused(body) is refused


# -- the fence around gmqtt (gateway/gmqtt_compat.py) ------------------------------------------


def test_the_installed_gmqtt_is_a_version_the_fence_was_verified_with() -> None:
    from gateway.gmqtt_compat import VERIFIED_GMQTT_VERSIONS, check_gmqtt_version

    assert importlib.metadata.version("gmqtt") in VERIFIED_GMQTT_VERSIONS
    check_gmqtt_version(importlib.metadata.version("gmqtt"))


@pytest.mark.parametrize("version", ["0.8.1", "0.9.0", "1.0.0", "0.7.9"])
def test_an_unverified_gmqtt_is_refused_loudly(version: str) -> None:
    from gateway.gmqtt_compat import check_gmqtt_version

    with pytest.raises(ImportError, match=rf"gmqtt {version} is installed") as refused:
        check_gmqtt_version(version)
    assert "Re-verify every 'relies on' comment" in str(refused.value)
    assert "VERIFIED_GMQTT_VERSIONS" in str(refused.value)
