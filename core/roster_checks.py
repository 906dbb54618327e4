"""The roster's cross-checks: what is dangerous only together (SPEC §7 teams and athletes).

A prescribed target at or above its hard ceiling, or a bfr target at or above LOP, would make
every bout at the prescribed pressure a critical over_pressure: staff would learn to ignore
the alert that matters most. A roster cuff naming an athlete its team does not list would
silently lose that athlete's prescription. Each problem is one line naming its key.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any, NamedTuple

from core.model import Protocol
from core.params import RuleParams


class Prescribed(NamedTuple):
    """One prescription as written (its targets) and as resolved for its athlete and limb."""

    athlete: str
    target_mmhg: float | None
    target_pct_lop: float | None
    lop_mmhg: float | None
    params: RuleParams


def unknown_athletes(
    team_id: str, athletes: Collection[str], cuff_athletes: Mapping[str, str | None]
) -> list[str]:
    """Roster cuffs naming an athlete the team's athletes table does not list.

    A team that lists its athletes has their prescriptions there: a cuff naming someone else
    is almost always a typo. A team without an athletes table names its athletes by id only
    (default limits, nothing to lose); nothing is refused there.
    """
    if not athletes:
        return []
    known = ", ".join(sorted(athletes))
    return [
        f"teams.{team_id}.cuffs.{cuff}.athlete: {athlete!r} is not in "
        f"teams.{team_id}.athletes ({known}): fix the id, or list the athlete there (a name "
        "is enough)"
        for cuff, athlete in cuff_athletes.items()
        if athlete is not None and athlete not in athletes
    ]


def dangerous_targets(
    team_id: str, prescribed: Iterable[Prescribed], overrides: Mapping[str, Any]
) -> list[str]:
    """Targets not below their hard ceiling, or (bfr) not below their LOP.

    `overrides`: the team's `[alerts]` overrides, to name the key that set the ceiling.
    """
    problems: list[str] = []
    for rx in prescribed:
        p = rx.params
        if p.target_mmhg is None:
            continue
        loc = f"teams.{team_id}.athletes.{rx.athlete}.prescriptions.{p.limb.value}"
        if rx.target_mmhg is not None:
            what = f"target_mmhg {p.target_mmhg:g}"
        else:
            what = (f"target_pct_lop {rx.target_pct_lop:g} % of lop_mmhg {rx.lop_mmhg:g} = "
                    f"{p.target_mmhg:g} mmHg")
        if p.target_mmhg >= p.hard_max_mmhg:
            problems.append(
                f"{loc}: {what} is not below the hard ceiling of {p.hard_max_mmhg:g} mmHg "
                f"({_ceiling_key(team_id, p, overrides)}): every bout at the target would be "
                "a critical over_pressure"
            )
        elif p.protocol is Protocol.BFR and p.lop_mmhg is not None and p.target_mmhg >= p.lop_mmhg:
            problems.append(
                f"{loc}: {what} is not below lop_mmhg {p.lop_mmhg:g}: that is full occlusion, "
                'which bfr never prescribes (for full occlusion, protocol = "ipc")'
            )
    return problems


def _ceiling_key(team_id: str, p: RuleParams, overrides: Mapping[str, Any]) -> str:
    """Which key set the hard ceiling `p` uses: the team's override or [alerts]."""
    group = "ipc" if p.protocol is Protocol.IPC else ("leg" if p.limb.is_leg else "arm")
    table = overrides.get(group)
    if isinstance(table, Mapping) and "hard_max_mmhg" in table:
        return f"teams.{team_id}.alerts.{group}.hard_max_mmhg"
    return f"alerts.{group}.hard_max_mmhg"
