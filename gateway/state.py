"""Per-cuff state the gateway keeps: roster identity, assignment, dedup window, phase."""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

from core.config import Assignment, Settings
from core.model import CuffPhase, Limb, Reading
from core.params import RuleParams
from gateway.decode import RawReading, Rejected, RejectReason

# Duplicates are (cuff, seq, device time) repeats (SPEC §4): a QoS 1 redelivery repeats the
# whole message. Each cuff keeps, per seq modulo DEDUP_SLOTS, a 64-bit fingerprint of the
# last reading with that seq: its seq, device time, pressure and elapsed time. A reading is a
# duplicate only if it matches all four, so a restarted cuff counting from 0 again, whatever
# its clock did, is new data (dropping a real reading can hide a danger; storing a repeat
# is harmless). A redelivery is of messages not yet acknowledged: at most the broker's
# in-flight window (deploy/mosquitto: max_inflight_messages 1000, fleet-wide) behind the
# newest seq, so 1,024 slots catch it. 8 KiB per cuff, allocated at its first reading.
DEDUP_SLOTS = 1024
_SLOT_MASK = DEDUP_SLOTS - 1
# The limits a cuff resolved, per (athlete, limb), are kept until the assignment changes; a
# reading may name another roster athlete or limb (SPEC §2), so past this many the cache
# starts over: what a device sends cannot grow it beyond a few KiB.
PARAMS_CACHE_SIZE = 32


@dataclass(slots=True)
class Dedup:
    """The recent readings of one cuff, by fingerprint, to drop redeliveries."""

    slots: array[int] = field(default_factory=lambda: array("q", bytes(8 * DEDUP_SLOTS)))

    def seen(self, seq: int, device_ts: int, pressure: float, elapsed: float) -> bool:
        """Remember this reading; True if exactly this reading was seen recently."""
        mark = hash((seq, device_ts, pressure, elapsed)) or 1  # 0 marks an unused slot
        slot = seq & _SLOT_MASK
        slots = self.slots
        if slots[slot] == mark:
            return True
        slots[slot] = mark
        return False


@dataclass(slots=True)
class CuffState:
    """Everything the gateway remembers about one roster cuff."""

    team: str
    cuff: str
    roster_athlete: str
    roster_limb: Limb
    assignment: Assignment | None = None
    phase: CuffPhase = CuffPhase.UNKNOWN
    online: bool | None = None
    last_seen_s: float = 0.0  # gateway clock of the last accepted reading
    last_pressure: float | None = None
    last_elapsed_s: float = 0.0
    battery_pct: float | None = None
    accepted: int = 0
    # the athletes a reading's `athlete` (or an assignment) may name: the team's roster
    # (`Settings.known_athletes`, shared by the team's cuffs). A device cannot mint athletes:
    # each would be an InfluxDB tag value, and limits resolved and cached.
    known_athletes: frozenset[str] = frozenset()
    _params: dict[tuple[str, Limb], RuleParams] = field(default_factory=dict)
    _dedup: Dedup | None = None

    @property
    def athlete(self) -> str:
        return self.assignment.athlete if self.assignment else self.roster_athlete

    @property
    def limb(self) -> Limb:
        if self.assignment and self.assignment.limb:
            return self.assignment.limb
        return self.roster_limb

    def is_duplicate(self, seq: int, device_ts: int, pressure: float, elapsed: float) -> bool:
        """Remember this reading; True if it repeats one seen recently (a redelivery)."""
        dedup = self._dedup
        if dedup is None:
            dedup = self._dedup = Dedup()
        return dedup.seen(seq, device_ts, pressure, elapsed)

    def set_assignment(self, assignment: Assignment | None) -> None:
        self.assignment = assignment
        self._params.clear()

    def check_athlete(self, athlete: str) -> None:
        """Rejected unless a reading or an assignment may name `athlete`: one of the team's
        roster (assignments name only those too)."""
        if athlete not in self.known_athletes:
            raise Rejected(
                RejectReason.UNKNOWN_ATHLETE,
                f"athlete '{athlete}' is not in team {self.team}'s roster",
            )

    def params(self, settings: Settings, athlete: str, limb: Limb) -> RuleParams:
        """The cuff's resolved limits, cached per (athlete, limb) until the assignment changes."""
        key = (athlete, limb)
        cache = self._params
        cached = cache.get(key)
        if cached is None:
            cached = settings.rule_params(self.team, athlete, limb, self.assignment)
            if len(cache) >= PARAMS_CACHE_SIZE:
                cache.clear()
            cache[key] = cached
        return cached


class Fleet:
    """The roster's cuffs by id, and the conversion of validated input into `Reading`s."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cuffs: dict[str, CuffState] = {}
        for team_id, team in settings.teams.items():
            athletes = settings.known_athletes(team_id)
            for cuff_id, rc in team.cuffs.items():
                self.cuffs[cuff_id] = CuffState(
                    team_id, cuff_id, rc.athlete or "", rc.limb, known_athletes=athletes
                )
        alerts = settings.alerts
        self._max_ahead_ms = int(alerts.max_clock_skew_s * 1000)
        self._max_behind_ms = int(alerts.max_backlog_s * 1000)

    def lookup(self, team: str, cuff: str) -> CuffState:
        """The roster cuff for a topic's (team, cuff), or Rejected."""
        state = self.cuffs.get(cuff)
        if state is None:
            if team not in self.settings.teams:
                raise Rejected(RejectReason.UNKNOWN_TEAM, f"team {team} is not in the roster")
            raise Rejected(RejectReason.UNKNOWN_CUFF, f"cuff {cuff} is not in the roster")
        if state.team != team:
            raise Rejected(
                RejectReason.WRONG_TEAM, f"cuff {cuff} belongs to another team, not {team}"
            )
        return state

    def to_reading(
        self, state: CuffState, raw: RawReading, received_ms: int, device_ts: int | None = None
    ) -> Reading:
        """Resolve identity and clock for one validated reading (`device_ts`: its ts_ms()).

        Its `athlete`, if any, is one `CuffState.check_athlete` allowed (the caller checks).
        """
        ts = raw.ts_ms() if device_ts is None else device_ts
        skew: float | None = None
        if ts - received_ms > self._max_ahead_ms or received_ms - ts > self._max_behind_ms:
            skew = (ts - received_ms) / 1000.0
            # receive time instead (SPEC §2). Readings stored at one receive time (those of
            # one array) stay distinct points by their seq (ingest/lineproto.py). The rules
            # still see the device's own time (received + skew).
            ts = received_ms
        # positional, in field order (team, cuff, athlete, limb, ts_ms, seq, pressure_mmhg,
        # elapsed_s, inflated, target_mmhg, battery_pct, clock_skew_s, received_ms): once
        # per reading, and keywords cost a third more
        return Reading(
            state.team, state.cuff, raw.athlete or state.athlete, raw.limb or state.limb, ts,
            raw.seq, raw.pressure_mmhg, raw.elapsed_s, raw.is_inflated(), raw.target_mmhg,
            raw.battery_pct, skew, received_ms,
        )
