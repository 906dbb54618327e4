"""`cuffwatch conform`'s judge, rule by rule: watches built by hand in, verdicts out.

Every rule has a passing case and at least one failing (or warning, or skipped) case, and
each fault is blamed on its own rule only. No broker: the watcher and the reference client
run against a real Mosquitto in tests/integration/test_conform.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from core.config import BrokerSettings
from ops import conform, conform_rules
from ops.cli import main
from ops.conform_model import RULES, Channel, Finding, Message, Retained, Verdict, Watch
from ops.conform_rules import judge
from tests.support.paths import REPO

WALL0 = 1_795_000_000_000  # the watcher's wall clock at mono 0 (epoch ms)
CADENCE_MS = 100
Reading = dict[str, Any]


# -- building watches ------------------------------------------------------------------------


def readings(n: int = 60, *, seq0: int = 0, ts0: int = WALL0, rest: int = 10, bout: int = 20,
             cadence_ms: int = CADENCE_MS, battery: bool = True) -> list[Reading]:
    """A cuff resting `rest` readings, then inflated for `bout`, over and over."""
    out = []
    for k in range(n):
        phase = k % (rest + bout)
        inflated = phase >= rest
        elapsed = (phase - rest) * cadence_ms / 1000 if inflated else 0.0
        r: Reading = {
            "ts": ts0 + k * cadence_ms, "seq": (seq0 + k) % (1 << 32),
            "pressure_mmhg": 150.0 if inflated else 1.0, "elapsed_s": elapsed,
            "inflated": inflated, "target_mmhg": 150.0,
        }
        if battery:
            r["battery_pct"] = 80.0
        out.append(r)
    return out


def arrival_s(r: Reading, *, lag_s: float = 0.01, offset_ms: int = 0) -> float:
    """When a reading sent live arrives, on the watcher's monotonic clock."""
    return float((r["ts"] - offset_ms - WALL0) / 1000 + lag_s)


def sent(rs: Iterable[Reading], *, lag_s: float = 0.01, offset_ms: int = 0, qos: int = 1,
         retain: bool = False) -> list[Message]:
    """Each reading in a message of its own, as it is taken (device clock `offset_ms` ahead)."""
    return [telemetry(json.dumps(r).encode(), arrival_s(r, lag_s=lag_s, offset_ms=offset_ms),
                      qos=qos, retain=retain) for r in rs]


def telemetry(payload: bytes, at: float, *, qos: int = 1, retain: bool = False) -> Message:
    return Message(Channel.TELEMETRY, payload, qos, retain, at, WALL0 + round(at * 1000))


def status(text: str, at: float, *, retain: bool = True, qos: int = 1) -> Message:
    return Message(Channel.STATUS, text.encode(), qos, retain, at, WALL0 + round(at * 1000))


def array(rs: Sequence[Reading], at: float) -> Message:
    return telemetry(json.dumps(list(rs)).encode(), at)


def make_watch(messages: Iterable[Message], **kw: Any) -> Watch:
    fields: dict[str, Any] = {
        "window_s": 10.0, "start_mono_s": -0.5, "retain_flag_live": True,
        "retained_at_end": Retained(status=b"online", telemetry=False),
    }
    fields.update(kw)
    return Watch(messages=tuple(sorted(messages, key=lambda m: m.mono_s)), **fields)


def good(n: int = 60, **kw: Any) -> list[Message]:
    """A conforming device: `online` first, then readings at 10 Hz through rests and bouts."""
    return [status("online", -0.2), *sent(readings(n, **kw))]


def findings(watch: Watch) -> dict[str, Finding]:
    return {f.rule.id: f for f in judge(watch).findings}


def verdicts(watch: Watch) -> dict[str, Verdict]:
    return {rule_id: f.verdict for rule_id, f in findings(watch).items()}


def failed(watch: Watch) -> set[str]:
    return {rule_id for rule_id, v in verdicts(watch).items() if v is Verdict.FAIL}


def verdict(watch: Watch, rule_id: str) -> Verdict:
    return findings(watch)[rule_id].verdict


# -- a whole device ----------------------------------------------------------------------------


