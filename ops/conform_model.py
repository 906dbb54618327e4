"""`cuffwatch conform`'s vocabulary: what the watcher saw, the rules, and their verdicts.

Plain frozen data, shared by the watcher (ops/conform.py), the stream of readings it saw
(ops/conform_stream.py) and the rules that judge it (ops/conform_rules.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final

from gateway.decode import MAX_PAYLOAD_BYTES, MAX_READINGS_PER_MESSAGE

__all__ = [
    "CONTRACT_DOC",
    "RULES",
    "Channel",
    "Finding",
    "Judgement",
    "Message",
    "Retained",
    "Rule",
    "Verdict",
    "Watch",
]

CONTRACT_DOC: Final = "docs/contract.md"


class Verdict(enum.StrEnum):
    """One rule's outcome, worded as `cuffwatch check` words its lines."""

    OK = "ok"
    FAIL = "FAIL"
    WARN = "warn"
    SKIP = "skip"


class Channel(enum.StrEnum):
    """Which of the cuff's topics a message came on."""

    TELEMETRY = "telemetry"
    STATUS = "status"


@dataclass(frozen=True, slots=True)
class Message:
    """One message as the watcher received it."""

    channel: Channel
    payload: bytes
    qos: int
    retain: bool
    mono_s: float  # the watcher's monotonic clock at receipt
    wall_ms: int  # the watcher's wall clock at receipt (epoch ms): the broker host's, ideally


@dataclass(frozen=True, slots=True)
class Retained:
    """What a fresh subscriber found retained on the cuff's topics at the end of the window."""

    status: bytes | None
    telemetry: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Watch:
    """Everything the watcher saw of one device in one window."""

    messages: tuple[Message, ...]
    window_s: float
    start_mono_s: float = 0.0  # when the window began, on the messages' monotonic clock
    expect_offline: bool = False  # the person (or test) cuts the device off during the window
    # MQTT 5 retain-as-published: live messages carry their publisher's RETAIN flag (on 3.1.1
    # the broker clears it, and only `retained_at_end` tells what the device retained)
    retain_flag_live: bool = False
    retained_at_end: Retained | None = None  # None: not looked at
    telemetry_topic: str = "telemetry"
    status_topic: str = "status"


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule of the contract that a device must keep, and the section that states it."""

    id: str
    checks: str  # what it checks, in a few words
    anchor: str  # the section of docs/contract.md

    @property
    def contract(self) -> str:
        """The link to the section that states the rule."""
        return f"{CONTRACT_DOC}#{self.anchor}"


@dataclass(frozen=True, slots=True)
class Finding:
    """A rule's verdict on a watch: plain words, and how many messages or readings broke it."""

    rule: Rule
    verdict: Verdict
    detail: str
    count: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The finding as the JSON report holds it."""
        return {
            "rule": self.rule.id,
            "verdict": self.verdict.value,
            "checks": self.rule.checks,
            "detail": self.detail,
            "count": self.count,
            "contract": self.rule.contract,
        }


_READING = "the-reading-object"
RULES: Final = (
    Rule("payload", "every telemetry message decodes as the gateway decodes it", _READING),
    Rule("message_size", f"messages of at most {MAX_PAYLOAD_BYTES // 1024} KiB", _READING),
    Rule("array_size", f"arrays of 1 to {MAX_READINGS_PER_MESSAGE} readings", _READING),
    Rule("qos", "telemetry and status published with QoS 1", "topics"),
    Rule("telemetry_retained", "telemetry never retained", "retained-messages"),
    Rule("seq", "seq +1 per reading, wrapping at 2^32", _READING),
    Rule("device_time", "device time never goes back nor jumps ahead", "clock-trouble"),
    Rule("clock_offset", "device clock close to the broker host's", "clock-trouble"),
    Rule("cadence", "a steady rate, no silence while online", "sending-readings"),
    Rule("elapsed", "elapsed_s counts a bout from 0 with device time", _READING),
    Rule("deflation", "elapsed_s 0 when deflated; inflated agreeing", _READING),
    Rule("pressure", "pressures in the sensor's plausible range",
         "what-is-rejected-and-what-is-stored"),
    Rule("battery", "battery_pct reported", _READING),
    Rule("status", "online on every connect, valid status payloads", "status"),
    Rule("status_retained", "status retained on the broker", "status"),
    Rule("last_will", "offline arrives as the last will when cut off", "status"),
    Rule("restart", "a restart or reconnect comes back as SPEC §4 says", "duplicates"),
)


@dataclass(frozen=True, slots=True)
class Judgement:
    """The findings, one per rule of RULES in their order, and what was observed, counted."""

    findings: tuple[Finding, ...]
    observed: dict[str, int]

    @property
    def passed(self) -> bool:
        """No rule failed (warnings and skips pass)."""
        return all(f.verdict is not Verdict.FAIL for f in self.findings)
