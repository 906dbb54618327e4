"""What both test tiers share: helper modules only (fixtures live in the conftest.py files).

Nothing here is collected by pytest (no module is named `test_*`), and nothing starts a
server or a process on import. The benchmarks (bench/) use the same modules, run from the
repository root as `python -m bench`.
"""
