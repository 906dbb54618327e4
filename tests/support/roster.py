"""Team rosters (the `[teams]` settings) written as briefly as the tests think of them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# A cuff is its athlete's id (on the left leg), or (athlete, limb).
CuffSpec = str | tuple[str, str]


def prescribed(athlete: str, limb: str = "left_leg", *, lop_mmhg: int = 220,
               target_pct_lop: int = 60) -> dict[str, Any]:
    """`athletes` settings with one prescription: by default LOP 220, target 60 % = 132 mmHg."""
    rx = {"lop_mmhg": lop_mmhg, "target_pct_lop": target_pct_lop}
    return {athlete: {"prescriptions": {limb: rx}}}


def roster(teams: Mapping[str, Mapping[str, CuffSpec]], *,
           athletes: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """`[teams]` settings from {team: {cuff: athlete or (athlete, limb)}}.

    `athletes` gives a team its `athletes` table (see `prescribed`); the team's other cuffs'
    athletes are then listed in it without a prescription, as a team with an athletes table
    must list every athlete its cuffs name.
    """
    out: dict[str, Any] = {}
    for team, cuffs in teams.items():
        entry: dict[str, Any] = {"cuffs": {}}
        for cuff, spec in cuffs.items():
            athlete, limb = (spec, "left_leg") if isinstance(spec, str) else spec
            entry["cuffs"][cuff] = {"athlete": athlete, "limb": limb}
        if athletes and team in athletes:
            named: dict[str, Any] = {c["athlete"]: {} for c in entry["cuffs"].values()}
            entry["athletes"] = named | dict(athletes[team])
        out[team] = entry
    return out
