"""Property tests of the alert engine (hypothesis): no false alarms from reps, no spam, no late
criticals, a consistent lifecycle, and windows that agree with brute force."""

from __future__ import annotations

import math
import random
from collections import defaultdict

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from alerts.model import AlertKind, AlertState, Change, Transition
from alerts.window import (
    COMPACT_AFTER,
    MAX_WINDOW_SAMPLES,
    RESUM_EVERY,
    OcclusionWindow,
    PairedMeans,
)
from core.model import Severity
from core.params import RuleParams
from tests.support.alert_rig import Rig, arm_params, leg_params
from tests.support.window_model import RollingMean

REP_AMPLITUDE_MMHG = 25.0  # the brief's rep swing: target ± 25 mmHg
MAX_NOISE_SD_MMHG = 3.0  # sensor + regulation noise of a real cuff: a few mmHg


@st.composite
def prescriptions(draw: st.DrawFn) -> RuleParams:
    """A realistic prescription: legs at 60–80 % of LOP 180–260, arms at 40–50 % of 120–180."""
    if draw(st.booleans()):
        lop = draw(st.floats(180.0, 260.0))
        pct = draw(st.floats(0.60, 0.80))
        return leg_params(lop_mmhg=lop, target_mmhg=round(lop * pct, 1))
    lop = draw(st.floats(120.0, 180.0))
    pct = draw(st.floats(0.40, 0.50))
    return arm_params(lop_mmhg=lop, target_mmhg=round(lop * pct, 1))


def noise(rng: random.Random, sd: float) -> float:
    """Gaussian noise, clipped at 4 SD (a real sensor's tails are bounded)."""
    return max(-4 * sd, min(4 * sd, rng.gauss(0.0, sd)))


# -- no false alarms, no spam, no late criticals --------------------------------------------------


@given(
    params=prescriptions(),
    sample_hz=st.floats(1.0, 10.0),
    rep_fraction=st.floats(0.0, 1.0),
    phase=st.floats(0.0, 2 * math.pi),
    noise_sd=st.floats(0.0, MAX_NOISE_SD_MMHG),
    seed=st.integers(0, 2**32 - 1),
)
def test_rep_oscillation_around_target_never_alerts(
    *,
    params: RuleParams,
    sample_hz: float,
    rep_fraction: float,
    phase: float,
    noise_sd: float,
    seed: int,
) -> None:
    """Reps at 0.2–1 Hz swinging ± 25 mmHg, sampled at 1–10 Hz, for 2 min: no alert at all.

    The rep rate stays at or under half the sample rate (Nyquist): above it, samples alias a
    1 Hz rep into a slow drift, e.g. a cuff read at 1 Hz that always catches the peak reports
    a steady target + 25, which no rule on readings can tell from a real excess.
    """
    rng = random.Random(seed)  # the noise: one draw from hypothesis, not one per reading
    rep_hz = 0.2 + rep_fraction * (min(1.0, sample_hz / 2) - 0.2)
    target = params.target_mmhg
    assert target is not None
    rig = Rig(params)
    for i in range(round(120 * sample_hz)):
        t = i / sample_hz
        swing = REP_AMPLITUDE_MMHG * math.sin(2 * math.pi * rep_hz * t + phase)
        rig.read(target + swing + noise(rng, noise_sd), dt=1 / sample_hz)
    assert rig.log == []


