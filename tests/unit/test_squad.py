"""The pure squad model, with no servers: session scripts, pressure signal, faults, squads,
options, and the messages each broker connection of a run publishes (`sim.feed`)."""

from __future__ import annotations

import argparse
import itertools
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from statistics import fmean
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.config import load_settings
from core.model import PLAUSIBLE_MIN_MMHG, Limb, Protocol
from core.seq import SEQ_MODULUS
from gateway.decode import decode_readings
from sim.faults import LOW_BATTERY_PCT, FaultKind, FaultSpec, parse_duration
from sim.feed import (
    MAX_LAG_S,
    OUTBOX_MAX_MESSAGES,
    LaneFeed,
    LanePlan,
    Message,
    SimStats,
    feeds_for_run,
    plan_lanes,
)
from sim.options import MAX_BATCH, SimOptions, add_arguments, options_from_args
from sim.roster import generated_roster, generated_squad, squad_from_settings
from sim.squad import (
    RAMP_S,
    CuffSpec,
    SimReading,
    SquadSimulator,
    Stage,
    VirtualCuff,
    encode_readings,
)

ARM_BFR = CuffSpec(team="t1", cuff="c1", athlete="a-1", limb=Limb.LEFT_ARM, target_mmhg=72.0,
                   lop_mmhg=160.0, target_pct_lop=45.0)
LEG_BFR = CuffSpec(team="t1", cuff="c2", athlete="a-2", limb=Limb.RIGHT_LEG, target_mmhg=147.0,
                   lop_mmhg=210.0, target_pct_lop=70.0)
IPC = CuffSpec(team="t1", cuff="c3", athlete="a-3", limb=Limb.LEFT_ARM, protocol=Protocol.IPC,
               target_mmhg=210.0)
HARD_CEILING = {"arm": 250.0, "leg": 300.0}  # SPEC §3 defaults
TOLERANCE = 15.0


@dataclass(frozen=True, slots=True)
class Sample:
    t: float
    stage: Stage
    reading: SimReading | None


def run(cuff: VirtualCuff, until_s: float, hz: float = 1.0) -> list[Sample]:
    """Sample a cuff on a fixed grid from 0 to until_s."""
    out = []
    for i in range(int(until_s * hz) + 1):
        t = i / hz
        reading = cuff.reading(t)
        out.append(Sample(t, cuff.stage, reading))
    return out


def bouts(samples: Iterable[Sample]) -> list[list[Sample]]:
    """Runs of inflated readings."""
    out: list[list[Sample]] = []
    current: list[Sample] = []
    for s in samples:
        if s.reading is not None and s.reading.inflated:
            current.append(s)
        elif current:
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


def rests(found: Sequence[list[Sample]]) -> list[float]:
    """Time from each bout's first deflated sample to the next bout's first inflated one."""
    return [b[0].t - a[-1].t - 1.0 for a, b in itertools.pairwise(found)]


def means(bout: Sequence[Sample], window_s: float, after_s: float = 0.0) -> list[float]:
    """Rolling means by device time, counted once the readings span the window (SPEC §3)."""
    start = bout[0].t + after_s
    points = [(s.t, s.reading.pressure_mmhg) for s in bout if s.reading and s.t >= start]
    out = []
    total, first = 0.0, 0
    for last, (t, pressure) in enumerate(points):
        total += pressure
        while points[first][0] <= t - window_s:
            total -= points[first][1]
            first += 1
        if t - start >= window_s:
            out.append(total / (last - first + 1))
    return out


def longest_run(flags: Iterable[bool]) -> int:
    best = run_length = 0
    for flag in flags:
        run_length = run_length + 1 if flag else 0
        best = max(best, run_length)
    return best


def first_bout(spec: CuffSpec, hz: float = 1.0, speed: float = 1.0) -> list[Sample]:
    [bout, *_] = bouts(run(VirtualCuff(spec, seed=1, speed=speed), 900, hz))
    return bout


# -- the session script ------------------------------------------------------------------------


def test_bfr_bout_elapsed_runs_from_zero_and_resets_at_deflation() -> None:
    samples = run(VirtualCuff(LEG_BFR, seed=3), 1800)
    found = bouts(samples)
    assert len(found) == 3  # one session of three exercises, then an hour off
    for bout in found:
        elapsed = [s.reading.elapsed_s for s in bout if s.reading]
        assert 0 <= elapsed[0] < 1.0
        assert all(0.99 < b - a < 1.01 for a, b in itertools.pairwise(elapsed))
        assert 270 <= elapsed[-1] <= 450  # 30-15-15-15 reps with rests: about 5–7 min
    for s in samples:
        assert s.reading is not None
        if not s.reading.inflated:
            assert s.reading.elapsed_s == 0.0
            assert 0 <= s.reading.pressure_mmhg < 3


