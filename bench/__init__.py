"""Benchmarks of the gateway against the ceilings of its broker and database (`python -m bench`).

Every figure is measured in one run on one machine, with real Mosquitto and InfluxDB 1.x
processes on loopback ports, and reported as a ratio to the ceilings measured in that run.
They are figures, never assertions: `bench/results/latest.{json,md,png}` hold the last run.
"""

__all__: list[str] = []
