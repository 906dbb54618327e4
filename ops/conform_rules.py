"""`cuffwatch conform`'s judge: what one device sent, in; a verdict per contract rule, out.

Pure, like httpcore's pool decisions: no broker, no clock, no asyncio. The watcher
(ops/conform.py) records every message on the cuff's telemetry and status topics (payload,
QoS, RETAIN flag, when it arrived by the watcher's monotonic and wall clocks) and what a fresh
subscriber found retained at the end; `judge` reads it once (ops/conform_stream.py: decoded
with the gateway's own decoder, deduplicated, split at restarts) and returns one `Finding` per
rule of `RULES`, each pointing at the section of docs/contract.md that it checks.

Verdicts: `ok`; `FAIL` (the device breaks the contract: the gateway would reject, drop or
misread what it sends, or raise an alert it should not); `warn` (it works, but something is
lost or off: no battery level, a clock minutes out); `skip` (the window did not show it, and
the detail says what would: a deflation, a cut of power).

One fault is reported by the rule it breaks, not by every rule downstream of it: the readings
of an over-long array are still checked reading by reading (the array fails `array_size`
alone), a restart (`seq` back to 0) starts a new run for `seq`, `device_time` and `elapsed`,
and a redelivered message (QoS 1 repeats a reading exactly) is counted, never a fault.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from alerts.clock import MAX_CADENCE_MS
from alerts.evidence import NEW_BOUT_SLACK_MS
from core.config import AlertSettings
from core.model import PLAUSIBLE_MAX_MMHG, PLAUSIBLE_MIN_MMHG
from core.seq import SEQ_MODULUS, next_seq, seq_went_back
from gateway.decode import (
    MAX_PAYLOAD_BYTES,
    MAX_READINGS_PER_MESSAGE,
    Rejected,
    RejectReason,
    decode_status,
)
from ops.conform_model import RULES, Finding, Judgement, Verdict, Watch
from ops.conform_stream import SALVAGED, Problems, Sample, Stream, fmt_s, kib

__all__ = ["judge"]

Outcome = tuple[Verdict, str, int]  # a rule's verdict, its words, how many broke it

_DEFAULTS = AlertSettings()
# The gateway's defaults that decide what a device's timing costs (SPEC §2, §3).
STALE_AFTER_S: Final = _DEFAULTS.stale_after_s  # an inflated cuff silent this long: cuff_offline
MAX_CLOCK_SKEW_S: Final = _DEFAULTS.max_clock_skew_s  # further off: device time is ignored
MAX_BACKLOG_S: Final = _DEFAULTS.max_backlog_s  # older: stored at receive time
# "typically 1 to 20 per second" (docs/contract.md, Sending readings): faster is no use to the
# rules (their shortest window is 2 s) and costs the broker; batching is the answer.
FAST_RATE_HZ: Final = 20.0
# A clock further off than this is worth setting: SNTP keeps one within tens of ms, and stored
# times (dashboards, analysts) are the device's own.
CLOCK_WARN_MS: Final = 2000
# elapsed_s may drift from device time by this share (and NEW_BOUT_SLACK_MS, for whole-second
# counters) over a bout before over_time fires visibly early or late.
ELAPSED_RATE_TOLERANCE: Final = 0.1
# A bout's elapsed_s is compared with device time only over at least this long.
ELAPSED_MIN_SPAN_S: Final = 1.0
# A reading that arrives this much later than live ones was held back (an outage's backlog).
HELD_BACK_MS: Final = 1000


def payload(st: Stream) -> Outcome:
    """Rule `payload`: every telemetry message decodes as the gateway decodes it."""
    if not st.telemetry:
        return (Verdict.FAIL, f"no telemetry arrived on {st.watch.telemetry_topic} in "
                f"{fmt_s(st.watch.window_s)}: is the device publishing under this team and "
                "cuff id, to this broker and topic root?", 0)
    problems = Problems()
    for i, exc in st.rejected:
        if exc.reason not in (*SALVAGED, RejectReason.EMPTY_BATCH):
            problems.add(f"{exc.reason.value} {st.at(st.messages[i].mono_s)}: "
                         f"{exc.detail}")
    if problems:
        return (Verdict.FAIL, problems.words(
            "The gateway rejects such a message whole (code on `…/rejected`) and stores none "
            "of its readings"), problems.count)
    return (Verdict.OK, f"{len(st.telemetry)} message(s), {len(st.samples)} distinct "
            "reading(s): every one valid", 0)


def message_size(st: Stream) -> Outcome:
    """Rule `message_size`: messages of at most 64 KiB."""
    if not st.telemetry:
        return Verdict.SKIP, "no telemetry", 0
    problems = Problems()
    for i, exc in st.rejected:
        if exc.reason is RejectReason.TOO_LARGE:
            problems.add(f"{kib(len(st.messages[i].payload))} "
                         f"{st.at(st.messages[i].mono_s)}")
    if problems:
        return (Verdict.FAIL, problems.words(
            f"A message is at most {MAX_PAYLOAD_BYTES // 1024} KiB: the gateway refuses a "
            "larger one unread (`too_large`); split it into several arrays"), problems.count)
    return Verdict.OK, f"largest message {kib(st.largest_message)}", 0


def array_size(st: Stream) -> Outcome:
    """Rule `array_size`: arrays of 1 to 256 readings."""
    if not st.telemetry:
        return Verdict.SKIP, "no telemetry", 0
    problems = Problems()
    for i, exc in st.rejected:
        at = st.at(st.messages[i].mono_s)
        if exc.reason is RejectReason.TOO_MANY_READINGS:
            n = sum(1 for s in st.samples if s.message == i)
            problems.add(f"an array of {n} readings {at}")
        elif exc.reason is RejectReason.EMPTY_BATCH:
            problems.add(f"an empty array {at}")
    if problems:
        return (Verdict.FAIL, problems.words(
            f"An array holds 1 to {MAX_READINGS_PER_MESSAGE} readings: the gateway refuses "
            "the whole message and every reading in it; send a long backlog as several "
            "arrays"), problems.count)
    if not st.largest_array:
        return Verdict.OK, "one reading per message (no arrays)", 0
    return Verdict.OK, f"largest array {st.largest_array} readings", 0


def qos(st: Stream) -> Outcome:
    """Rule `qos`: telemetry and status published with QoS 1."""
    low = [m for m in st.messages if m.qos < 1]
    if not st.messages:
        return Verdict.SKIP, "nothing arrived", 0
    if low:
        kinds = sorted({m.channel.value for m in low})
        return (Verdict.FAIL, f"{len(low)} of {len(st.messages)} message(s) arrived at QoS "
                f"0 ({', '.join(kinds)}). Publish telemetry and status with QoS 1: a QoS 0 "
                "reading lost on the way is never sent again", len(low))
    return Verdict.OK, f"all {len(st.messages)} message(s) at QoS 1", 0


def telemetry_retained(st: Stream) -> Outcome:
    """Rule `telemetry_retained`: telemetry never retained."""
    flagged = [i for i in st.telemetry if st.messages[i].retain]
    end = st.watch.retained_at_end
    if flagged or (end is not None and end.telemetry):
        n = len(flagged) or 1
        return (Verdict.FAIL, f"a reading is retained on {st.watch.telemetry_topic}. Publish "
                "telemetry without the retain flag: the gateway rejects a retained reading "
                "(`retained`), which the broker would hand to every new subscriber long "
                "after its moment; clear it with an empty retained message", n)
    if not st.telemetry:
        return Verdict.SKIP, "no telemetry", 0
    how = "no retain flag" if st.watch.retain_flag_live else "none left retained on the broker"
    if end is None and not st.watch.retain_flag_live:
        return Verdict.SKIP, "not looked at (no retained-message check ran)", 0
    return Verdict.OK, how, 0


def seq(st: Stream) -> Outcome:
    """Rule `seq`: seq +1 per reading, wrapping at 2^32."""
    if len(st.samples) < 2:
        return Verdict.SKIP, "fewer than two readings", 0
    problems = Problems()
    wrapped = False
    for a, b in st.pairs():
        if b.seq == next_seq(a.seq):
            wrapped |= b.seq == 0
            continue
        if st.holes_between(a, b):
            continue  # readings lost in an undecodable message: `payload` says so
        at = st.at(b.mono_s)
        if b.seq == a.seq:
            problems.add(f"seq {b.seq} twice with different readings {at}")
        elif seq_went_back(b.seq, a.seq):
            problems.add(f"seq went back from {a.seq} to {b.seq} {at}")
        else:
            missing = (b.seq - a.seq - 1) % SEQ_MODULUS
            problems.add(f"seq went from {a.seq} to {b.seq} {at} ({missing} missing)",)
    if problems:
        return (Verdict.FAIL, problems.words(
            "seq goes up by exactly 1 per reading (to 0 after 2^32 − 1, or from 0 after a "
            "restart): a gap is read as lost readings, a step back while a bout goes on "
            "raises sensor_fault"), problems.count)
    words = f"{len(st.samples)} reading(s), +1 each"
    if wrapped:
        words += ", wrapping from 2^32 − 1 to 0"
    if len(st.runs) > 1:
        words += f" ({len(st.runs) - 1} restart(s) from 0)"
    if st.duplicates:
        words += (f"; {st.duplicates} exact repeat(s), QoS 1 redeliveries the gateway "
                  "drops as duplicates")
    return Verdict.OK, words, 0


def device_time(st: Stream) -> Outcome:
    """Rule `device_time`: device time never goes back nor jumps ahead."""
    if len(st.samples) < 2:
        return Verdict.SKIP, "fewer than two readings", 0
    problems = st.time_problems
    if problems:
        return (Verdict.FAIL, problems.words(
            "Device time only moves forward, with the readings' real spacing; keep a "
            "monotonic base and slew (not step) the clock to SNTP. The gateway re-anchors "
            "its rule time on every such step and stores the readings at a wrong time"),
            problems.count)
    step = f"; readings {st.cadence_ms:.0f} ms apart" if st.cadence_ms else ""
    return Verdict.OK, f"never back, never ahead of real time{step}", 0


def clock_offset(st: Stream) -> Outcome:
    """Rule `clock_offset`: device clock close to the broker host's."""
    if not st.samples:
        return Verdict.SKIP, "no readings", 0
    offset_ms = st.offset_ms
    late = [s for s in st.samples if st.lag_ms(s) > MAX_BACKLOG_S * 1000]
    side = "ahead of" if offset_ms > 0 else "behind"
    off = f"device clock {fmt_s(abs(offset_ms) / 1000)} {side} this computer's"
    if abs(offset_ms) > MAX_CLOCK_SKEW_S * 1000:
        return (Verdict.FAIL, f"{off}: beyond max_clock_skew_s ({MAX_CLOCK_SKEW_S:g} s) the "
                "gateway ignores device time, stores readings at their receive time and "
                "flags clock_skew_s. Set the clock by SNTP (or from the bridge's host)", 1)
    if late:
        return (Verdict.WARN, f"{len(late)} reading(s) delivered more than max_backlog_s "
                f"({MAX_BACKLOG_S:g} s) after they were taken: stored at receive time",
                len(late))
    if abs(offset_ms) > CLOCK_WARN_MS:
        return (Verdict.WARN, f"{off}: the gateway copes, but stored times are off by as "
                "much; set the clock by SNTP (measured against this computer: run conform on "
                "the broker's host or one kept by NTP)", 1)
    return Verdict.OK, f"{off} (within {CLOCK_WARN_MS / 1000:g} s)", 0


