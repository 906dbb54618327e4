"""Payload validation at the boundary (SPEC §2): bytes in, frozen readings or a rejection out.

Every message from the network is hostile until it passes here. pydantic validates the raw
bytes in Rust (`model_validate_json`), strictly: no string-to-number coercion, no NaN or
infinity, no booleans as numbers. pydantic is the contract.

On the hot path msgspec goes first (C, about four times faster: bench `micro`) with the
same constraints, narrowed: an integer `ts` and no unknown fields. Whatever it refuses,
pydantic decides again, so the accepted set and every rejection text are pydantic's;
msgspec only ever accepts a subset of what pydantic accepts, with the same values (a
differential property test over generated and hostile payloads holds the two together).
"""

from __future__ import annotations

import base64
import enum
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Protocol, cast

import msgspec
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from core.model import Limb
from core.seq import SEQ_MODULUS
from gateway.errors import GatewayError

MAX_PAYLOAD_BYTES = 64 * 1024  # SPEC §2: larger messages are rejected unread
MAX_READINGS_PER_MESSAGE = 256
REJECTED_ECHO_BYTES = 1024  # the rejected topic echoes at most 1 KiB of the payload
# 9999-12-31T23:59:59.999Z: an int `ts` spans what an RFC 3339 one can, and no int arithmetic
# on it (skew, lag) can leave int64 or overflow a float
MAX_TS_MS = 253_402_300_799_999
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})?"
)


class RejectReason(enum.StrEnum):
    """Bounded set of rejection classes: the label of the `rejected` metric."""

    TOO_LARGE = "too_large"
    INVALID_JSON = "invalid_json"
    INVALID_READING = "invalid_reading"
    EMPTY_BATCH = "empty_batch"
    TOO_MANY_READINGS = "too_many_readings"
    BAD_TOPIC = "bad_topic"
    UNKNOWN_TEAM = "unknown_team"
    UNKNOWN_CUFF = "unknown_cuff"
    WRONG_TEAM = "wrong_team"
    UNKNOWN_ATHLETE = "unknown_athlete"  # a reading's `athlete` override names no known athlete
    INVALID_ASSIGNMENT = "invalid_assignment"
    INVALID_STATUS = "invalid_status"
    NOT_AUTHORISED = "not_authorised"
    RETAINED = "retained"


class Rejected(GatewayError):
    """A message refused at the boundary; `detail` is the human reason published on `rejected`."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _rfc3339_only(value: object, handler: ValidatorFunctionWrapHandler) -> datetime:
    # strict pydantic would also read "1795000000" as a datetime (in seconds): SPEC says RFC 3339
    if not isinstance(value, str) or _RFC3339.fullmatch(value) is None:
        raise ValueError("must be epoch ms or an RFC 3339 date-time")
    parsed: datetime = handler(value)
    return parsed


Rfc3339 = Annotated[AwareDatetime, Strict(False), WrapValidator(_rfc3339_only)]


class ReadingIn(BaseModel):
    """One reading object as a cuff sends it (SPEC §2); unknown fields are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, allow_inf_nan=False)

    ts: Annotated[int, Field(ge=0, le=MAX_TS_MS)] | Rfc3339
    seq: Annotated[int, Field(ge=0, lt=SEQ_MODULUS)]
    pressure_mmhg: float
    elapsed_s: Annotated[float, Field(ge=0)]
    inflated: bool | None = None
    target_mmhg: Annotated[float, Field(ge=0, le=1000)] | None = None
    athlete: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    limb: Limb | None = None
    battery_pct: Annotated[float, Field(ge=0, le=100)] | None = None

    def ts_ms(self) -> int:
        ts = self.ts
        if isinstance(ts, datetime):
            return round(ts.timestamp() * 1000)
        return ts

    def is_inflated(self) -> bool:
        return self.inflated if self.inflated is not None else self.elapsed_s > 0


_BATCH = TypeAdapter(
    Annotated[list[ReadingIn], Field(min_length=1, max_length=MAX_READINGS_PER_MESSAGE)]
)

_MAX_FLOAT = 1.7976931348623157e308  # bounds at ±max float refuse ±inf, as allow_inf_nan=False


class FastReadingIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """ReadingIn's constraints for msgspec, narrowed: `ts` in epoch ms, no unknown fields.

    msgspec skips an unknown field's value more leniently than pydantic parses it (bad
    UTF-8, nesting past pydantic's depth limit: the differential test found both), so a
    payload with fields beyond these goes to pydantic, which ignores them as SPEC says.
    """

    ts: Annotated[int, msgspec.Meta(ge=0, le=MAX_TS_MS)]
    seq: Annotated[int, msgspec.Meta(ge=0, lt=SEQ_MODULUS)]
    pressure_mmhg: Annotated[float, msgspec.Meta(ge=-_MAX_FLOAT, le=_MAX_FLOAT)]
    elapsed_s: Annotated[float, msgspec.Meta(ge=0, le=_MAX_FLOAT)]
    inflated: bool | None = None
    target_mmhg: Annotated[float, msgspec.Meta(ge=0, le=1000)] | None = None
    athlete: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    limb: Limb | None = None
    battery_pct: Annotated[float, msgspec.Meta(ge=0, le=100)] | None = None

    def ts_ms(self) -> int:
        return self.ts

    def is_inflated(self) -> bool:
        return self.inflated if self.inflated is not None else self.elapsed_s > 0


