"""Squads of virtual cuffs: from a config's roster, or generated (and a roster to match)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from core.config import Settings
from core.model import Limb, Protocol
from sim.squad import CuffSpec

__all__ = ["generated_roster", "generated_squad", "roster_from_squad", "squad_from_settings"]

# The squad (SPEC §1 typical practice).
ARM_LOP_MMHG = (140, 180)  # limb occlusion pressure, upper arm
LEG_LOP_MMHG = (180, 240)  # limb occlusion pressure, thigh
LOP_SIDE_SPREAD_MMHG = 6  # left and right limbs of one athlete differ by a few mmHg
ARM_PCT_LOP = (40, 50)  # working pressure on arms, % of LOP
LEG_PCT_LOP = (60, 80)  # working pressure on legs, % of LOP
IPC_TARGET_MMHG = (200, 220)  # full occlusion for ischaemic pre-conditioning
IPC_SHARE = 0.25  # a quarter of a generated squad is on a recovery (IPC) protocol
LEG_SHARE = 0.6  # most BFR work in team sports is on the legs
# Used when a roster cuff's athlete has no prescription: the middle of the typical ranges.
DEFAULT_LOP_MMHG = {"arm": 160.0, "leg": 210.0}
DEFAULT_PCT_LOP = {"arm": 45.0, "leg": 70.0}
DEFAULT_IPC_TARGET_MMHG = 210.0


def _default_target(limb: Limb, protocol: Protocol) -> float:
    """A typical target when the roster prescribes none."""
    if protocol is Protocol.IPC:
        return DEFAULT_IPC_TARGET_MMHG
    return round(DEFAULT_LOP_MMHG[limb.kind] * DEFAULT_PCT_LOP[limb.kind] / 100.0, 1)


def squad_from_settings(settings: Settings) -> list[CuffSpec]:
    """Every roster cuff as a virtual cuff: its athlete, limb and prescribed target."""
    squad = []
    for team_id, team in settings.teams.items():
        for cuff_id, roster in team.cuffs.items():
            athlete = roster.athlete or cuff_id  # an unassigned cuff still reports
            limb = roster.limb
            params = settings.rule_params(team_id, athlete, limb)
            athlete_cfg = team.athletes.get(athlete)
            rx = athlete_cfg.prescriptions.get(limb) if athlete_cfg else None
            squad.append(
                CuffSpec(
                    team=team_id,
                    cuff=cuff_id,
                    athlete=athlete,
                    limb=limb,
                    protocol=params.protocol,
                    target_mmhg=params.target_mmhg or _default_target(limb, params.protocol),
                    lop_mmhg=params.lop_mmhg,
                    target_pct_lop=rx.target_pct_lop if rx else None,
                )
            )
    return squad


def generated_squad(n_cuffs: int, teams: int = 1, seed: int = 0) -> list[CuffSpec]:
    """A squad of `n_cuffs` over teams `t1`…: athletes wear a pair (both arms or both legs)."""
    if n_cuffs < 1 or not 1 <= teams <= n_cuffs:
        raise ValueError(f"need ≥ 1 cuff and 1…{n_cuffs} teams, not {teams}")
    rng = random.Random(f"squad:{seed}")
    by_team: dict[str, list[str]] = {f"t{k + 1}": [] for k in range(teams)}
    for i in range(n_cuffs):
        by_team[f"t{i * teams // n_cuffs + 1}"].append(f"c{i + 1:03d}")
    squad: list[CuffSpec] = []
    athletes = 0
    for team, cuffs in by_team.items():
        for pair in range(0, len(cuffs), 2):
            athletes += 1
            athlete = f"a-{athletes:03d}"
            protocol = Protocol.IPC if rng.random() < IPC_SHARE else Protocol.BFR
            legs = rng.random() < LEG_SHARE
            sides = (Limb.LEFT_LEG, Limb.RIGHT_LEG) if legs else (Limb.LEFT_ARM, Limb.RIGHT_ARM)
            lop_base = rng.randint(*(LEG_LOP_MMHG if legs else ARM_LOP_MMHG))
            pct = float(rng.randint(*(LEG_PCT_LOP if legs else ARM_PCT_LOP)))
            ipc_target = float(rng.randint(*IPC_TARGET_MMHG))
            for cuff, limb in zip(cuffs[pair : pair + 2], sides, strict=False):
                spread = rng.randint(-LOP_SIDE_SPREAD_MMHG // 2, LOP_SIDE_SPREAD_MMHG // 2)
                if protocol is Protocol.IPC:
                    spec = CuffSpec(team=team, cuff=cuff, athlete=athlete, limb=limb,
                                    protocol=protocol, target_mmhg=ipc_target)
                else:
                    lop = float(lop_base + spread)
                    spec = CuffSpec(team=team, cuff=cuff, athlete=athlete, limb=limb,
                                    protocol=protocol, target_mmhg=round(lop * pct / 100.0, 1),
                                    lop_mmhg=lop, target_pct_lop=pct)
                squad.append(spec)
    return squad


def roster_from_squad(squad: Sequence[CuffSpec]) -> dict[str, Any]:
    """The SPEC §7 `teams` table for a squad: athletes with prescriptions, cuffs with owners."""
    teams: dict[str, Any] = {}
    for spec in squad:
        team = teams.setdefault(
            spec.team, {"name": f"Team {spec.team}", "athletes": {}, "cuffs": {}}
        )
        athlete = team["athletes"].setdefault(
            spec.athlete, {"name": f"Athlete {spec.athlete}", "prescriptions": {}}
        )
        rx: dict[str, Any] = {"protocol": spec.protocol.value}
        if spec.lop_mmhg is not None:
            rx["lop_mmhg"] = spec.lop_mmhg
        if spec.target_pct_lop is not None:
            rx["target_pct_lop"] = spec.target_pct_lop
        else:
            rx["target_mmhg"] = spec.target_mmhg
        athlete["prescriptions"][spec.limb.value] = rx
        team["cuffs"][spec.cuff] = {"athlete": spec.athlete, "limb": spec.limb.value}
    return teams


def generated_roster(n_cuffs: int, teams: int = 1, seed: int = 0) -> dict[str, Any]:
    """`roster_from_squad(generated_squad(...))`: configure gateway and simulator alike."""
    return roster_from_squad(generated_squad(n_cuffs, teams, seed))