def test_a_conforming_device_passes_every_rule_it_showed() -> None:
    result = verdicts(make_watch(good()))
    skipped = {"last_will", "restart"}  # not tried without --expect-offline
    assert {r for r, v in result.items() if v is not Verdict.OK} == skipped
    assert all(result[r] is Verdict.SKIP for r in skipped)


def power_cut_and_restart() -> list[Message]:
    """Readings, a power cut (the broker publishes the will), a reboot: seq and bout from 0."""
    before = readings(40)
    after = readings(40, ts0=WALL0 + 6000)
    return [
        status("online", -0.2), *sent(before),
        status("offline", arrival_s(before[-1]) + 0.1),
        status("online", 5.9), *sent(after),
    ]


def test_with_a_cut_and_a_restart_every_rule_is_ok() -> None:
    watch = make_watch(power_cut_and_restart(), expect_offline=True)
    result = findings(watch)
    assert {r: f.verdict for r, f in result.items() if f.verdict is not Verdict.OK} == {}
    assert "restarted" in result["restart"].detail
    assert judge(watch).observed["restarts"] == 1
    assert judge(watch).passed


def test_every_rule_has_a_finding_in_order() -> None:
    got = judge(make_watch(good())).findings
    assert [f.rule for f in got] == list(RULES)
    assert len({r.id for r in RULES}) == len(RULES)
    assert set(conform_rules._JUDGES) == {r.id for r in RULES}


# -- payloads and sizes ----------------------------------------------------------------------


def test_an_invalid_reading_fails_payload_alone() -> None:
    msgs = good()
    bad = json.loads(msgs[20].payload)
    bad["pressure_mmhg"] = "150"  # a string is not a number
    msgs[20] = replace(msgs[20], payload=json.dumps(bad).encode())
    watch = make_watch(msgs)
    assert failed(watch) == {"payload"}
    assert "pressure_mmhg" in findings(watch)["payload"].detail
    assert findings(watch)["payload"].count == 1


def test_no_telemetry_fails_payload() -> None:
    watch = make_watch([status("online", 0.1)])
    assert verdict(watch, "payload") is Verdict.FAIL
    assert "no telemetry" in findings(watch)["payload"].detail


def test_an_array_of_more_than_256_fails_array_size_alone() -> None:
    backlog = readings(300, ts0=WALL0 - 300 * CADENCE_MS)
    live = readings(30, seq0=300, ts0=WALL0)
    watch = make_watch([status("online", -0.2), array(backlog, 0.0), *sent(live)])
    assert failed(watch) == {"array_size"}
    assert "300 readings" in findings(watch)["array_size"].detail


def test_arrays_of_up_to_256_pass() -> None:
    backlog = readings(300, ts0=WALL0 - 300 * CADENCE_MS)
    live = readings(30, seq0=300, ts0=WALL0)
    watch = make_watch([status("online", -0.2), array(backlog[:256], 0.0),
                        array(backlog[256:], 0.0), *sent(live)])
    assert failed(watch) == set()
    assert "256" in findings(watch)["array_size"].detail


def test_an_empty_array_fails_array_size() -> None:
    watch = make_watch([*good(), telemetry(b"[]", 3.0)])
    assert failed(watch) == {"array_size"}


def test_a_message_over_64_kib_fails_message_size_alone() -> None:
    rs = readings(60)
    padded = [r | {"pad": "x" * 2500} for r in rs[10:40]]  # unknown fields are ignored
    huge = json.dumps(padded).encode()
    assert len(huge) > 64 * 1024
    msgs = [status("online", -0.2), *sent(rs[:10]), telemetry(huge, arrival_s(rs[39])),
            *sent(rs[40:])]
    watch = make_watch(msgs)
    assert failed(watch) == {"message_size"}
    assert "KiB" in findings(watch)["message_size"].detail


# -- QoS and retain ------------------------------------------------------------------------


def test_qos_0_telemetry_fails_qos() -> None:
    msgs = [status("online", -0.2), *sent(readings(60), qos=0)]
    watch = make_watch(msgs)
    assert failed(watch) == {"qos"}
    assert findings(watch)["qos"].count == 60


