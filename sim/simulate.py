"""`cuffwatch simulate` (SPEC §8): a virtual squad of cuffs running realistic sessions.

The entry point the CLI and the demo call; the work is in:
- `sim.squad`: the pure squad model, virtual cuffs with seeded session scripts and faults;
- `sim.faults`: the injectable faults and the `--fault` syntax;
- `sim.roster`: squads from a config's roster, or generated (with a roster to match);
- `sim.options`: `SimOptions` and the `simulate` flags;
- `sim.feed`: pure, what each broker connection publishes and when;
- `sim.publisher`: the MQTT side, `run_simulation` (every gmqtt reach of the simulator).
"""

from __future__ import annotations

from sim.errors import SimulationError
from sim.faults import FaultKind, FaultSpec, parse_duration
from sim.feed import SimStats
from sim.options import SimOptions, add_arguments, options_from_args
from sim.publisher import run_simulation
from sim.roster import generated_roster, generated_squad, roster_from_squad, squad_from_settings
from sim.squad import CuffSpec, SimReading, SquadSimulator, Stage, VirtualCuff, encode_readings

__all__ = [
    "CuffSpec",
    "FaultKind",
    "FaultSpec",
    "SimOptions",
    "SimReading",
    "SimStats",
    "SimulationError",
    "SquadSimulator",
    "Stage",
    "VirtualCuff",
    "add_arguments",
    "encode_readings",
    "generated_roster",
    "generated_squad",
    "options_from_args",
    "parse_duration",
    "roster_from_squad",
    "run_simulation",
    "squad_from_settings",
]