def test_rests_between_bouts_are_at_least_a_minute_and_sessions_an_hour_apart() -> None:
    for seed in range(5):
        found = bouts(run(VirtualCuff(ARM_BFR, seed=seed), 3 * 3600))
        gaps = rests(found)
        assert len(found) >= 6
        assert all(gap >= 60 for gap in gaps)
        assert sum(gap >= 3600 for gap in gaps) >= 1  # the break between sessions
        occluded = sum(b[-1].reading.elapsed_s for b in found[:3] if b[-1].reading)
        assert occluded < 1800  # max_session_occlusion_s


def test_the_script_does_not_depend_on_the_sampling_rate() -> None:
    slow = [b[0].t for b in bouts(run(VirtualCuff(LEG_BFR, seed=5), 1800, hz=1.0))]
    fast = [b[0].t for b in bouts(run(VirtualCuff(LEG_BFR, seed=5), 1800, hz=4.0))]
    assert len(slow) == len(fast) == 3
    assert all(abs(a - b) <= 1.0 for a, b in zip(slow, fast, strict=True))


def test_ipc_is_four_five_minute_occlusions_with_five_minute_reperfusion() -> None:
    samples = run(VirtualCuff(IPC, seed=2), 3600)
    found = bouts(samples)
    assert len(found) == 4
    for bout in found:
        assert 280 <= bout[-1].t - bout[0].t < 300
        last = bout[-1].reading
        assert last is not None
        assert last.elapsed_s < 300  # ipc max_bout_s
        steady = [s.reading.pressure_mmhg for s in bout if s.reading and s.t - bout[0].t >= RAMP_S]
        assert all(200 <= p <= 220 for p in steady)
        assert {s.stage for s in bout} == {Stage.OCCLUSION}
    assert all(gap >= 300 for gap in rests(found))


@settings(max_examples=30)
@given(
    seed=st.integers(0, 2**32 - 1),
    legs=st.booleans(),
    lop=st.integers(140, 240),
    pct=st.integers(40, 80),
    hz=st.sampled_from([1.0, 2.0, 4.0, 10.0]),
    speed=st.sampled_from([1.0, 10.0]),
)
def test_a_normal_cuff_stays_inside_every_pressure_rule(
    *, seed: int, legs: bool, lop: int, pct: int, hz: float, speed: float
) -> None:
    limb = Limb.LEFT_LEG if legs else Limb.LEFT_ARM
    target = round(lop * pct / 100, 1)
    spec = replace(LEG_BFR, limb=limb, lop_mmhg=float(lop), target_pct_lop=float(pct),
                   target_mmhg=target)
    [bout, *_] = bouts(run(VirtualCuff(spec, seed=seed, speed=speed), 900, hz))
    pressures = [s.reading.pressure_mmhg for s in bout if s.reading]
    assert max(pressures) < HARD_CEILING[limb.kind]
    settled = [s for s in bout if s.t - bout[0].t >= RAMP_S]
    assert all(abs(s.reading.pressure_mmhg - target) <= 30 for s in settled if s.reading)
    # over_pressure (warning): the 5 s mean never exceeds target + tolerance
    assert all(m <= target + TOLERANCE for m in means(bout, 5.0))
    assert all(abs(m - target) <= TOLERANCE for m in means(bout, 5.0, after_s=RAMP_S))
    # under_pressure needs 7 s below the band: the inflation ramp does not get there
    assert longest_run(m < target - TOLERANCE for m in means(bout, 5.0)) < 7 * hz
    # over_pressure (critical): the 2 s mean stays below LOP
    assert all(m < lop for m in means(bout, 2.0))


def test_pressure_swings_with_every_rep_and_is_steady_in_rests() -> None:
    bout = first_bout(LEG_BFR, hz=10.0)
    in_sets = [s.reading.pressure_mmhg for s in bout if s.stage is Stage.SET and s.reading]
    in_rests = [s.reading.pressure_mmhg for s in bout
                if s.stage is Stage.SET_REST and s.reading]
    assert max(in_sets) - min(in_sets) >= 30  # ±15–25 mmHg around target
    assert max(in_rests) - min(in_rests) <= 6  # noise only
    ramp = [s.reading.pressure_mmhg for s in bout if s.reading and s.t - bout[0].t < RAMP_S]
    assert ramp == sorted(ramp) or ramp[0] < LEG_BFR.target_mmhg / 2