def test_qos_0_status_fails_qos() -> None:
    watch = make_watch([status("online", -0.2, qos=0), *sent(readings(60))])
    assert failed(watch) == {"qos"}


def test_retained_telemetry_fails() -> None:
    assert failed(make_watch([*good(), *sent(readings(1, seq0=60, ts0=WALL0 + 6000),
                                             retain=True)])) == {"telemetry_retained"}
    leftover = make_watch(good(), retained_at_end=Retained(status=b"online", telemetry=True))
    assert failed(leftover) == {"telemetry_retained"}


def test_status_published_without_retain_fails_status_retained() -> None:
    msgs = [status("online", -0.2, retain=False), *sent(readings(60))]
    assert failed(make_watch(msgs)) == {"status_retained"}
    # MQTT 3.1.1 shows no live flag: the broker holding no status tells instead
    v311 = make_watch(msgs, retain_flag_live=False,
                      retained_at_end=Retained(status=None, telemetry=False))
    assert failed(v311) == {"status_retained"}


def test_a_retained_status_other_than_the_last_fails_status_retained() -> None:
    watch = make_watch(good(), retained_at_end=Retained(status=b"offline", telemetry=False))
    assert failed(watch) == {"status_retained"}
    assert "holds `offline`" in findings(watch)["status_retained"].detail


def test_retain_is_skipped_when_nothing_could_show_it() -> None:
    watch = make_watch(good(), retain_flag_live=False, retained_at_end=None)
    assert verdict(watch, "status_retained") is Verdict.SKIP
    assert verdict(watch, "telemetry_retained") is Verdict.SKIP


# -- seq -------------------------------------------------------------------------------------


def test_a_skipped_seq_fails_seq_alone() -> None:
    rs = readings(60)
    for r in rs[30:]:
        r["seq"] += 1
    watch = make_watch([status("online", -0.2), *sent(rs)])
    assert failed(watch) == {"seq"}
    assert "from 29 to 31" in findings(watch)["seq"].detail


def test_seq_going_back_fails() -> None:
    rs = readings(60, seq0=100)
    rs[30]["seq"] = 50
    for k, r in enumerate(rs[31:]):
        r["seq"] = 51 + k
    assert failed(make_watch([status("online", -0.2), *sent(rs)])) == {"seq"}


def test_seq_repeated_with_other_values_fails() -> None:
    rs = readings(60)
    twin = dict(rs[20], pressure_mmhg=99.0, ts=rs[20]["ts"] + 50)
    msgs = [status("online", -0.2), *sent(rs)]
    msgs.append(telemetry(json.dumps(twin).encode(), arrival_s(rs[20]) + 0.05))
    watch = make_watch(msgs)
    assert "seq" in failed(watch)
    assert "twice" in findings(watch)["seq"].detail


def test_seq_wraps_at_2_pow_32() -> None:
    watch = make_watch(good(seq0=(1 << 32) - 5))
    assert failed(watch) == set()
    assert "wrapping" in findings(watch)["seq"].detail


def test_a_qos1_redelivery_is_no_fault() -> None:
    msgs = good()
    msgs += [replace(m, mono_s=m.mono_s + 0.3, wall_ms=m.wall_ms + 300) for m in msgs[30:35]]
    watch = make_watch(msgs)
    assert failed(watch) == set()
    assert "5 exact repeat" in findings(watch)["seq"].detail
    assert judge(watch).observed["duplicates"] == 5


def test_readings_lost_in_an_undecodable_message_blame_payload_not_seq() -> None:
    msgs = good()
    msgs[20] = replace(msgs[20], payload=b"{not json")
    assert failed(make_watch(msgs)) == {"payload"}


# -- device time and clock -----------------------------------------------------------------


def test_device_time_going_back_fails() -> None:
    rs = readings(60)
    for r in rs[30:]:
        r["ts"] -= 2000
    msgs = [status("online", -0.2), *sent(rs[:30]),
            *[replace(m, mono_s=m.mono_s + 2, wall_ms=m.wall_ms + 2000) for m in sent(rs[30:])]]
    watch = make_watch(msgs)
    assert failed(watch) == {"device_time"}
    assert "went back 1.9 s" in findings(watch)["device_time"].detail