def cadence(st: Stream) -> Outcome:
    """Rule `cadence`: a steady rate, no silence while online."""
    if len(st.samples) < 2 or st.cadence_ms is None:
        return Verdict.SKIP, "fewer than two readings", 0
    rate = 1000 / st.cadence_ms
    every = f"one reading every {st.cadence_ms / 1000:.2f} s ({rate:.1f}/s)"
    if st.cadence_ms > MAX_CADENCE_MS:
        return (Verdict.FAIL, f"{every}: send at least one reading per "
                f"{MAX_CADENCE_MS / 1000:g} s, or an inflated cuff goes stale "
                f"(cuff_offline after stale_after_s, {STALE_AFTER_S:g} s)", 1)
    silences = st.silences()
    longest = max(silences, default=(0.0, False, 0.0))
    if longest[0] > STALE_AFTER_S:
        gap, inflated, at = longest
        where = f"{fmt_s(gap)} without telemetry {st.at(at)}, status still online"
        if inflated:
            return (Verdict.FAIL, f"{where}, while inflated: the gateway raises cuff_offline "
                    f"after stale_after_s ({STALE_AFTER_S:g} s)", 1)
        return (Verdict.WARN, f"{where} (deflated, so no alert): a cuff sends all the time "
                "it is online", 1)
    messages_rate = len(st.telemetry) / st.watch.window_s if st.watch.window_s > 0 else 0.0
    if rate > FAST_RATE_HZ or messages_rate > FAST_RATE_HZ:
        return (Verdict.WARN, f"{every}, {messages_rate:.1f} messages/s: more than the "
                f"{FAST_RATE_HZ:g}/s the gateway's rules need; batch readings into arrays", 1)
    return (Verdict.OK, f"{every}; longest silence {fmt_s(longest[0])}", 0)


