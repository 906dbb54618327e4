"""Sequence numbers (SPEC §2): `seq` counts readings modulo 2^32 and may wrap."""

from __future__ import annotations

from typing import Final

SEQ_MODULUS: Final = 1 << 32  # seq wraps at 2^32 (SPEC §2)
SEQ_HALF: Final = 1 << 31  # serial-number arithmetic (RFC 1982): a step of ≥ 2^31 is a step back


def next_seq(seq: int) -> int:
    """The seq after `seq`, wrapping at 2^32."""
    return (seq + 1) % SEQ_MODULUS


def seq_went_back(seq: int, last: int) -> bool:
    """Whether `seq` is behind `last` in serial-number arithmetic (a wrap is a step forward)."""
    return (seq - last) % SEQ_MODULUS >= SEQ_HALF
