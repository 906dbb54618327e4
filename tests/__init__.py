"""cuffwatch's tests: tests/unit, tests/integration, and what they share in tests/support."""