def test_speed_compresses_inflated_phases_but_not_timestamps_or_reperfusion() -> None:
    samples = run(VirtualCuff(ARM_BFR, seed=4, speed=10.0), 900)
    found = bouts(samples)
    assert len(found) == 3
    for bout in found:
        elapsed = [s.reading.elapsed_s for s in bout if s.reading]
        assert all(9.99 < b - a < 10.01 for a, b in itertools.pairwise(elapsed))
        assert 27 <= bout[-1].t - bout[0].t <= 45  # a 4.5–7.5 min bout in 1/10 of the time
    assert all(gap >= 60 for gap in rests(found))
    stamps = [s.reading.ts_ms for s in samples if s.reading]
    assert all(b - a == 1000 for a, b in itertools.pairwise(stamps))


# -- readings ----------------------------------------------------------------------------------


def test_seq_increments_per_reading_and_wraps_at_2_to_the_32() -> None:
    cuff = VirtualCuff(ARM_BFR, first_seq=SEQ_MODULUS - 2)
    seqs = [r.seq for t in range(4) if (r := cuff.reading(float(t)))]
    assert seqs == [SEQ_MODULUS - 2, SEQ_MODULUS - 1, 0, 1]


def test_the_payload_is_a_spec_reading_object_or_an_array_of_them() -> None:
    cuff = VirtualCuff(LEG_BFR, epoch_s=1_795_000_000.0)
    readings = [r for t in range(60) if (r := cuff.reading(float(t)))]
    obj = json.loads(encode_readings(readings[-1:]))
    assert list(obj) == ["ts", "seq", "pressure_mmhg", "elapsed_s", "inflated", "target_mmhg",
                         "battery_pct"]
    assert obj["ts"] == 1_795_000_059_000
    assert isinstance(obj["ts"], int)
    assert isinstance(obj["seq"], int)
    assert isinstance(obj["inflated"], bool)
    assert 0 <= obj["battery_pct"] <= 100
    [decoded] = decode_readings(encode_readings(readings[-1:]))  # the gateway's own validator
    assert decoded.seq == readings[-1].seq
    batch = decode_readings(encode_readings(readings[:MAX_BATCH]))
    assert [r.seq for r in batch] == list(range(60))
    assert isinstance(json.loads(encode_readings(readings[:2])), list)
    assert json.loads(encode_readings(readings[:1], array=True)) == [readings[0].to_json()]
    with pytest.raises(ValueError, match="array"):
        encode_readings(readings[:2], array=False)


def test_the_same_seed_gives_the_same_squad_and_readings() -> None:
    def trace(seed: int) -> list[SimReading | None]:
        sim = SquadSimulator(generated_squad(6, 2, seed), seed=seed, epoch_s=1e9)
        sim.leak("c002", 100)
        return [sim.reading(c, t / 2) for t in range(1200) for c in ("c001", "c002", "c005")]

    assert trace(11) == trace(11)
    assert trace(11) != trace(12)


def test_battery_drains_slowly() -> None:
    samples = run(VirtualCuff(ARM_BFR, seed=9), 3600)
    battery = [s.reading.battery_pct for s in samples if s.reading]
    assert battery == sorted(battery, reverse=True)
    assert 0 < battery[0] - battery[-1] <= 5


# -- faults ------------------------------------------------------------------------------------


def first_rest(spec: CuffSpec) -> tuple[float, float]:
    """(end of the first bout, start of the second) of a fault-free cuff with seed 1."""
    a, b, *_ = bouts(run(VirtualCuff(spec, seed=1), 1800))
    return a[-1].t, b[0].t


def faulty(spec: CuffSpec, *faults: FaultSpec, speed: float = 1.0) -> VirtualCuff:
    cuff = VirtualCuff(spec, seed=1, speed=speed, epoch_s=1e9)
    for fault in faults:
        cuff.inject(fault)
    return cuff


def at(samples: Sequence[Sample], t0: float, t1: float) -> list[SimReading]:
    return [s.reading for s in samples if t0 <= s.t < t1 and s.reading]


