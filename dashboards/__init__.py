"""Grafana dashboards as code (SPEC §5): `build` writes them, `push` upserts them."""