def elapsed(st: Stream) -> Outcome:
    """Rule `elapsed`: elapsed_s counts a bout from 0 with device time."""
    problems = Problems()
    checked = 0
    for run in st.runs:
        start: Sample | None = None  # the first sample of the current stretch of a bout
        prev: Sample | None = None
        for s in run:
            stretch_ends = prev is None or not (prev.inflated and s.inflated)
            if prev is not None and prev.inflated and s.inflated:
                troubled = (s.message, s.seq) in st.troubled
                if s.elapsed < prev.elapsed:
                    bout_start = s.ts_ms - s.elapsed * 1000
                    if troubled or bout_start >= prev.ts_ms - NEW_BOUT_SLACK_MS:
                        stretch_ends = True  # a new bout (the deflation fell between)
                    else:
                        problems.add(f"went back from {prev.elapsed:g} to {s.elapsed:g} s "
                                     f"{st.at(s.mono_s)}, inside a bout")
                        stretch_ends = True
                elif troubled:
                    stretch_ends = True
            elif prev is not None and not prev.inflated and s.inflated:
                step_s = (s.ts_ms - prev.ts_ms) / 1000
                if ((s.message, s.seq) not in st.troubled
                        and s.elapsed > step_s + NEW_BOUT_SLACK_MS / 1000):
                    problems.add(f"already {s.elapsed:g} s at inflation {st.at(s.mono_s)}, "
                                 f"{fmt_s(step_s)} after a deflated reading")
            if stretch_ends:
                checked += _judge_stretch(st, start, prev, problems)
                start = s if s.inflated else None
            prev = s
        checked += _judge_stretch(st, start, prev, problems)
    if problems:
        return (Verdict.FAIL, problems.words(
            "elapsed_s counts seconds since this bout's inflation, from 0, at the pace of "
            "device time: over_time alerts and bout records are built on it; going back "
            "inside a bout raises sensor_fault"), problems.count)
    if not checked:
        return (Verdict.SKIP, "no inflated stretch of a second or more: inflate the cuff "
                "while conform watches", 0)
    return Verdict.OK, f"counted with device time over {checked} stretch(es) of a bout", 0


