"""The resolved limits one cuff's rules run with (SPEC §3), free of any config plumbing."""

from __future__ import annotations

from dataclasses import dataclass

from core.model import Limb, Protocol

# Rolling-mean windows and delays the rules use (SPEC §3, after surgical tourniquet practice).
HARD_WINDOW_S = 5.0  # a reading ≥ the hard ceiling keeps over_pressure critical this long
LOP_MEAN_WINDOW_S = 2.0  # sustained full occlusion
MEAN_WINDOW_S = 5.0  # over/under target band
UNDER_PRESSURE_AFTER_S = 7.0  # a leak is called after 7 s below the band
SENSOR_FAULT_CLEAR_S = 30.0
SESSION_WINDOW_S = 3600.0
BATTERY_LOW_PCT = 15.0
BATTERY_OK_PCT = 20.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleParams:
    """Every limit for one (team, athlete, limb, protocol); resolved by the gateway's config."""

    limb: Limb
    protocol: Protocol = Protocol.BFR
    tolerance_mmhg: float = 15.0
    hard_max_mmhg: float = 250.0
    default_max_mmhg: float = 180.0
    lop_mmhg: float | None = None
    target_mmhg: float | None = None  # from the assignment / prescription; a reading may override
    warn_bout_s: float = 600.0
    max_bout_s: float = 900.0
    min_rest_s: float = 60.0
    min_rest_after_max_s: float = 180.0  # after a bout that hit max_bout_s
    max_session_occlusion_s: float = 1800.0
    max_bouts_per_hour: int | None = None  # ipc: a 5th bout within 60 min
    stale_after_s: float = 10.0
    escalate_after_s: float = 60.0
    ack_silence_s: float = 60.0
    reraise_after_s: float = 30.0
    alert_max_age_s: float = 60.0