@given(
    params=prescriptions(),
    level=st.floats(60.0, 400.0),
    sample_hz=st.floats(1.0, 10.0),
    seconds=st.integers(60, 240),
    noise_sd=st.floats(0.0, MAX_NOISE_SD_MMHG),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_sustained_excess_raises_exactly_one_alert(
    *,
    params: RuleParams,
    level: float,
    sample_hz: float,
    seconds: int,
    noise_sd: float,
    seed: int,
) -> None:
    """Hundreds of readings at one pressure over a limit: one alert, no spam.

    The step up from the target may cross the band before the LOP mean: then the warning is
    raised first and upgraded in place once; nothing is emitted after the first 5 s.
    """
    target, lop = params.target_mmhg, params.lop_mmhg
    assert target is not None
    assert lop is not None
    band = target + params.tolerance_mmhg
    margin = 4 * MAX_NOISE_SD_MMHG  # away from every limit by more than any noise
    assume(level > band + margin)
    assume(all(abs(level - limit) > margin for limit in (lop, params.hard_max_mmhg)))
    rng = random.Random(seed)
    rig = Rig(params)
    rig.hold(target, 10)
    for i in range(round(seconds * sample_hz)):
        out = rig.read(level + noise(rng, noise_sd), dt=1 / sample_hz)
        if i / sample_hz > 5.0:
            assert out.transitions == (), "no transition once the means have settled"
    changes = [t.change for t in rig.log]
    assert changes in ([Change.RAISED], [Change.RAISED, Change.UPDATED])
    assert len({t.alert.id for t in rig.log}) == 1
    assert [t.alert.severity for t in rig.log] == sorted(t.alert.severity for t in rig.log)
    expected = Severity.CRITICAL if level >= lop else Severity.WARNING
    [alert] = rig.engine.open_alerts()
    assert (alert.id, alert.kind, alert.severity) == (rig.log[0].alert.id, AlertKind.OVER_PRESSURE,
                                                       expected)


@st.composite
def pressure_courses(draw: st.DrawFn) -> list[float]:
    """A pressure course of steps (level, readings), from in-band to past the hard ceiling."""
    steps = draw(st.lists(st.tuples(st.floats(90.0, 320.0), st.integers(1, 15)), max_size=12))
    return [level for level, n in steps for _ in range(n)]


def _mean(samples: list[tuple[int, float]], now_ms: int, window_ms: int) -> float | None:
    """Brute force: the mean of samples in [now − window, now], once they span it."""
    if not samples or now_ms - samples[0][0] < window_ms:
        return None
    inside = [x for ts, x in samples if ts >= now_ms - window_ms]
    return sum(inside) / len(inside)


@given(course=pressure_courses(), sample_hz=st.sampled_from([1.0, 2.0, 4.0, 5.0, 10.0]))
def test_over_pressure_is_raised_on_the_reading_that_crosses_first(
    course: list[float], sample_hz: float
) -> None:
    """Against brute-force windows: the RAISED comes on the first reading where a row holds,
    critical iff the hard ceiling or the 2 s LOP mean holds then."""
    params = leg_params()
    assert params.lop_mmhg is not None
    assert params.target_mmhg is not None
    rig = Rig(params)
    samples: list[tuple[int, float]] = []
    expected: tuple[int, Severity] | None = None
    got: tuple[int, Severity] | None = None
    for i, p in enumerate(course):
        out = rig.read(p, dt=1 / sample_hz)
        samples.append((rig.last_ts_ms, p))
        lop_mean = _mean(samples, rig.last_ts_ms, 2000)
        band_mean = _mean(samples, rig.last_ts_ms, 5000)
        critical = p >= params.hard_max_mmhg or (
            lop_mean is not None and lop_mean >= params.lop_mmhg
        )
        warning = band_mean is not None and band_mean > params.target_mmhg + params.tolerance_mmhg
        if expected is None and (critical or warning):
            expected = (i, Severity.CRITICAL if critical else Severity.WARNING)
        for t in out.transitions:
            if t.alert.kind is AlertKind.OVER_PRESSURE and got is None:
                assert t.change is Change.RAISED
                got = (i, t.alert.severity)
        if expected is not None:
            break
    assert got == expected


@given(
    warn_s=st.integers(5, 60),
    extra_s=st.integers(1, 60),
    sample_hz=st.sampled_from([1.0, 2.0, 5.0, 10.0]),
)
def test_over_time_turns_critical_on_the_reading_that_reaches_max_bout(
    warn_s: int, extra_s: int, sample_hz: float
) -> None:
    params = leg_params(warn_bout_s=float(warn_s), max_bout_s=float(warn_s + extra_s))
    rig = Rig(params)
    while True:
        out = rig.read(132.0, dt=1 / sample_hz)
        crit = [t for t in out.transitions if t.alert.severity is Severity.CRITICAL]
        if rig.elapsed >= params.max_bout_s:
            assert [t.alert.kind for t in crit] == [AlertKind.OVER_TIME]
            break
        assert crit == []
    assert rig.changes(AlertKind.OVER_TIME) == [Change.RAISED, Change.UPDATED]


@given(quarters=st.lists(st.integers(1, 12), min_size=1, max_size=60))
def test_a_silent_inflated_cuff_goes_offline_on_the_first_tick_past_stale_after_s(
    quarters: list[int],
) -> None:
    """Ticks at any spacing (in exact quarter seconds): the alert comes on the first tick
    at or past stale_after_s of silence, never before."""
    rig = Rig()
    rig.hold(132.0, 10)
    silent = 0.0
    for q in quarters:
        out = rig.tick(q / 4)
        silent += q / 4
        if silent >= rig.params.stale_after_s:
            assert [(t.change, t.alert.kind) for t in out] == [
                (Change.RAISED, AlertKind.CUFF_OFFLINE)
            ]
            return
        assert out == ()


# -- the lifecycle under any sequence of events ---------------------------------------------------

_PRESSURES = [-30.0, 0.0, 60.0, 100.0, 132.0, 160.0, 230.0, 310.0, 650.0]

_events = st.one_of(
    st.tuples(
        st.just("read"),
        st.sampled_from(_PRESSURES),
        st.sampled_from([0.1, 0.5, 1.0, 1.0, 1.0, 3.0, 12.0]),
        st.integers(1, 15),  # that many readings, ticking after each: sustained phases
        st.booleans(),  # inflated
        st.sampled_from([0.0, 0.0, 0.0, 120.0]),  # away: the broker held this much backlog
        st.one_of(st.none(), st.floats(0.0, 100.0)),  # battery
        st.sampled_from([None, None, None, None, "seq", "elapsed"]),  # glitch
    ),
    st.tuples(st.just("tick"), st.sampled_from([0.0, 0.25, 1.0, 11.0, 31.0, 61.0])),
    st.tuples(st.just("ack"), st.sampled_from(list(AlertKind))),
    st.tuples(st.just("status"), st.booleans()),
)


def _check_history(history: list[Transition]) -> None:
    """Per alert id: a valid lifecycle; per kind: never two alerts open at once."""
    by_id: dict[str, list[Transition]] = defaultdict(list)
    open_by_kind: dict[AlertKind, str] = {}
    escalated: set[str] = set()  # ids escalated in their current firing episode
    for t in history:
        a = t.alert
        by_id[a.id].append(t)
        assert a.updated_at_ms >= a.started_at_ms
        if t.change is Change.RAISED:
            assert len(by_id[a.id]) == 1, "an id is raised once"
            assert a.kind not in open_by_kind, "one open alert per kind"
            open_by_kind[a.kind] = a.id
            assert (a.state, a.escalated) == (AlertState.FIRING, False)
        elif t.change is Change.REOPENED:
            assert a.kind not in open_by_kind
            assert by_id[a.id][-2].change is Change.RESOLVED
            open_by_kind[a.kind] = a.id
            escalated.discard(a.id)
        else:
            assert open_by_kind.get(a.kind) == a.id, f"{t.change} of an alert not open"
            if t.change is Change.RESOLVED:
                del open_by_kind[a.kind]
                assert a.state is AlertState.RESOLVED
            elif t.change is Change.ACKNOWLEDGED:
                assert a.state is AlertState.ACKNOWLEDGED
            elif t.change is Change.REFIRED:
                assert a.state is AlertState.FIRING
            elif t.change is Change.ESCALATED:
                assert t.escalation
                assert a.escalated
                assert a.severity is Severity.CRITICAL
                assert a.state is AlertState.FIRING
                assert a.id not in escalated, "escalates once per firing episode"
                escalated.add(a.id)


@given(events=st.lists(_events, max_size=150))
def test_any_event_sequence_keeps_a_consistent_lifecycle(events: list[tuple[object, ...]]) -> None:
    rig = Rig()
    for event in events:
        match event:
            case ("read", float(p), float(dt), int(n), bool(inflated), float(away), battery, glitch):  # noqa: E501
                assert battery is None or isinstance(battery, float)
                seq = max(0, rig.seq - 5) if glitch == "seq" else None
                elapsed = max(0.0, rig.elapsed - 5.0) if glitch == "elapsed" and inflated else None
                rig.away(away)  # these readings waited in the broker: they arrive in a burst
                for _ in range(n):
                    out = rig.read(
                        p, dt=dt, inflated=inflated, battery=battery, seq=seq, elapsed=elapsed,
                        arrive_dt=dt / 50 if away else None,
                    )
                    seq = elapsed = None  # the glitch, if any, is the first reading's
                    if rig.clock.t - rig.device_t > rig.params.alert_max_age_s:
                        assert not any(t.push for t in out.transitions), "backlog: never pushed"
                    rig.tick()
                if away:
                    rig.catch_up(p, inflated=inflated)
            case ("tick", float(advance)):
                rig.tick(advance)
            case ("ack", AlertKind() as kind):
                rig.ack(kind)
            case ("status", bool(online)):
                rig.status(online)
            case _:
                raise AssertionError(event)
    _check_history(rig.log)
    last: dict[str, Transition] = {t.alert.id: t for t in rig.log}
    still_open = {i for i, t in last.items() if t.change is not Change.RESOLVED}
    assert {a.id for a in rig.engine.open_alerts()} == still_open


# -- windows against brute force -------------------------------------------------------------------


@given(
    window_s=st.sampled_from([2.0, 5.0]),
    steps=st.lists(st.tuples(st.integers(0, 3000), st.floats(-20.0, 600.0)), max_size=300),
)
def test_rolling_mean_matches_brute_force(
    window_s: float, steps: list[tuple[int, float]]
) -> None:
    m = RollingMean(window_s)
    w = round(window_s * 1000)
    run: list[tuple[int, float]] = []  # the unbroken run of samples since the last gap
    ts = 0
    for dt, x in steps:
        ts += dt
        if run and ts - run[-1][0] > w:
            run = []
        run.append((ts, x))
        m.add(ts, x)
        expected = _mean(run, ts, w)
        got = m.mean()
        if expected is None:
            assert got is None
        else:
            assert got is not None
            assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=300)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from([0, 0, 1, 10, 100, 250, 1000, 1999, 2000, 2001, 4999, 5000, 5001,
                             7000]),
            st.floats(-20.0, 600.0),
            st.integers(0, 40),  # 0: reset (a new bout) instead of a sample
        ),
        max_size=600,
    ),
    hold=st.sampled_from([0.0, 2500.0, 5000.0, 10_000.0]),
)
def test_paired_means_are_exactly_two_rolling_means(
    steps: list[tuple[int, float, int]], hold: float
) -> None:
    # stuck clocks (dt 0) hit the sample cap, gaps hit each window's restart (or not, within
    # a sparse cuff's hold), long runs hit compaction and the periodic re-sum: the pair must
    # equal two RollingMeans bit for bit
    pair = PairedMeans(2.0, 5.0)
    short, long = RollingMean(2.0), RollingMean(5.0)
    ts = 0
    for dt, x, op in steps:
        ts += dt
        if op == 0:
            pair.reset()
            short.reset()
            long.reset()
            assert pair.means() == (None, None)
            continue
        got = pair.add(ts, x, hold)
        assert got == (short.add(ts, x, hold), long.add(ts, x, hold))
        assert pair.means() == got == (short.mean(), long.mean())


