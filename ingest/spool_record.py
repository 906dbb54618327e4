"""The spool's record format: how one record is framed on disk, and the one parser for it.

A record is a 20-byte header — magic, payload length (u32), CRC32 of length, ordinal and
payload (u32), ordinal (u64, +1 per record) — followed by the payload. The writer frames
with `frame_header`; recovery (`ingest.spool_files.scan_segment`), the reader
(`ingest.spool_files.read_records`) and the written mark all parse with `read_header` /
`unpack_header` and `read_payload`, which raise `CorruptRecordError` naming what is wrong.

The magic is also the payload's version, per record (a spool outlives an upgrade, and the
new gateway appends to the old one's last segment): `CWS2` (`MAGIC`), line protocol timed
in ns (`ingest.lineproto.PRECISION`); `CWS1` (`MAGIC_MS`), line protocol timed in ms, as
gateways before issue #17 (one point per reading) wrote it. `upgrade_payload` turns a
record's payload into the current version, so everything past the reader sees ns lines.
A gateway older than `CWS2` takes a `CWS2` record for a corrupt tail: downgrade with a
drained spool only (docs/contract.md, section 4).
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO, NamedTuple

from ingest.errors import CorruptRecordError
from ingest.lineproto import ms_lines_to_ns

__all__ = [
    "HEADER_BYTES",
    "MAGIC",
    "MAGIC_MS",
    "MAX_RECORD_BYTES",
    "SCAN_CHUNK_BYTES",
    "RecordHeader",
    "frame_header",
    "read_header",
    "read_payload",
    "unpack_header",
    "upgrade_payload",
]

MAGIC = b"CWS2"  # what this gateway writes: the payload's lines are timed in ns
MAGIC_MS = b"CWS1"  # an earlier gateway's record: its lines are timed in ms
_MAGICS = (MAGIC, MAGIC_MS)
_HEADER = struct.Struct("<4sIIQ")  # magic, payload length, crc32, ordinal
_CRC_PREFIX = struct.Struct("<IQ")  # length and ordinal, covered by the CRC with the payload
HEADER_BYTES = _HEADER.size

# A corrupt length field must not make recovery allocate gigabytes; the gateway's largest
# record, the lines of one socket read's messages (a read is at most 256 KiB of packets,
# and a line is about twice its reading's JSON), is far below this.
MAX_RECORD_BYTES = 16 << 20
# Recovery checks payload CRCs in chunks of this size, so its memory use is bounded.
SCAN_CHUNK_BYTES = 1 << 20


class RecordHeader(NamedTuple):
    """A record's header fields (the magic checked, and kept as `ms`)."""

    length: int
    crc: int
    ordinal: int
    ms: bool = False  # framed by an earlier gateway (MAGIC_MS): the payload is timed in ms


def frame_header(payload: bytes, ordinal: int) -> bytes:
    """The header that goes before `payload` as record number `ordinal` (the append path)."""
    length = len(payload)
    crc = zlib.crc32(payload, zlib.crc32(_CRC_PREFIX.pack(length, ordinal)))
    return _HEADER.pack(MAGIC, length, crc, ordinal)


def unpack_header(raw: bytes) -> RecordHeader:
    """The header in `raw` (bytes read at a record boundary); CorruptRecordError if torn or
    not a header."""
    if len(raw) < HEADER_BYTES:
        raise CorruptRecordError("torn record header")
    magic, length, crc, ordinal = _HEADER.unpack(raw)
    if magic not in _MAGICS:
        raise CorruptRecordError("bad record magic")
    return RecordHeader(length, crc, ordinal, magic == MAGIC_MS)


def read_header(f: BinaryIO, offset: int, size: int) -> RecordHeader:
    """Read the header of the record at `offset` of a file whose good part is `size` bytes.

    CorruptRecordError if the header is torn or bad, or its payload could not fit.
    """
    if offset + HEADER_BYTES > size:
        raise CorruptRecordError("torn record header")
    header = unpack_header(f.read(HEADER_BYTES))
    if header.length > MAX_RECORD_BYTES or offset + HEADER_BYTES + header.length > size:
        raise CorruptRecordError("torn record payload")
    return header


def read_payload(f: BinaryIO, header: RecordHeader, *, keep: bool = True) -> bytes:
    """Read the payload `header` announces and check its CRC; CorruptRecordError if bad.

    `keep=False` (recovery) reads it in chunks of SCAN_CHUNK_BYTES and returns b"", so
    checking a large record never holds it in memory.
    """
    length = header.length
    check = zlib.crc32(_CRC_PREFIX.pack(length, header.ordinal))
    if keep:
        payload = f.read(length)
        if len(payload) != length or zlib.crc32(payload, check) != header.crc:
            raise CorruptRecordError("record CRC mismatch")
        return payload
    remaining = length
    while remaining:
        chunk = f.read(min(remaining, SCAN_CHUNK_BYTES))
        if not chunk:
            break
        check = zlib.crc32(chunk, check)
        remaining -= len(chunk)
    if remaining or check != header.crc:
        raise CorruptRecordError("record CRC mismatch")
    return b""


def upgrade_payload(header: RecordHeader, payload: bytes) -> bytes:
    """`payload` (checked, of the record `header` announced) in the current version: an
    earlier gateway's ms lines timed in ns; a current record's payload as it is."""
    return ms_lines_to_ns(payload) if header.ms else payload
