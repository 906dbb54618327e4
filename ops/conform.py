"""`cuffwatch conform`: watch one device (or bridge) on a real broker, judge it by the contract.

The watcher subscribes at QoS 1 to the cuff's telemetry and status topics for the window, on a
clean session that leaves nothing queued behind it, and records each message with its QoS, its
RETAIN flag (MQTT 5: as published, through retain-as-published) and when it arrived; then a
fresh subscriber looks at what the broker holds retained. `ops.conform_rules` judges it all.

Out: a table on stdout (verdict, rule, plain words, and the contract section of every failure
and warning), progress on stderr, and with `--json FILE` the same as a report for a maker's
CI. Exit 0 when no rule fails, 1 when one does (or the broker cannot be watched), 2 on usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from core.config import ID_PATTERN, BrokerSettings, Settings
from core.topics import Topics
from gateway.decode import Rejected, decode_status
from gateway.gmqtt_compat import gmqtt_tasks
from gateway.mqtt import MqttError
from gateway.mqtt_build import link_from_settings
from ops.conform_model import (
    RULES,
    Channel,
    Finding,
    Judgement,
    Message,
    Retained,
    Verdict,
    Watch,
)
from ops.conform_rules import judge
from ops.errors import OpsError
from sim.faults import parse_duration

DEFAULT_WINDOW_S: Final = 60.0
MAX_WINDOW_S: Final = 3600.0  # a watch is held in memory; an hour is more than any check needs
# Retained messages follow the SUBACK at once; this covers a slow link to a remote broker.
RETAINED_WAIT_S: Final = 1.0
SETTLE_TIMEOUT_S: Final = 1.0  # gmqtt's own tasks end within a loop turn or two of a disconnect
REPORT_FORMAT: Final = 1  # the JSON report's `format`; raised when a field changes meaning
_ID_RE = re.compile(ID_PATTERN)
_WIDTH = 100
_VERDICT_ORDER = (Verdict.FAIL, Verdict.WARN, Verdict.SKIP, Verdict.OK)

Say = Callable[[str], None]


class ConformError(OpsError):
    """The broker could not be watched (unreachable, refused us, or dropped the connection)."""


def _window_arg(text: str) -> float:
    """An argparse type: a window of 1 s to an hour (`60`, `60s`, `2m`)."""
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 1.0 <= value <= MAX_WINDOW_S:
        raise argparse.ArgumentTypeError(f"between 1 s and {MAX_WINDOW_S / 60:g} min, not {text}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`conform`'s own flags (the caller adds `-c/--config`)."""
    p.add_argument("--team", required=True, help="the device's team id")
    p.add_argument("--cuff", required=True, help="the device's cuff id")
    p.add_argument("--for", dest="window", type=_window_arg, default=DEFAULT_WINDOW_S,
                   metavar="DURATION",
                   help="how long to watch: 60, 90s, 2m (default 60 s)")
    p.add_argument("--expect-offline", action="store_true",
                   help="check the last will: cut the device's power or network during the "
                   "window (conform says when), then restore it to check its restart")
    p.add_argument("--json", type=Path, metavar="FILE",
                   help="also write the report as JSON to FILE (for a CI)")
    p.add_argument("--broker", metavar="URL",
                   help="mqtt://host:1883 or mqtts://host:8883 (default: the config's "
                   "broker.url; its TLS files and password are used either way)")
    p.add_argument("--username",
                   help="broker user allowed to read the cuff's topics (password from "
                   "CUFFWATCH_BROKER__PASSWORD)")


# -- watching ------------------------------------------------------------------------------------


class _Progress:
    """Tells the person at the device what happened, as it happens (the last-will step)."""

    def __init__(self, say: Say, expect_offline: bool, start: float) -> None:
        self._say = say
        self._expect = expect_offline
        self._start = start
        self._online = False
        self._cut = False

    def saw(self, message: Message) -> None:
        if not self._expect or message.channel is not Channel.STATUS:
            return
        try:
            online = decode_status(message.payload)
        except Rejected:
            return
        at = message.mono_s - self._start
        if online and self._cut:
            self._say(f"conform: the device is back (`online` at {at:.1f} s)")
            self._cut = False
        elif not online and self._online:
            self._say(f"conform: `offline` arrived at {at:.1f} s: restore the device's power or "
                      "network now, to check its restart")
            self._cut = True
        self._online = online