def test_jitter_of_a_few_ms_back_is_fine() -> None:
    rs = readings(60)
    rs[30]["ts"] = rs[29]["ts"] - 100  # reordered within tolerance (250 ms)
    assert "device_time" not in failed(make_watch([status("online", -0.2), *sent(rs)]))


def test_a_clock_jump_fails_device_time_and_warns_on_offset() -> None:
    rs = readings(60)
    on_time = sent(rs)  # when each reading really arrives...
    jumped = [r | {"ts": r["ts"] + 90_000} for r in rs[30:]]  # ...stamped 90 s ahead from 30
    msgs = [status("online", -0.2), *on_time[:30],
            *[replace(m, payload=json.dumps(r).encode())
              for m, r in zip(on_time[30:], jumped, strict=True)]]
    watch = make_watch(msgs)
    assert failed(watch) == {"device_time"}
    assert "jumped 90.1 s ahead" in findings(watch)["device_time"].detail
    assert verdict(watch, "clock_offset") is Verdict.WARN


def test_a_backlog_array_is_no_jump() -> None:
    backlog = readings(50, ts0=WALL0 - 50 * CADENCE_MS)
    live = readings(30, seq0=50, ts0=WALL0)
    watch = make_watch([status("online", -0.2), array(backlog, 0.0), *sent(live)])
    assert failed(watch) == set()


@pytest.mark.parametrize(("offset_ms", "expected"), [
    (0, Verdict.OK), (1500, Verdict.OK), (30_000, Verdict.WARN), (-30_000, Verdict.WARN),
    (400_000, Verdict.FAIL), (-400_000, Verdict.FAIL),
])
def test_clock_offset(offset_ms: int, expected: Verdict) -> None:
    rs = readings(60, ts0=WALL0 + offset_ms)
    watch = make_watch([status("online", -0.2), *sent(rs, offset_ms=offset_ms)])
    assert verdict(watch, "clock_offset") is expected
    assert failed(watch) <= {"clock_offset"}
    side = "ahead" if offset_ms > 0 else "behind"
    assert side in findings(watch)["clock_offset"].detail


# -- cadence ---------------------------------------------------------------------------------


def test_one_reading_in_10_s_fails_cadence() -> None:
    rs = readings(5, cadence_ms=10_000, rest=5)
    watch = make_watch([status("online", -0.2), *sent(rs)], window_s=50)
    assert failed(watch) == {"cadence"}


def test_a_silence_while_inflated_fails_cadence_while_deflated_warns() -> None:
    rs = readings(60)
    gap = 15_000
    later = [r | {"ts": r["ts"] + gap} for r in rs[45:]]  # inflated at reading 44
    msgs = [status("online", -0.2), *sent(rs[:45]), *sent(later)]
    watch = make_watch(msgs, window_s=25)
    assert "cadence" in failed(watch)
    assert "cuff_offline" in findings(watch)["cadence"].detail
    later = [r | {"ts": r["ts"] + gap} for r in rs[35:]]  # deflated at reading 34
    for r in rs[:40]:
        r.update(inflated=False, elapsed_s=0.0)
    msgs = [status("online", -0.2), *sent(rs[:35]), *sent(later)]
    assert verdict(make_watch(msgs, window_s=25), "cadence") is Verdict.WARN


def test_a_silence_announced_by_offline_is_fine() -> None:
    rs = readings(60)
    later = [r | {"ts": r["ts"] + 15_000} for r in rs[45:]]
    msgs = [status("online", -0.2), *sent(rs[:45]), status("offline", 4.6),
            status("online", arrival_s(later[0]) - 0.1), *sent(later)]
    assert verdict(make_watch(msgs, window_s=25), "cadence") is Verdict.OK


def test_fifty_a_second_warns_cadence() -> None:
    rs = readings(200, cadence_ms=20, rest=50, bout=100)
    assert verdict(make_watch([status("online", -0.2), *sent(rs)], window_s=4),
                   "cadence") is Verdict.WARN


# -- elapsed_s and inflated ----------------------------------------------------------------