def test_over_pressure_jumps_above_the_ceiling_and_inflates_a_deflated_cuff() -> None:
    ended, _ = first_rest(ARM_BFR)
    when = ended + 20  # during reperfusion
    samples = run(faulty(ARM_BFR, FaultSpec(FaultKind.OVER_PRESSURE, "c1", when)), when + 30)
    during = at(samples, when, when + 10)
    assert len(during) == 10
    assert all(r.pressure_mmhg >= 300 and r.inflated for r in during)
    assert during[0].elapsed_s == 0.0  # a new bout began at the fault
    after = at(samples, when + 10, when + 30)
    assert all(r.inflated and r.pressure_mmhg < 150 for r in after)


def test_a_forgotten_cuff_is_never_deflated_until_the_fault_ends() -> None:
    samples = run(faulty(LEG_BFR, FaultSpec(FaultKind.FORGOTTEN, "c2", 0.0, 1500.0)), 2200)
    [long, *later] = bouts(samples)
    last = long[-1].reading
    assert last is not None
    assert last.elapsed_s > 1200  # leg max_bout_s
    assert 1499 <= long[-1].t <= 1500
    assert later
    assert later[0][0].t - long[-1].t >= 180  # min_rest_after_max_s
    assert {s.stage for s in long} >= {Stage.SET, Stage.OVERTIME}


def test_forgotten_at_ten_times_speed_reaches_max_bout_within_two_minutes() -> None:
    samples = run(faulty(ARM_BFR, FaultSpec(FaultKind.FORGOTTEN, "c1"), speed=10.0), 130)
    last = samples[-1].reading
    assert last is not None
    assert last.inflated
    assert last.elapsed_s > 900


def test_a_leak_sags_forty_mmhg_below_target_and_stays() -> None:
    bout = first_bout(LEG_BFR)
    when = bout[0].t + 60
    samples = run(faulty(LEG_BFR, FaultSpec(FaultKind.LEAK, "c2", when)), bout[-1].t)
    leaking = [s for s in samples if s.t >= when]
    window = means(leaking, 5.0)
    assert len(window) > 7
    assert all(m < LEG_BFR.target_mmhg - TOLERANCE for m in window)
    assert abs(fmean(window) - (LEG_BFR.target_mmhg - 40)) < 5


def test_a_dropout_stops_readings_while_inflated_then_they_resume() -> None:
    bout = first_bout(ARM_BFR)
    when = bout[0].t + 30
    samples = run(faulty(ARM_BFR, FaultSpec(FaultKind.DROPOUT, "c1", when, 20.0)), when + 40)
    before = at(samples, 0, when)[-1]
    assert at(samples, when, when + 20) == []
    resumed = at(samples, when + 20, when + 40)[0]
    assert resumed.seq == before.seq + 1
    assert resumed.inflated
    assert resumed.elapsed_s == pytest.approx(before.elapsed_s + 21, abs=0.01)


def test_an_offline_dropout_publishes_offline_and_inflates_a_deflated_cuff() -> None:
    ended, _ = first_rest(ARM_BFR)
    when = ended + 10
    cuff = faulty(ARM_BFR, FaultSpec(FaultKind.OFFLINE, "c1", when, 30.0))
    assert cuff.status(when - 1) == "online"
    assert cuff.status(when) == cuff.status(when + 29) == "offline"
    assert cuff.status(when + 30) == "online"
    samples = run(cuff, when + 35)
    assert at(samples, when, when + 30) == []
    back = at(samples, when + 30, when + 35)[0]
    assert back.inflated
    assert back.elapsed_s == pytest.approx(30, abs=0.01)


def test_low_battery_sensor_and_clock_faults() -> None:
    cuff = faulty(
        IPC,
        FaultSpec(FaultKind.LOW_BATTERY, "c3", 10.0),
        FaultSpec(FaultKind.SENSOR, "c3", 20.0),
        FaultSpec(FaultKind.CLOCK, "c3", 30.0, 5.0),
    )
    samples = run(cuff, 60)
    assert all(r.battery_pct > 15 for r in at(samples, 0, 10))
    assert all(r.battery_pct == LOW_BATTERY_PCT for r in at(samples, 10, 60))
    sensor = at(samples, 20, 23)
    assert len(sensor) == 3
    assert all(r.pressure_mmhg < PLAUSIBLE_MIN_MMHG for r in sensor)
    assert all(r.pressure_mmhg > PLAUSIBLE_MIN_MMHG for r in at(samples, 23, 60))
    for s in samples:
        assert s.reading is not None
        ahead = 3600 if 30 <= s.t < 35 else 0
        assert s.reading.ts_ms == round((1e9 + s.t + ahead) * 1000)