async def _nothing_to_wait_for(_position: int) -> None:
    """Nothing of a watcher's needs to be durable before its PUBACK."""


def _client_id(role: str) -> str:
    return f"cuffwatch-conform-{uuid.uuid4().hex[:8]}-{role}"


async def watch(
    broker: BrokerSettings, topic_root: str, team: str, cuff: str, *, window_s: float,
    expect_offline: bool = False, username: str | None = None, say: Say = lambda _text: None,
) -> Watch:
    """Record everything on the cuff's telemetry and status topics for `window_s`.

    Raises ConformError when the broker cannot be reached, refuses us, or drops the connection
    before the window is over (a watch with a hole in it would blame the device).
    """
    topics = Topics(topic_root)
    telemetry, status = topics.telemetry(team, cuff), topics.status(team, cuff)
    messages: list[Message] = []
    start = time.monotonic()
    progress = _Progress(say, expect_offline, start)

    def on_message(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        channel = {telemetry: Channel.TELEMETRY, status: Channel.STATUS}.get(topic)
        if channel is None:
            return
        message = Message(channel, payload, qos, retain, time.monotonic(),
                          time.time_ns() // 1_000_000)
        messages.append(message)
        progress.saw(message)

    link = link_from_settings(
        broker, client_id=_client_id("watch"), username=username, clean_start=True,
        session_expiry_s=0, retain_as_published=True, subscriptions=[telemetry, status],
        on_message_fast=on_message, on_flush=lambda: None, wait_durable=_nothing_to_wait_for,
    )
    before = gmqtt_tasks()
    try:
        try:
            try:
                await link.connect(retry=False)
            except MqttError as exc:
                raise ConformError(str(exc)) from None
            say(f"conform: watching {telemetry} and …/status for {window_s:g} s")
            if expect_offline:
                say("conform: once the device is sending, cut its power or network (pull the "
                    "plug, or drop its Wi-Fi), then restore it: conform waits for its `offline` "
                    "last will and its return until the window ends")
            lost = await link.lost_within(window_s)
        finally:
            await link.disconnect()
        if lost:
            raise ConformError(
                f"lost the connection to the broker {time.monotonic() - start:.1f} s into the "
                "window: the watch is incomplete, run it again")
        retained = await _retained(broker, telemetry, status, username)
    finally:
        await _settle(before)
    return Watch(
        messages=tuple(messages), window_s=window_s, start_mono_s=start,
        expect_offline=expect_offline, retain_flag_live=broker.protocol == 5,
        retained_at_end=retained, telemetry_topic=telemetry, status_topic=status,
    )


async def _retained(
    broker: BrokerSettings, telemetry: str, status: str, username: str | None
) -> Retained:
    """What a new subscriber gets retained on the two topics (what a starting gateway sees)."""
    found: dict[str, bytes] = {}

    def on_message(topic: str, payload: bytes, _qos: int, retain: bool) -> None:
        if retain:  # sent because of our subscription: the broker's retained copy
            found[topic] = payload

    link = link_from_settings(
        broker, client_id=_client_id("retained"), username=username, clean_start=True,
        session_expiry_s=0, subscriptions=[telemetry, status], on_message_fast=on_message,
        on_flush=lambda: None, wait_durable=_nothing_to_wait_for,
    )
    try:
        await link.connect(retry=False)
        await asyncio.sleep(RETAINED_WAIT_S)
    except MqttError as exc:
        raise ConformError(str(exc)) from None
    finally:
        await link.disconnect()
    return Retained(status=found.get(status), telemetry=telemetry in found)


async def _settle(before: set[asyncio.Task[Any]]) -> None:
    """Let the gmqtt tasks our disconnects started or cancelled finish."""
    ending = {t for t in gmqtt_tasks() if t not in before or t.cancelling()}
    if ending:
        await asyncio.wait(ending, timeout=SETTLE_TIMEOUT_S)


# -- reporting -----------------------------------------------------------------------------------


def _endpoint(broker: BrokerSettings) -> str:
    """The broker as the report names it: scheme, host and port, never credentials."""
    return f"{'mqtts' if broker.tls else 'mqtt'}://{broker.host}:{broker.port}"


def render(judgement: Judgement, *, team: str, cuff: str, broker: BrokerSettings,
           window_s: float) -> str:
    """The human table: one row per rule, the contract section under each failure or warning."""
    seen = judgement.observed
    lines = [
        f"cuffwatch conform {team}/{cuff}: {window_s:g} s on {_endpoint(broker)} "
        f"(MQTT {'5' if broker.protocol == 5 else '3.1.1'}): {seen['telemetry_messages']} "
        f"telemetry message(s), {seen['readings']} reading(s), {seen['status_messages']} "
        "status message(s)",
        "",
        f"{'verdict':<8} {'rule':<19} what it found",
    ]
    indent = " " * 28
    for f in judgement.findings:
        text = textwrap.wrap(f.detail, _WIDTH - len(indent)) or [""]
        lines.append(f"{f.verdict.value:<8} {f.rule.id:<19} {text[0]}")
        lines.extend(indent + more for more in text[1:])
        if f.verdict in (Verdict.FAIL, Verdict.WARN):
            lines.append(f"{indent}see {f.rule.contract}")
    lines += ["", _summary_line(judgement.findings)]
    return "\n".join(lines)


def _summary_line(findings: tuple[Finding, ...]) -> str:
    by = {v: [f.rule.id for f in findings if f.verdict is v] for v in _VERDICT_ORDER}
    failed = by[Verdict.FAIL]
    head = (f"FAIL: {len(failed)} rule(s) broken ({', '.join(failed)})" if failed
            else "PASS: no rule broken")
    rest = [f"{len(by[v])} {name}" for v, name in
            ((Verdict.WARN, "warning(s)"), (Verdict.SKIP, "skipped"), (Verdict.OK, "ok"))
            if by[v]]
    return f"{head}; {', '.join(rest)}" if rest else head


def report(judgement: Judgement, *, team: str, cuff: str, topic_root: str,
           broker: BrokerSettings, window_s: float, expect_offline: bool,
           started_at: datetime) -> dict[str, Any]:
    """The JSON report: the verdicts and what was seen, nothing secret."""
    return {
        "format": REPORT_FORMAT,
        "tool": "cuffwatch conform",
        "passed": judgement.passed,
        "team": team,
        "cuff": cuff,
        "topic_root": topic_root,
        "broker": _endpoint(broker),
        "protocol": broker.protocol,
        "window_s": window_s,
        "expect_offline": expect_offline,
        "started_at": started_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "verdicts": {v.value: sum(1 for f in judgement.findings if f.verdict is v)
                     for v in Verdict},
        "observed": judgement.observed,
        "rules": [f.to_dict() for f in judgement.findings],
    }


# -- the command ---------------------------------------------------------------------------------


def _usage(problem: str) -> int:
    print(f"conform: {problem}", file=sys.stderr)
    return 2


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    """`cuffwatch conform`: the exit status (0 passed, 1 a rule failed, 2 usage)."""
    for flag, value in (("--team", args.team), ("--cuff", args.cuff)):
        if not _ID_RE.match(value):
            return _usage(f"{flag} {value!r}: ids are 1–64 characters of A-Z a-z 0-9 _ -")
    if args.json is not None and not args.json.parent.is_dir():
        return _usage(f"--json {args.json}: no directory {args.json.parent}")
    broker = settings.broker
    if args.broker is not None:
        try:
            BrokerSettings(url=args.broker)
        except ValueError:
            return _usage(f"--broker {args.broker}: must look like mqtt://host:1883")
        broker = broker.model_copy(update={"url": args.broker})

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    started_at = datetime.now(UTC)
    seen = asyncio.run(watch(
        broker, settings.topic_root, args.team, args.cuff, window_s=args.window,
        expect_offline=args.expect_offline, username=args.username, say=say,
    ))
    judgement = judge(seen)
    print(render(judgement, team=args.team, cuff=args.cuff, broker=broker,
                 window_s=args.window))
    if args.json is not None:
        data = report(judgement, team=args.team, cuff=args.cuff, topic_root=settings.topic_root,
                      broker=broker, window_s=args.window, expect_offline=args.expect_offline,
                      started_at=started_at)
        args.json.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n",
                             encoding="utf-8")
    return 0 if judgement.passed else 1


__all__ = ["RULES", "ConformError", "add_arguments", "render", "report", "run_command", "watch"]