def test_elapsed_stuck_at_zero_while_inflated_fails_elapsed() -> None:
    rs = readings(60)
    for r in rs:
        r["elapsed_s"] = 0.0
    watch = make_watch([status("online", -0.2), *sent(rs)])
    assert failed(watch) == {"elapsed"}
    assert "rose 0 s" in findings(watch)["elapsed"].detail


def test_elapsed_at_twice_device_time_fails_elapsed() -> None:
    rs = readings(60)
    for r in rs:
        r["elapsed_s"] *= 2
    assert failed(make_watch([status("online", -0.2), *sent(rs)])) == {"elapsed"}


def test_elapsed_going_back_inside_a_bout_fails() -> None:
    rs = readings(60)
    rs[26]["elapsed_s"] = 1.2  # 1.5 s the reading before: its bout began before that one
    watch = make_watch([status("online", -0.2), *sent(rs)])
    assert "elapsed" in failed(watch)
    assert "went back" in findings(watch)["elapsed"].detail


def test_a_missed_deflation_is_a_new_bout_not_a_fault() -> None:
    rs = readings(60, rest=1, bout=29)  # a deflated reading every 3 s, dropped below
    kept = [r for r in rs if r["inflated"] or r["seq"] == 0]
    for k, r in enumerate(kept):
        r["seq"] = k
    assert failed(make_watch([status("online", -0.2), *sent(kept)])) == set()


def test_elapsed_not_starting_from_zero_fails_elapsed() -> None:
    rs = readings(60)
    for r in rs:
        if r["inflated"]:
            r["elapsed_s"] += 37.0
    watch = make_watch([status("online", -0.2), *sent(rs)])
    assert failed(watch) == {"elapsed"}
    assert "already 37 s at inflation" in findings(watch)["elapsed"].detail


def test_a_cuff_that_never_inflates_skips_elapsed_and_deflation() -> None:
    rs = readings(30, rest=100)
    watch = make_watch([status("online", -0.2), *sent(rs)])
    assert verdict(watch, "elapsed") is Verdict.SKIP
    assert verdict(watch, "deflation") is Verdict.SKIP
    assert failed(watch) == set()


def test_elapsed_kept_after_deflation_fails_deflation() -> None:
    rs = readings(60)
    for r in rs[30:40]:
        r["elapsed_s"] = 1.9  # deflated (inflated: false), yet the bout's time is reported
    watch = make_watch([status("online", -0.2), *sent(rs)])
    assert failed(watch) == {"deflation"}
    detail = findings(watch)["deflation"].detail
    assert "10 reading(s) say `inflated: false` with elapsed_s 1.9" in detail
    assert findings(watch)["deflation"].count == 10


def test_inflated_may_be_left_out() -> None:
    rs = readings(60)
    for r in rs:
        del r["inflated"]  # defaults to elapsed_s > 0
    watch = make_watch([status("online", -0.2), *sent(rs)])
    assert failed(watch) == set()
    assert verdict(watch, "deflation") is Verdict.OK


# -- pressure and battery --------------------------------------------------------------------


def test_implausible_pressure_warns() -> None:
    rs = readings(60)
    rs[15]["pressure_mmhg"] = 700.0
    watch = make_watch([status("online", -0.2), *sent(rs)])
    assert verdict(watch, "pressure") is Verdict.WARN
    assert failed(watch) == set()


def test_no_battery_warns() -> None:
    watch = make_watch([status("online", -0.2), *sent(readings(60, battery=False))])
    assert verdict(watch, "battery") is Verdict.WARN
    assert verdict(make_watch(good()), "battery") is Verdict.OK


# -- status, last will, restart ------------------------------------------------------------


def test_no_status_fails_status() -> None:
    watch = make_watch(sent(readings(60)), retained_at_end=Retained(None, telemetry=False))
    assert failed(watch) == {"status"}
    assert verdict(watch, "status_retained") is Verdict.SKIP


def test_an_invalid_status_fails_status() -> None:
    watch = make_watch([*good(), status("up", 2.0)])
    assert failed(watch) == {"status"}


