"""The root of the simulator's exceptions."""

from __future__ import annotations


class SimulationError(Exception):
    """The simulation cannot run: the broker refused us; the message says why."""