def test_faults_name_a_cuff_of_the_squad() -> None:
    sim = SquadSimulator([ARM_BFR, IPC])
    with pytest.raises(ValueError, match="no cuff 'c9'"):
        sim.over_pressure("c9", 10)
    assert sim.reading("c1", 5.0) is not None
    with pytest.raises(ValueError, match="time went back"):
        sim.reading("c1", 4.0)


def test_fault_specs_parse_from_the_command_line_syntax() -> None:
    spec = FaultSpec.parse("over_pressure:c3@30s")
    assert spec == FaultSpec(FaultKind.OVER_PRESSURE, "c3", 30.0)
    assert spec.end_s == 40.0  # over_pressure lasts 10 s unless told
    assert FaultSpec.parse("dropout:c002@1m+20s") == FaultSpec(FaultKind.DROPOUT, "c002", 60, 20)
    assert FaultSpec.parse("leak:c1").at_s == 0.0
    assert FaultSpec.parse("forgotten:c1@2m").end_s == float("inf")
    assert FaultSpec.parse(str(FaultSpec.parse("offline:c1@1.5m+30s"))) == FaultSpec(
        FaultKind.OFFLINE, "c1", 90.0, 30.0
    )
    for bad, why in [("melt:c1@3s", "unknown fault"), ("leak", "not a fault"),
                     ("leak:c1@soon", "not a duration"), ("leak:c1@3s+0s", "must be > 0"),
                     ("leak:c1@-3s", "not a duration")]:
        with pytest.raises(ValueError, match=why):
            FaultSpec.parse(bad)
    assert parse_duration("250ms") == 0.25
    assert parse_duration("1h") == 3600.0


# -- squads and options ------------------------------------------------------------------------


def test_a_generated_roster_configures_the_gateway_and_simulator_alike() -> None:
    squad = generated_squad(9, teams=3, seed=4)
    settings = load_settings(teams=generated_roster(9, teams=3, seed=4))
    assert squad_from_settings(settings) == squad
    assert [s.cuff for s in squad] == [f"c{i:03d}" for i in range(1, 10)]
    assert {s.team for s in squad} == {"t1", "t2", "t3"}
    for spec in squad:
        params = settings.rule_params(spec.team, spec.athlete, spec.limb)
        assert params.target_mmhg == spec.target_mmhg
        assert params.protocol is spec.protocol
        if spec.protocol is Protocol.IPC:
            assert 200 <= spec.target_mmhg <= 220
        else:
            lop_range, pct_range = ((177, 243), (60, 80)) if spec.limb.is_leg else \
                ((137, 183), (40, 50))
            assert spec.lop_mmhg is not None
            assert lop_range[0] <= spec.lop_mmhg <= lop_range[1]
            assert spec.target_pct_lop is not None
            assert pct_range[0] <= spec.target_pct_lop <= pct_range[1]
    by_athlete: dict[str, list[CuffSpec]] = defaultdict(list)
    for spec in squad:
        by_athlete[spec.athlete].append(spec)
    assert all(len({s.team for s in pair}) == 1 for pair in by_athlete.values())


def test_roster_cuffs_without_prescription_still_get_a_target() -> None:
    settings = load_settings(teams={"t1": {"cuffs": {"x1": {"limb": "left_leg"},
                                                     "x2": {"athlete": "a", "limb": "left_arm"}}}})
    [x1, x2] = squad_from_settings(settings)
    assert (x1.athlete, x1.target_mmhg) == ("x1", 147.0)
    assert (x2.athlete, x2.target_mmhg) == ("a", 72.0)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("-c", "--config")
    add_arguments(parser)
    return parser.parse_args(argv)