def test_json_status_passes() -> None:
    watch = make_watch([status('{"state": "online"}', -0.2), *sent(readings(60))],
                       retained_at_end=Retained(b'{"state": "online"}', telemetry=False))
    assert failed(watch) == set()


def test_readings_while_offline_fail_status() -> None:
    watch = make_watch([status("offline", -0.3), *sent(readings(60))],
                       retained_at_end=Retained(b"offline", telemetry=False))
    assert failed(watch) == {"status"}
    assert "while the status said offline" in findings(watch)["status"].detail


def test_last_will_is_skipped_unless_expected() -> None:
    assert verdict(make_watch(power_cut_and_restart()), "last_will") is Verdict.SKIP


def test_no_offline_after_a_cut_fails_last_will() -> None:
    msgs = [m for m in power_cut_and_restart() if m.payload != b"offline"]
    watch = make_watch(msgs, expect_offline=True)
    assert failed(watch) == {"last_will"}


def test_an_old_retained_offline_is_no_last_will() -> None:
    watch = make_watch([status("offline", -0.4), *good()], expect_offline=True)
    assert verdict(watch, "last_will") is Verdict.FAIL


def test_a_restart_that_carries_on_the_bout_fails_restart() -> None:
    before = readings(25)  # inflated from reading 10, elapsed 1.4 s at the end
    after = [r | {"elapsed_s": 2.0 + k * CADENCE_MS / 1000, "inflated": True,
                  "pressure_mmhg": 150.0}
             for k, r in enumerate(readings(20, ts0=WALL0 + 3000))]
    msgs = [status("online", -0.2), *sent(before), status("offline", 2.6), status("online", 2.9),
            *sent(after)]
    watch = make_watch(msgs, expect_offline=True)
    assert failed(watch) == {"restart"}
    assert "while elapsed_s went on" in findings(watch)["restart"].detail


def test_a_restart_without_online_fails_restart() -> None:
    msgs = [m for m in power_cut_and_restart() if not (m.payload == b"online" and m.mono_s > 5)]
    watch = make_watch(msgs, expect_offline=True,
                       retained_at_end=Retained(b"offline", telemetry=False))
    assert "restart" in failed(watch)
    assert "without an `online` before it" in findings(watch)["restart"].detail


def test_a_reconnect_with_seq_going_on_and_a_backlog_passes() -> None:
    rs = readings(90)
    live, held, later = rs[:30], rs[30:60], rs[60:]
    cut = arrival_s(live[-1]) + 0.1
    back = arrival_s(held[-1]) + 0.05
    msgs = [status("online", -0.2), *sent(live), status("offline", cut), status("online", back),
            array(held, back + 0.01), *sent(later)]
    watch = make_watch(msgs, expect_offline=True)
    result = findings(watch)
    assert failed(watch) == set(), {r: f.detail for r, f in result.items()}
    assert result["restart"].verdict is Verdict.OK
    assert "reconnected" in result["restart"].detail
    assert "held back" in result["restart"].detail


def test_a_device_that_does_not_come_back_warns_restart() -> None:
    rs = readings(40)
    msgs = [status("online", -0.2), *sent(rs), status("offline", 4.2)]
    watch = make_watch(msgs, expect_offline=True,
                       retained_at_end=Retained(b"offline", telemetry=False))
    assert verdict(watch, "restart") is Verdict.WARN
    assert verdict(watch, "last_will") is Verdict.OK
    assert failed(watch) == set()


def test_seq_wrapping_early_is_blamed_on_restart_in_words_for_both() -> None:
    rs = readings(60, seq0=65_530)  # a 16-bit counter wraps to 0 after 65535
    for r in rs[6:]:
        r["seq"] = (r["seq"] - 65_530 - 6)
    watch = make_watch([status("online", -0.2), *sent(rs)])
    assert failed(watch) == {"restart"}
    assert "wraps seq only after 2^32 − 1" in findings(watch)["restart"].detail


