"""MQTT's wire format, pure: PUBLISH packets read from a socket read's bytes, PUBACKs written.

No gmqtt and no asyncio, in the style of aioesphomeapi's frame helper: `read_packets` walks one
buffer with indices, hands each whole packet to a callback as it goes, and returns how much it
consumed; a packet cut by the end of the buffer is left for the caller to keep and offer again
with the next read's bytes. A plain QoS 1 PUBLISH (no MQTT 5 properties, a non-empty UTF-8
topic) is taken apart here, on the gateway's hot path; every other packet goes to the caller's
`on_packet` whole (first header byte and body), for a full MQTT implementation to handle.
References: MQTT 3.1.1 §2.2 and §3.3, MQTT 5 §1.5.5, §2.1, §3.3 and §3.4.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

# First byte of the fixed header: the packet type in the high nibble, flags in the low one.
PUBLISH: Final = 0x30
PUBACK: Final = 0x40
RETAIN_FLAG: Final = 0x01  # PUBLISH flag bit 0
QOS1_FLAG: Final = 0x02  # PUBLISH flag bits 1-2 = 01
DUP_FLAG: Final = 0x08  # PUBLISH flag bit 3: a redelivery
# Type and QoS bits, not DUP or RETAIN: a QoS 1 PUBLISH matches whatever those two say.
_TYPE_AND_QOS: Final = 0xF6
_PUBLISH_QOS1: Final = PUBLISH | QOS1_FLAG
# The remaining length is a variable byte integer: 7 bits a byte, 4 bytes at most, so the
# continuation bit may not be set past bit 21 of the value (MQTT 5 §1.5.5).
VARINT_MAX_BYTES: Final = 4
VARINT_MAX: Final = (1 << 7 * VARINT_MAX_BYTES) - 1  # 268,435,455
_LAST_SHIFT: Final = 7 * (VARINT_MAX_BYTES - 1)
# The shortest QoS 1 PUBLISH body worth parsing: topic length (2), one topic byte, packet id (2).
_MIN_QOS1_BODY: Final = 5
# `read_packets`' answer to a remaining length longer than 4 bytes: the stream cannot be
# resynchronised, the connection must be reset (gmqtt's reader answers the same).
MALFORMED: Final = -1
# A PUBACK of remaining length 2: success, without reason code or properties (MQTT 5 §3.4.2.1
# allows omitting them; 3.1.1 has none), so one encoding serves both versions.
_PUBACK_HEADER: Final = bytes((PUBACK, 2))
# A reason code from 0x80 up in a PUBACK says the broker refused the publish (MQTT 5 §3.4.2.1).
_FIRST_FAILURE_CODE: Final = 0x80

# A plain QoS 1 PUBLISH: packet id, payload, topic, the RETAIN flag (0 or 1).
OnPublish = Callable[[int, bytes, str, int], None]
# Any other packet: the first byte of its fixed header and its body (after the remaining length).
OnPacket = Callable[[int, bytes], None]


def read_packets(data: bytes, mqtt5: bool, on_publish: OnPublish, on_packet: OnPacket) -> int:
    """Hand every whole packet of `data` to a callback, in order; the bytes consumed, or MALFORMED.

    `on_publish` gets the QoS 1 PUBLISH packets without properties (`mqtt5`: a property length
    of 0) whose topic is non-empty UTF-8; `on_packet` gets every other packet, PUBLISH ones this
    reader is unsure of included. One function, no per-packet objects: it runs once per socket
    read, for hundreds of messages.
    """
    size = len(data)
    parsed = 0
    while size - parsed >= 2:
        cmd = data[parsed]
        i = parsed + 1
        length = 0
        shift = 0
        while True:  # the remaining length
            if i >= size:
                return parsed
            byte = data[i]
            i += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > _LAST_SHIFT:
                return MALFORMED
        end = i + length
        if end > size:
            return parsed
        parsed = end
        if cmd & _TYPE_AND_QOS == _PUBLISH_QOS1 and length >= _MIN_QOS1_BODY:
            t1 = i + 2 + (data[i] << 8 | data[i + 1])  # end of the topic
            start = t1 + 2 + mqtt5  # the payload: after the packet id (and property length)
            if start <= end and not (mqtt5 and data[t1 + 2]):
                try:
                    topic = data[i + 2 : t1].decode()
                except UnicodeDecodeError:
                    pass
                else:
                    if topic:
                        on_publish(data[t1] << 8 | data[t1 + 1], data[start:end], topic, cmd & 1)
                        continue
        on_packet(cmd, data[i:end])
    return parsed


def encode_remaining_length(length: int) -> bytes:
    """`length` as MQTT's variable byte integer (1 to 4 bytes); ValueError outside 0..VARINT_MAX."""
    if not 0 <= length <= VARINT_MAX:
        raise ValueError(f"remaining length {length} outside 0..{VARINT_MAX}")
    out = bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        if not length:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def publish_topic(packet: bytes) -> str:
    """The topic of a whole encoded PUBLISH packet (fixed header, remaining length, topic)."""
    i = 1
    while packet[i] & 0x80:  # the remaining length's continuation bytes
        i += 1
    size = packet[i + 1] << 8 | packet[i + 2]
    return packet[i + 3 : i + 3 + size].decode()


def encode_puback(mid: int) -> bytes:
    """A success PUBACK for packet id `mid` (4 bytes, valid on MQTT 3.1.1 and 5)."""
    return _PUBACK_HEADER + mid.to_bytes(2, "big")


def encode_pubacks(mids: Iterable[int]) -> bytes:
    """Success PUBACKs for all of `mids`, in order, as one buffer (for one socket write)."""
    header = _PUBACK_HEADER
    return b"".join([header + mid.to_bytes(2, "big") for mid in mids])


def puback_refused(body: bytes) -> bool:
    """Whether a PUBACK's body (packet id, then MQTT 5's reason code) carries a failure code."""
    return len(body) > 2 and body[2] >= _FIRST_FAILURE_CODE
