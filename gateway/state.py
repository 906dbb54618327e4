"""Per-cuff state the gateway keeps: roster identity, assignment, dedup window, phase."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from alerts.params import RuleParams
from gateway.config import Assignment, Settings
from gateway.decode import ReadingIn, Rejected, RejectReason
from gateway.model import CuffPhase, Limb, Reading

# QoS 1 redelivery repeats recent messages; a window of this many readings per cuff catches
# them (a reconnect redelivers at most the broker's in-flight window) at ~100 KiB per cuff.
DEDUP_WINDOW = 2048


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
    last_ts_ms: int = 0  # the last timestamp stored for this cuff
    _params: dict[tuple[str, Limb], RuleParams] = field(default_factory=dict)
    _seen: set[tuple[int, int]] = field(default_factory=set)
    _order: deque[tuple[int, int]] = field(default_factory=deque)

    @property
    def athlete(self) -> str:
        return self.assignment.athlete if self.assignment else self.roster_athlete

    @property
    def limb(self) -> Limb:
        if self.assignment and self.assignment.limb:
            return self.assignment.limb
        return self.roster_limb

    def is_duplicate(self, seq: int, device_ts: int) -> bool:
        """Remember (seq, device ts); True if this exact reading was seen recently.

        Keyed on the device timestamp too, so a cuff that reboots and restarts its counter
        at 0 is not mistaken for a redelivery.
        """
        key = (seq, device_ts)
        if key in self._seen:
            return True
        self._seen.add(key)
        self._order.append(key)
        if len(self._order) > DEDUP_WINDOW:
            self._seen.discard(self._order.popleft())
        return False

    def set_assignment(self, assignment: Assignment | None) -> None:
        self.assignment = assignment
        self._params.clear()

    def params(self, settings: Settings, athlete: str, limb: Limb) -> RuleParams:
        """The cuff's resolved limits, cached per (athlete, limb) until the assignment changes."""
        key = (athlete, limb)
        cached = self._params.get(key)
        if cached is None:
            cached = settings.rule_params(self.team, athlete, limb, self.assignment)
            self._params[key] = cached
        return cached


class Fleet:
    """The roster's cuffs by id, and the conversion of validated input into `Reading`s."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cuffs: dict[str, CuffState] = {}
        for team_id, team in settings.teams.items():
            for cuff_id, rc in team.cuffs.items():
                self.cuffs[cuff_id] = CuffState(team_id, cuff_id, rc.athlete or "", rc.limb)
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

    def to_reading(self, state: CuffState, raw: ReadingIn, received_ms: int) -> Reading:
        """Resolve identity and clock for one validated reading."""
        ts = raw.ts_ms()
        skew: float | None = None
        if ts - received_ms > self._max_ahead_ms or received_ms - ts > self._max_behind_ms:
            skew = (ts - received_ms) / 1000.0
            # receive time instead; kept unique per cuff so that the readings of one array
            # do not overwrite each other in InfluxDB (same series, same timestamp)
            ts = max(received_ms, state.last_ts_ms + 1)
        state.last_ts_ms = ts
        return Reading(
            team=state.team,
            cuff=state.cuff,
            athlete=raw.athlete or state.athlete,
            limb=raw.limb or state.limb,
            ts_ms=ts,
            seq=raw.seq,
            pressure_mmhg=raw.pressure_mmhg,
            elapsed_s=raw.elapsed_s,
            inflated=raw.is_inflated(),
            target_mmhg=raw.target_mmhg,
            battery_pct=raw.battery_pct,
            clock_skew_s=skew,
            received_ms=received_ms,
        )
