"""Per-cuff state the gateway keeps: roster identity, assignment, dedup window, phase."""

from __future__ import annotations

from dataclasses import dataclass, field

from alerts.params import RuleParams
from gateway.config import Assignment, Settings
from gateway.decode import RawReading, Rejected, RejectReason
from gateway.model import CuffPhase, Limb, Reading

# QoS 1 redelivery repeats recent messages (a reconnect redelivers the unacknowledged ones,
# which the ack-after-fsync path keeps to a few batches); a bitmap over the last 2,048 seq
# numbers catches them in ~300 bytes per cuff (a set of (seq, ts) tuples took ~390 KiB).
DEDUP_WINDOW = 2048
_WINDOW_MASK = (1 << DEDUP_WINDOW) - 1
_SEQ_MOD = 1 << 32
_SEQ_HALF = 1 << 31


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
    _high_seq: int = -1  # highest seq seen (serial arithmetic mod 2^32); -1: none yet
    _high_ts: int = 0  # the newest device time seen
    _seen: int = 0  # bit i set: seq (_high_seq - i) mod 2^32 was seen

    @property
    def athlete(self) -> str:
        return self.assignment.athlete if self.assignment else self.roster_athlete

    @property
    def limb(self) -> Limb:
        if self.assignment and self.assignment.limb:
            return self.assignment.limb
        return self.roster_limb

    def is_duplicate(self, seq: int, device_ts: int) -> bool:
        """Remember this reading; True if it is a redelivery of one seen recently.

        A seq already seen counts as a redelivery only if its device time is not newer than
        the newest seen: a cuff that reboots and restarts its counter at 0 sends newer
        readings, and those start a fresh window instead of being dropped.
        """
        high = self._high_seq
        if high < 0:
            self._high_seq, self._high_ts, self._seen = seq, device_ts, 1
            return False
        behind = (high - seq) % _SEQ_MOD
        if behind >= _SEQ_HALF:  # ahead of the highest: slide the window forward
            ahead = _SEQ_MOD - behind
            self._seen = ((self._seen << ahead) | 1) & _WINDOW_MASK if ahead < DEDUP_WINDOW else 1
            self._high_seq = seq
            self._high_ts = max(self._high_ts, device_ts)
            return False
        if behind >= DEDUP_WINDOW:
            return False  # older than the window: stored again at worst, which is harmless
        bit = 1 << behind
        if self._seen & bit:
            if device_ts <= self._high_ts:
                return True
            # the same seq with a newer time: the counter restarted (a reboot)
            self._high_seq, self._high_ts, self._seen = seq, device_ts, 1
            return False
        self._seen |= bit
        self._high_ts = max(self._high_ts, device_ts)
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

    def to_reading(
        self, state: CuffState, raw: RawReading, received_ms: int, device_ts: int | None = None
    ) -> Reading:
        """Resolve identity and clock for one validated reading (`device_ts`: its ts_ms())."""
        ts = raw.ts_ms() if device_ts is None else device_ts
        skew: float | None = None
        if ts - received_ms > self._max_ahead_ms or received_ms - ts > self._max_behind_ms:
            skew = (ts - received_ms) / 1000.0
            # receive time instead; kept unique per cuff so that the readings of one array
            # do not overwrite each other in InfluxDB (same series, same timestamp)
            ts = max(received_ms, state.last_ts_ms + 1)
        state.last_ts_ms = ts
        # positional, in field order (team, cuff, athlete, limb, ts_ms, seq, pressure_mmhg,
        # elapsed_s, inflated, target_mmhg, battery_pct, clock_skew_s, received_ms): once
        # per reading, and keywords cost a third more
        return Reading(
            state.team, state.cuff, raw.athlete or state.athlete, raw.limb or state.limb, ts,
            raw.seq, raw.pressure_mmhg, raw.elapsed_s, raw.is_inflated(), raw.target_mmhg,
            raw.battery_pct, skew, received_ms,
        )