def _judge_stretch(st: Stream, start: Sample | None, end: Sample | None,
                   problems: Problems) -> int:
    """Compare elapsed_s with device time over one stretch of a bout; 1 if judged."""
    if start is None or end is None or not end.inflated or end is start:
        return 0
    span_s = (end.ts_ms - start.ts_ms) / 1000
    if span_s < ELAPSED_MIN_SPAN_S:
        return 0
    rose = end.elapsed - start.elapsed
    if abs(rose - span_s) > max(NEW_BOUT_SLACK_MS / 1000, ELAPSED_RATE_TOLERANCE * span_s):
        problems.add(f"rose {rose:g} s while device time moved {span_s:.1f} s "
                     f"{st.at(start.mono_s)}–{end.mono_s - st.watch.start_mono_s:.1f} s")
    return 1


def deflation(st: Stream) -> Outcome:
    """Rule `deflation`: elapsed_s 0 when deflated; inflated agreeing."""
    if not st.samples:
        return Verdict.SKIP, "no readings", 0
    problems = Problems()
    stretch: list[Sample] = []  # consecutive readings with the fault: one problem each
    for s in [*st.samples, None]:
        if s is not None and s.inflated_field is False and s.elapsed > 0:
            stretch.append(s)
            continue
        if stretch:
            first = stretch[0]
            problems.add(f"{len(stretch)} reading(s) say `inflated: false` with elapsed_s "
                         f"{first.elapsed:g}, from {st.at(first.mono_s)}", len(stretch))
            stretch = []
    deflations = sum(1 for a, b in st.pairs() if a.inflated and not b.inflated)
    inflations = sum(1 for a, b in st.pairs() if not a.inflated and b.inflated)
    if problems:
        return (Verdict.FAIL, problems.words(
            "elapsed_s is 0 while deflated, and back to 0 at each deflation; `inflated` "
            "(optional) must agree with it. The gateway ends a bout when either says "
            "deflated"), problems.count)
    if not deflations:
        state = "inflated" if st.samples[-1].inflated else "deflated"
        return (Verdict.SKIP, f"no deflation seen ({inflations} inflation(s), the last "
                f"reading {state}): inflate and deflate the cuff while conform watches, or "
                "watch longer", 0)
    return (Verdict.OK, f"{deflations} deflation(s), elapsed_s back to 0 each time", 0)