def test_options_from_args_over_a_config() -> None:
    settings = load_settings(
        topic_root="club", teams=generated_roster(4, seed=2),
        broker={"url": "mqtts://broker.example:8884", "username": "sim", "password": "pw",
                "protocol": 3},
    )
    options = options_from_args(parse("--fault", "leak:c002@10s", "--speed", "10"), settings)
    assert [s.cuff for s in options.squad] == ["c001", "c002", "c003", "c004"]
    assert (options.host, options.port, options.tls) == ("broker.example", 8884, True)
    assert (options.username, options.password, options.protocol) == ("sim", "pw", 3)
    assert (options.topic_root, options.speed, options.cuff_hz) == ("club", 10.0, 1.0)
    assert options.faults == (FaultSpec(FaultKind.LEAK, "c002", 10.0),)
    assert not options.pooled

    options = options_from_args(
        parse("--broker", "mqtt://127.0.0.1:1999", "--cuffs", "120", "--teams", "4", "--rate",
              "600", "--batch", "10", "--duration", "2m", "--protocol", "5", "--seed", "3"),
        settings,
    )
    assert (options.host, options.port, options.tls, options.protocol) == ("127.0.0.1", 1999,
                                                                           False, 5)
    assert (len(options.squad), options.cuff_hz, options.batch) == (120, 5.0, 10)
    assert options.duration_s == 120.0
    assert options.pooled

    with pytest.raises(ValueError, match="no cuff 'c999'"):
        options_from_args(parse("--fault", "leak:c999"), settings)
    with pytest.raises(SystemExit):
        parse("--batch", "257")


def test_sim_options_reject_nonsense() -> None:
    good = SimOptions(squad=(ARM_BFR,))
    cases: list[tuple[dict[str, Any], str]] = [
        ({"squad": ()}, "empty"),
        ({"rate": 0.0}, "rate"),
        ({"batch": 0}, "batch"),
        ({"speed": -1.0}, "speed"),
        ({"duration_s": 0.0}, "duration"),
        ({"topic_root": "a b"}, "topic root"),
        ({"protocol": 4}, "protocol"),
        ({"squad": (ARM_BFR, ARM_BFR)}, "twice"),
        ({"squad": (replace(ARM_BFR, cuff="no/slash"),)}, "ids must be"),
        ({"faults": (FaultSpec(FaultKind.LEAK, "c9"),)}, "no cuff 'c9'"),
    ]
    for bad, why in cases:
        with pytest.raises(ValueError, match=why):
            replace(good, **bad)


# -- what each connection publishes (sim.feed) -------------------------------------------------


def take_all(feed: LaneFeed) -> list[Message]:
    """Everything the feed has queued, in publishing order, as a publisher would take it."""
    out = []
    while (message := feed.next_message()) is not None:
        out.append(message)
        feed.sent()
    return out


def step(feed: LaneFeed, until_s: float, step_s: float = 0.5, *, start_s: float = 0.0) -> None:
    """Advance the feed every step_s from start_s to until_s, as a publisher's ticker would."""
    for k in range(int((until_s - start_s) / step_s) + 1):
        feed.advance(start_s + k * step_s)


def run_feed(options: SimOptions, until_s: float, step_s: float = 0.5) -> list[list[Message]]:
    """Each lane's messages of a run advanced every step_s to until_s, announced at the start."""
    feeds = feeds_for_run(options, SimStats(), epoch_s=1e9, run_id=1)
    out: list[list[Message]] = [[] for _ in feeds]
    for feed, messages in zip(feeds, out, strict=True):
        feed.announce_all()
        for k in range(int(until_s / step_s) + 1):
            feed.advance(k * step_s)
            messages.extend(take_all(feed))
    return out


def test_lanes_are_one_per_cuff_with_its_will_or_a_few_shared_ones() -> None:
    squad = tuple(generated_squad(9))
    single = plan_lanes(SimOptions(squad=squad), run_id=42)
    assert [(p.name, p.client_id, p.cuffs) for p in single] == [(s.cuff, s.cuff, (s,))
                                                                for s in squad]
    assert all(p.own_will for p in single)
    assert [p.phase for p in single] == [k / 9 for k in range(9)]
    pooled = plan_lanes(SimOptions(squad=squad, pool=True), run_id=42)
    assert [p.client_id for p in pooled] == [f"cuffwatch-sim-42-{k}" for k in range(4)]
    assert [p.cuffs for p in pooled] == [squad[k::4] for k in range(4)]
    assert not any(p.own_will for p in pooled)
    feeds = feeds_for_run(SimOptions(squad=squad, pool=True), SimStats(), epoch_s=0, run_id=42)
    assert all(feed.will is None for feed in feeds)
    [feed] = feeds_for_run(SimOptions(squad=(ARM_BFR,), topic_root="club"), SimStats(),
                           epoch_s=0, run_id=1)
    assert feed.will == Message("club/t1/cuffs/c1/status", b"offline", retain=True)


