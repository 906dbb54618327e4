"""Grafana dashboards and provisioning as code (SPEC §5), built from the configuration.

Per team: a squad live dashboard and an athlete history dashboard, in a folder of the
team's own; one gateway health dashboard. Every query is InfluxQL against the provisioned
datasource (uid `cuffwatch-influx`). Output is deterministic so that committed files diff.

This module writes the files; what each holds is built by its own module:
`squad_live`, `athlete_history` and `gateway_health` (one dashboard each, from the shared
`parts` and the InfluxQL of `queries`), `catalog` (every dashboard with its folder and
path, uids from `uids`) and `provisioning` (the datasource and dashboard providers).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from core.config import Settings, load_settings
from dashboards.catalog import DashboardFile, dashboard_files
from dashboards.provisioning import (
    DEFAULT_GRAFANA_PATH,
    Flavor,
    dashboard_provisioning,
    datasource_provisioning,
    default_flavor,
    to_yaml_text,
)
from dashboards.uids import folder_uid, stable_uid

# The package's public names, re-exported here so that callers need import this module only.
__all__ = [
    "DashboardFile",
    "Flavor",
    "build",
    "build_command",
    "dashboard_files",
    "folder_uid",
    "stable_uid",
]


def to_json_text(data: object) -> str:
    """Deterministic JSON: sorted keys, two-space indent, trailing newline."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def build(
    settings: Settings,
    out_dir: Path,
    *,
    flavor: Flavor | None = None,
    grafana_path: str = DEFAULT_GRAFANA_PATH,
) -> list[Path]:
    """Write dashboards and provisioning under `out_dir`; return the paths written, sorted."""
    files = dashboard_files(settings)
    outputs: dict[Path, str] = {
        out_dir / "dashboards" / f.relpath: to_json_text(f.model) for f in files
    }
    provisioning = out_dir / "provisioning"
    outputs[provisioning / "datasources" / "cuffwatch.yaml"] = to_yaml_text(
        datasource_provisioning(settings, flavor or default_flavor(settings))
    )
    outputs[provisioning / "dashboards" / "cuffwatch.yaml"] = to_yaml_text(
        dashboard_provisioning(files, grafana_path)
    )
    for path in sorted(outputs):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(outputs[path], encoding="utf-8")
    return sorted(outputs)


def build_command(settings: Settings, out_dir: Path) -> int:
    """`cuffwatch dashboards build`: write everything, print one line per file; exit code."""
    try:
        paths = build(settings, out_dir)
    except (OSError, ValueError) as exc:
        print(f"dashboards build: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m dashboards.build CONFIG OUT_DIR`: rebuild committed output."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m dashboards.build CONFIG OUT_DIR", file=sys.stderr)
        return 2
    return build_command(load_settings(args[0]), Path(args[1]))


if __name__ == "__main__":
    raise SystemExit(main())