def pressure(st: Stream) -> Outcome:
    """Rule `pressure`: pressures in the sensor's plausible range."""
    if not st.samples:
        return Verdict.SKIP, "no readings", 0
    odd = [s for s in st.samples
           if not PLAUSIBLE_MIN_MMHG <= s.pressure <= PLAUSIBLE_MAX_MMHG]
    low = min(s.pressure for s in st.samples)
    high = max(s.pressure for s in st.samples)
    if odd:
        return (Verdict.WARN, f"{len(odd)} reading(s) outside {PLAUSIBLE_MIN_MMHG:g}.."
                f"{PLAUSIBLE_MAX_MMHG:g} mmHg (e.g. {odd[0].pressure:g}): stored, but each "
                "raises sensor_fault; is the sensor calibrated, in mmHg?", len(odd))
    return Verdict.OK, f"{low:g} to {high:g} mmHg", 0


def battery(st: Stream) -> Outcome:
    """Rule `battery`: battery_pct reported."""
    if not st.samples:
        return Verdict.SKIP, "no readings", 0
    levels = [s.battery for s in st.samples if s.battery is not None]
    if not levels:
        return (Verdict.WARN, "battery_pct never sent: it is optional, but without it staff "
                "get no battery_low warning before a cuff dies mid-bout", 0)
    part = "" if len(levels) == len(st.samples) else (
        f" (in {len(levels)} of {len(st.samples)} readings)")
    return Verdict.OK, f"battery_pct {levels[0]:g} → {levels[-1]:g} %{part}", 0