class RawReading(Protocol):
    """A validated reading as decoded: `ReadingIn` (pydantic) or `FastReadingIn` (msgspec)."""

    @property
    def seq(self) -> int: ...
    @property
    def pressure_mmhg(self) -> float: ...
    @property
    def elapsed_s(self) -> float: ...
    @property
    def inflated(self) -> bool | None: ...
    @property
    def target_mmhg(self) -> float | None: ...
    @property
    def athlete(self) -> str | None: ...
    @property
    def limb(self) -> Limb | None: ...
    @property
    def battery_pct(self) -> float | None: ...
    def ts_ms(self) -> int: ...
    def is_inflated(self) -> bool: ...


_FAST_ONE = msgspec.json.Decoder(FastReadingIn)
_FAST_BATCH = msgspec.json.Decoder(
    Annotated[
        list[FastReadingIn], msgspec.Meta(min_length=1, max_length=MAX_READINGS_PER_MESSAGE)
    ]
)


def _describe(exc: ValidationError) -> tuple[RejectReason, str]:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    if first["type"] in ("json_invalid", "json_type"):
        return RejectReason.INVALID_JSON, f"not valid JSON: {first['msg']}"
    if first["type"] == "too_short" and first["loc"] == ():
        return RejectReason.EMPTY_BATCH, "empty array"
    if first["type"] == "too_long" and first["loc"] == ():
        return RejectReason.TOO_MANY_READINGS, (
            f"more than {MAX_READINGS_PER_MESSAGE} readings in one message"
        )
    if first["type"] == "model_type" or first["type"] == "model_attributes_type":
        return RejectReason.INVALID_READING, "a reading must be a JSON object"
    # a union (ts: int | datetime) reports one error per member: describe the last member's
    union_members = ("constrained-int", "function-wrap[_rfc3339_only()]")
    field_loc = tuple(p for p in first["loc"] if p not in union_members)
    same_field = [
        e for e in errors if tuple(p for p in e["loc"] if p not in union_members) == field_loc
    ]
    msg = same_field[-1]["msg"]
    loc = ".".join(str(p) for p in field_loc)
    others = len(errors) - len(same_field)
    more = f" (+{others} more)" if others else ""
    return RejectReason.INVALID_READING, f"{loc or 'reading'}: {msg}{more}"


def decode_readings(payload: bytes) -> list[RawReading]:
    """Validate a telemetry payload: one reading object or an array of up to 256."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Rejected(RejectReason.TOO_LARGE, f"payload of {len(payload)} bytes exceeds 64 KiB")
    batch = payload.lstrip()[:1] == b"["
    try:
        if batch:
            return cast("list[RawReading]", _FAST_BATCH.decode(payload))
        return [_FAST_ONE.decode(payload)]
    except (ValueError, RecursionError):  # msgspec's errors (ValueErrors, as bad UTF-8 is)
        pass  # pydantic decides, and words the rejection
    return decode_readings_strict(payload, batch=batch)


def decode_readings_strict(payload: bytes, *, batch: bool | None = None) -> list[RawReading]:
    """pydantic alone: the contract `decode_readings` must agree with (and its error texts)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Rejected(RejectReason.TOO_LARGE, f"payload of {len(payload)} bytes exceeds 64 KiB")
    if batch is None:
        batch = payload.lstrip()[:1] == b"["
    try:
        if batch:
            return cast("list[RawReading]", _BATCH.validate_json(payload))
        return [ReadingIn.model_validate_json(payload)]
    except ValidationError as exc:
        reason, detail = _describe(exc)
        raise Rejected(reason, detail) from None


def decode_status(payload: bytes) -> bool:
    """`online` / `offline`, or `{"state": "online"}`; returns True for online."""
    text = payload.strip()
    if text.startswith(b"{"):
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            raise Rejected(RejectReason.INVALID_STATUS, "status is not valid JSON") from None
        text = str(obj.get("state", "")).encode() if isinstance(obj, dict) else b""
    if text == b"online":
        return True
    if text == b"offline":
        return False
    raise Rejected(RejectReason.INVALID_STATUS, "status must be online or offline")


def echo_payload(payload: bytes) -> str:
    """The original payload for the `rejected` topic: ≤ 1 KiB, base64 if not UTF-8."""
    head = payload[:REJECTED_ECHO_BYTES]
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError:
        # a cut through a multi-byte character is still UTF-8 text: trim up to 3 bytes
        for cut in (1, 2, 3):
            if len(head) == REJECTED_ECHO_BYTES:
                try:
                    return head[:-cut].decode("utf-8")
                except UnicodeDecodeError:
                    continue
        return base64.b64encode(head).decode("ascii")


@dataclass(frozen=True, slots=True)
class Rejection:
    """What the gateway publishes on `…/rejected` and logs."""

    team: str
    cuff: str
    reason: RejectReason
    detail: str
    payload: bytes

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "reason": self.detail,
                "code": self.reason.value,
                "payload": echo_payload(self.payload),
            },
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