def test_a_feed_announces_statuses_first_then_telemetry_at_the_cuff_rate() -> None:
    options = SimOptions(squad=(ARM_BFR, LEG_BFR), topic_root="club", duration_s=10.0)
    plan = LanePlan(name="lane", client_id="lane", cuffs=options.squad, phase=0.0, own_will=False)
    feed = LaneFeed(plan, options=options, sim=SquadSimulator(options.squad), stats=SimStats())
    feed.announce_all()
    step(feed, 12.0)
    messages = take_all(feed)
    assert messages[:2] == [Message("club/t1/cuffs/c1/status", b"online", retain=True),
                            Message("club/t1/cuffs/c2/status", b"online", retain=True)]
    telemetry = messages[2:]
    assert not any(m.retain for m in telemetry)
    for cuff in ("c1", "c2"):
        readings = [r for m in telemetry if m.topic == f"club/t1/cuffs/{cuff}/telemetry"
                    for r in decode_readings(m.payload)]
        assert [r.seq for r in readings] == list(range(10))  # 1 Hz for 10 s, none at the end
    assert all(isinstance(json.loads(m.payload), dict) for m in telemetry)  # batch 1: objects


def test_a_feed_batches_readings_and_queues_the_rest_at_a_stop() -> None:
    options = SimOptions(squad=(ARM_BFR,), batch=3, rate=4.0, duration_s=2.0)
    stats = SimStats()
    [feed] = feeds_for_run(options, stats, epoch_s=1e9, run_id=1)
    step(feed, 5.0)
    assert feed.finished
    batches = [json.loads(m.payload) for m in take_all(feed)]
    assert [[r["seq"] for r in b] for b in batches] == [[0, 1, 2], [3, 4, 5]]
    feed.close_batches()
    [last] = take_all(feed)
    assert [r["seq"] for r in json.loads(last.payload)] == [6, 7]
    feed.go_offline()
    assert take_all(feed) == [Message("bfr/t1/cuffs/c1/status", b"offline", retain=True)]
    assert (stats.readings, stats.messages, stats.statuses, stats.dropped) == (8, 3, 1, 0)


def test_a_status_change_is_queued_ahead_of_telemetry() -> None:
    options = SimOptions(squad=(ARM_BFR,), faults=(FaultSpec(FaultKind.OFFLINE, "c1", 3.0, 2.0),))
    [messages] = run_feed(options, 8.0, step_s=1.0)
    seen = [m.payload.decode() if m.retain else "reading" for m in messages]
    assert seen == ["online", *["reading"] * 3, "offline", "online", *["reading"] * 4]


def test_a_late_feed_skips_ticks_and_a_full_outbox_drops_the_oldest() -> None:
    stats = SimStats()
    [feed] = feeds_for_run(SimOptions(squad=(ARM_BFR,)), stats, epoch_s=1e9, run_id=1)
    feed.advance(0.0)
    feed.advance(0.5 + MAX_LAG_S)  # within the lag: catch up tick 1
    assert (stats.readings, stats.skipped_ticks) == (2, 0)
    feed.advance(10.0)  # far behind: ticks 2…9 skipped, tick 10 sampled
    assert (stats.readings, stats.skipped_ticks, feed.next_due_s) == (3, 8, 11.0)
    step(feed, 11.0 + OUTBOX_MAX_MESSAGES + 4, start_s=11.0)  # no broker connection takes any
    assert feed.unsent == OUTBOX_MAX_MESSAGES
    assert stats.dropped == stats.readings - OUTBOX_MAX_MESSAGES == 8
    oldest = feed.next_message()
    assert oldest is not None
    assert json.loads(oldest.payload)["seq"] == 8
    feed.drop_unsent()
    assert (feed.unsent, feed.next_message(), stats.dropped) == (0, None, stats.readings)
    assert not feed.finished  # no duration: runs until stopped


def test_the_same_seed_gives_the_same_messages() -> None:
    squad = tuple(generated_squad(5, seed=3))
    options = SimOptions(squad=squad, seed=3, batch=2, pool=True,
                         faults=(FaultSpec(FaultKind.LEAK, "c002", 5.0),))
    assert run_feed(options, 30.0) == run_feed(options, 30.0)
    assert run_feed(options, 30.0) != run_feed(replace(options, seed=4), 30.0)