def test_paired_means_cap_compaction_and_resum_match_on_a_long_stream() -> None:
    import random

    rng = random.Random(3)
    pair = PairedMeans(2.0, 5.0)
    short, long = RollingMean(2.0), RollingMean(5.0)
    ts = 0
    for i in range(RESUM_EVERY * 3):
        ts += rng.choice([0, 0, 0, 5, 10, 100]) if i < 6000 else rng.choice([10, 100, 3000])
        x = rng.uniform(-20.0, 600.0)
        assert pair.add(ts, x) == (short.add(ts, x), long.add(ts, x))
    assert len(pair._ts) <= MAX_WINDOW_SAMPLES + COMPACT_AFTER  # bounded


@given(
    bouts=st.lists(st.tuples(st.integers(0, 900), st.integers(1, 1500)), max_size=30),
    probes=st.lists(st.integers(0, 4000), max_size=5),
)
def test_occlusion_window_matches_brute_force(
    bouts: list[tuple[int, int]], probes: list[int]
) -> None:
    """Bouts as (rest, length) in seconds; probe the window at times after the last one."""
    w = OcclusionWindow(3600.0)
    intervals: list[tuple[int, int]] = []
    t = 0
    for rest, length in bouts:
        start = t + rest * 1000
        t = start + length * 1000
        w.start(start)
        w.end(t)
        intervals.append((start, t))
    now = t
    for step in sorted(probes):
        now = t + step * 1000
        horizon = now - 3_600_000
        expected = sum(max(0, min(e, now) - max(s, horizon)) for s, e in intervals)
        for limit in (expected, expected + 1, 1_800_000):  # the bound never says "below" wrongly
            if w.surely_below(limit, now):
                assert expected < limit
        assert w.occluded_ms(now, now) == expected
        assert w.starts_within(now) == sum(1 for s, _ in intervals if s >= horizon)


@given(
    bouts=st.lists(st.tuples(st.integers(0, 900), st.integers(0, 1500)), max_size=40),
    open_for=st.integers(0, 3000),
    probe=st.integers(0, 4000),
)
def test_session_bound_is_an_upper_bound_with_an_open_bout(
    bouts: list[tuple[int, int]], open_for: int, probe: int
) -> None:
    w = OcclusionWindow(3600.0)
    t = 0
    for rest, length in bouts:
        start = t + rest * 1000
        t = start + length * 1000
        w.start(start)
        w.end(t)
    w.start(t + 1000)
    until = t + 1000 + open_for * 1000
    now = until + probe * 1000
    for limit in (0, 1, 600_000, 1_800_000, 3_600_000):
        if w.surely_below(limit, until):
            assert w.occluded_ms(now, until) < limit