def status(st: Stream) -> Outcome:
    """Rule `status`: online on every connect, valid status payloads."""
    if not st.statuses:
        return (Verdict.FAIL, f"no status on {st.watch.status_topic}: publish `online` "
                "(retained, QoS 1) on every connect and set `offline` as the last will; "
                "the gateway's cuff_offline alert needs it", 0)
    problems = Problems()
    if st.bad_status:
        problems.add(f"{st.bad_status.count} invalid status payload(s): "
                     + "; ".join(st.bad_status.lines), st.bad_status.count)
    online: bool | None = None
    by_message = dict(st.statuses)
    while_offline = 0
    first_at = 0.0
    for i, m in enumerate(st.messages):
        if i in by_message:
            online = by_message[i] if by_message[i] is not None else online
        elif online is False:
            while_offline += 1
            first_at = first_at or m.mono_s
    if while_offline:
        problems.add(f"{while_offline} telemetry message(s) while the status said offline, "
                     f"the first {st.at(first_at)}", while_offline)
    if problems:
        return (Verdict.FAIL, problems.words(
            "The status is `online` or `offline` (or {\"state\": \"online\"}), and the "
            "device publishes `online` on every connect, before its readings"),
            problems.count)
    words = [("online" if v else "offline") for _, v in st.statuses]
    shown = " → ".join(words[:6]) + (" → …" if len(words) > 6 else "")
    return Verdict.OK, f"{len(words)} status message(s): {shown}", 0


def status_retained(st: Stream) -> Outcome:
    """Rule `status_retained`: status retained on the broker."""
    if not st.statuses:
        return Verdict.SKIP, "no status to check (see `status`)", 0
    problems = Problems()
    if st.watch.retain_flag_live:
        for i, online in st.statuses:
            m = st.messages[i]
            if not m.retain:
                word = {True: "online", False: "offline", None: "a status"}[online]
                problems.add(f"`{word}` published without the retain flag {st.at(m.mono_s)}")
    end = st.watch.retained_at_end
    last = next((v for _, v in reversed(st.statuses) if v is not None), None)
    if end is not None:
        if end.status is None:
            problems.add("no status retained on the broker at the end")
        else:
            try:
                held: bool | None = decode_status(end.status)
            except Rejected:
                held = None
            if last is not None and held is not None and held != last:
                problems.add(f"the broker holds `{'online' if held else 'offline'}` "
                             f"retained, but the last status was "
                             f"`{'online' if last else 'offline'}`")
    if problems:
        return (Verdict.FAIL, problems.words(
            "Publish the status, and set the last will, retained: a gateway that starts "
            "(or restarts) learns from the retained status whether the cuff is online"),
            problems.count)
    if end is None and not st.watch.retain_flag_live:
        return Verdict.SKIP, "not looked at (no retained-message check ran)", 0
    return Verdict.OK, "retained, and the broker holds the latest", 0


def last_will(st: Stream) -> Outcome:
    """Rule `last_will`: offline arrives as the last will when cut off."""
    if not st.watch.expect_offline:
        return (Verdict.SKIP, "not tried: run with --expect-offline and cut the device's "
                "power or network during the window", 0)
    events = st.will_events()
    if not events:
        return (Verdict.FAIL, f"no `offline` on {st.watch.status_topic} after the device was "
                "cut off. Set `offline` (QoS 1, retained) as the MQTT last will, so that the "
                "broker announces a cuff that vanishes: an inflated cuff that goes offline "
                "raises cuff_offline at once. (If it was not cut off during the window, run "
                "again and cut it.)", 1)
    first = st.messages[events[0]]
    before = [s for s in st.samples if s.message < events[0]]
    after = f", {fmt_s(first.mono_s - before[-1].mono_s)} after its last reading" if (
        before) else ""
    return Verdict.OK, f"`offline` arrived {st.at(first.mono_s)}{after}", 0