def test_a_restart_repeating_seq_and_time_warns() -> None:
    before = readings(30)
    after = readings(30)  # a clock reset to the same times: (seq, ts) pairs again
    for r in after:
        r["pressure_mmhg"] += 1
    msgs = [status("online", -0.2), *sent(before), status("offline", 3.1), status("online", 3.2),
            *[replace(m, mono_s=m.mono_s + 3.3, wall_ms=m.wall_ms + 3300) for m in sent(after)]]
    watch = make_watch(msgs, expect_offline=True)
    assert verdict(watch, "restart") is Verdict.WARN


# -- the contract doc ------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_rule_points_at_a_section_of_the_contract_doc() -> None:
    doc = (REPO / "docs" / "contract.md").read_text(encoding="utf-8")
    anchors = {_slug(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*$", doc, flags=re.MULTILINE)}
    assert {r.anchor for r in RULES} <= anchors


def test_the_contract_doc_lists_exactly_the_rules() -> None:
    doc = (REPO / "docs" / "contract.md").read_text(encoding="utf-8")
    start = doc.index("## Checking a device")
    body = doc[start:doc.index("\n## ", start + 1)]
    listed = re.findall(r"^\| `([a-z_]+)` \|", body, flags=re.MULTILINE)
    assert listed == [r.id for r in RULES]
    for r in RULES:
        row = next(line for line in body.splitlines() if line.startswith(f"| `{r.id}` |"))
        assert f"(#{r.anchor})" in row, f"the row of `{r.id}` links elsewhere than {r.contract}"


# -- output --------------------------------------------------------------------------------


BROKER = BrokerSettings(url="mqtt://127.0.0.1:1883")


def test_the_table_names_every_rule_and_links_each_failure() -> None:
    msgs = [status("online", -0.2), *sent(readings(60), qos=0)]
    judgement = judge(make_watch(msgs))
    text = conform.render(judgement, team="t1", cuff="c7", broker=BROKER, window_s=10)
    for r in RULES:
        assert re.search(rf"^\S+\s+{r.id}\s", text, flags=re.MULTILINE), r.id
    assert "see docs/contract.md#topics" in text
    assert text.splitlines()[-1].startswith("FAIL: 1 rule(s) broken (qos)")
    assert max(len(line) for line in text.splitlines()[1:]) <= 100


def test_the_json_report_has_every_verdict_and_no_secret() -> None:
    judgement = judge(make_watch(good()))
    broker = BrokerSettings(url="mqtt://cuff:s3cret@broker.example:1883", protocol=3)
    from datetime import UTC, datetime

    data = conform.report(judgement, team="t1", cuff="c7", topic_root="bfr", broker=broker,
                          window_s=10, expect_offline=False,
                          started_at=datetime(2026, 12, 7, 10, 0, tzinfo=UTC))
    text = json.dumps(data)
    assert "s3cret" not in text
    assert data["broker"] == "mqtt://broker.example:1883"
    assert data["passed"] is True
    assert data["started_at"] == "2026-12-07T10:00:00.000Z"
    assert [r["rule"] for r in data["rules"]] == [r.id for r in RULES]
    assert {r["verdict"] for r in data["rules"]} <= {"ok", "FAIL", "warn", "skip"}
    assert all(r["contract"].startswith("docs/contract.md#") for r in data["rules"])
    assert data["verdicts"] == {"ok": 15, "FAIL": 0, "warn": 0, "skip": 2}


# -- the command line ----------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["conform", "--team", "t 1", "--cuff", "c7"],
    ["conform", "--team", "t1", "--cuff", "c7/#"],
    ["conform", "--team", "t1", "--cuff", "c7", "--json", "/nonexistent-dir/r.json"],
    ["conform", "--team", "t1", "--cuff", "c7", "--broker", "http://x"],
])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("conform: ")


@pytest.mark.parametrize("window", ["0", "2h", "soon"])
def test_a_bad_window_exits_2(window: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["conform", "--team", "t1", "--cuff", "c7", "--for", window])
    assert exc.value.code == 2


def test_an_unreachable_broker_exits_1_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    report = tmp_path / "r.json"
    code = main(["conform", "--team", "t1", "--cuff", "c7", "--for", "1",
                 "--broker", "mqtt://127.0.0.1:1", "--json", str(report)])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("cuffwatch conform: cannot reach 127.0.0.1:1")
    assert not report.exists()