def restart(st: Stream) -> Outcome:
    """Rule `restart`: a restart or reconnect comes back as SPEC §4 says."""
    problems = Problems()
    notes: list[str] = []
    warn = Problems()
    online_at = [i for i, state in st.statuses if state is True]
    earlier: dict[tuple[int, int], tuple[object, ...]] = {}
    for k, run in enumerate(st.runs):
        if k:
            a, b = st.runs[k - 1][-1], run[0]
            at = st.at(b.mono_s)
            if a.inflated and b.inflated and b.elapsed >= a.elapsed:
                problems.add(f"seq started again from 0 {at} while elapsed_s went on "
                             f"({a.elapsed:g} → {b.elapsed:g} s): the gateway raises "
                             "sensor_fault")
            if not any(a.message < i < b.message for i in online_at):
                problems.add(f"seq started again from 0 {at} (after {a.seq}) without an "
                             "`online` before it: a restarted device publishes `online` on "
                             "connect, and a running one wraps seq only after 2^32 − 1")
            repeated = sum(1 for s in run if (s.seq, s.ts_ms) in earlier
                           and earlier[(s.seq, s.ts_ms)] != s.values)
            if repeated:
                warn.add(f"{repeated} reading(s) after the restart repeat the seq and device "
                         "time of earlier ones: stored over them (a clock that survives "
                         "the restart avoids it)", repeated)
            notes.append(f"restarted {at}: seq from 0"
                         + (", a new bout" if b.elapsed <= a.elapsed or not a.inflated
                            else ""))
        for s in run:
            earlier[(s.seq, s.ts_ms)] = s.values
    for i in st.will_events():
        back = next((s for s in st.samples if s.message > i), None)
        if back is None:
            if st.watch.expect_offline:
                warn.add("it did not come back within the window after `offline`: restore "
                         "its power or network sooner, or watch longer (--for)")
            continue
        if not any(r[0] is back for r in st.runs):  # seq went on: a reconnect
            held = sum(1 for s in st.samples
                       if s.message >= back.message and st.lag_ms(s) > HELD_BACK_MS)
            notes.append(f"reconnected {st.at(back.mono_s)} with seq going on"
                         + (f", {held} reading(s) held back and delivered" if held else ""))
    if problems:
        return (Verdict.FAIL, problems.words(
            "A restarted device counts seq from 0 again, starts elapsed_s again (a new "
            "bout, or deflated), and publishes `online` before its readings (SPEC §4)"),
            problems.count)
    if warn:
        return Verdict.WARN, warn.words("See SPEC §4 on restarts"), warn.count
    if not notes:
        return (Verdict.SKIP, "no restart or reconnect seen: with --expect-offline, cut "
                "the device's power or network and restore it within the window", 0)
    return Verdict.OK, "; ".join(notes), 0


# One judge per rule of RULES (tests/unit/test_conform.py holds the two together).
_JUDGES: Final[dict[str, Callable[[Stream], Outcome]]] = {
    "payload": payload, "message_size": message_size, "array_size": array_size, "qos": qos,
    "telemetry_retained": telemetry_retained, "seq": seq, "device_time": device_time,
    "clock_offset": clock_offset, "cadence": cadence, "elapsed": elapsed,
    "deflation": deflation, "pressure": pressure, "battery": battery, "status": status,
    "status_retained": status_retained, "last_will": last_will, "restart": restart,
}


def judge(watch: Watch) -> Judgement:
    """Every rule's verdict on what the watcher saw, in the order of RULES."""
    st = Stream(watch)
    findings = []
    for rule in RULES:
        verdict, detail, count = _JUDGES[rule.id](st)
        findings.append(Finding(rule, verdict, detail, count))
    observed = {
        "telemetry_messages": len(st.telemetry),
        "readings": len(st.samples),
        "duplicates": st.duplicates,
        "status_messages": len(st.statuses),
        "restarts": max(len(st.runs) - 1, 0),
    }
    return Judgement(tuple(findings), observed)
