"""Grafana's provisioning files: the InfluxDB datasource and the dashboard file providers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from core.config import Settings
from dashboards.catalog import DashboardFile
from dashboards.influxql import DATASOURCE_UID
from dashboards.queries import num

__all__ = [
    "DEFAULT_GRAFANA_PATH",
    "Flavor",
    "dashboard_provisioning",
    "datasource_provisioning",
    "default_flavor",
    "to_yaml_text",
]

Flavor = Literal["v1", "v2"]

# Where Grafana finds the generated dashboards; deploy/grafana/ mounts them there.
DEFAULT_GRAFANA_PATH = "/var/lib/grafana/dashboards/cuffwatch"
# Grafana's main organisation, the one a fresh Grafana has.
ORG_ID = 1
# How often Grafana rereads the dashboard files: a rebuild shows within half a minute.
UPDATE_INTERVAL_S = 30


def default_flavor(settings: Settings) -> Flavor:
    """The datasource variant for the configured InfluxDB: v1 for 1.x, else v2 (2.x/3.x)."""
    return "v1" if settings.influx.api == "v1" else "v2"


def datasource_provisioning(settings: Settings, flavor: Flavor) -> dict[str, Any]:
    """Grafana's datasource provisioning: InfluxDB in InfluxQL mode, uid cuffwatch-influx."""
    influx = settings.influx
    source: dict[str, Any] = {
        "name": "cuffwatch",
        "type": "influxdb",
        "uid": DATASOURCE_UID,
        "access": "proxy",
        "url": influx.url,
        "isDefault": False,
        "editable": False,
    }
    json_data: dict[str, Any] = {"version": "InfluxQL", "httpMode": "POST"}
    if flavor == "v1":
        json_data["dbName"] = influx.database
        source["user"] = influx.username
        source["secureJsonData"] = {"password": "$__env{INFLUX_PASSWORD}"}
    else:
        # InfluxDB 2.x/3.x answer InfluxQL for a bucket through its DBRP mapping.
        json_data["dbName"] = influx.bucket
        json_data["httpHeaderName1"] = "Authorization"
        source["secureJsonData"] = {"httpHeaderValue1": "Token $__env{INFLUX_TOKEN}"}
    source["jsonData"] = json_data
    return {"apiVersion": 1, "datasources": [source]}


def dashboard_provisioning(files: Sequence[DashboardFile], grafana_path: str) -> dict[str, Any]:
    """Grafana's dashboard provisioning: one file provider per folder."""
    providers: dict[str, dict[str, Any]] = {}
    for f in files:
        directory = f.relpath.rsplit("/", 1)[0]
        providers[directory] = {
            "name": f"cuffwatch-{directory.replace('/', '-')}",
            "orgId": ORG_ID,
            "type": "file",
            "folder": f.folder_title,
            "folderUid": f.folder_uid,
            "disableDeletion": False,
            "allowUiUpdates": False,
            "updateIntervalSeconds": UPDATE_INTERVAL_S,
            "options": {"path": f"{grafana_path}/{directory}"},
        }
    return {"apiVersion": 1, "providers": [providers[k] for k in sorted(providers)]}


def _yaml_scalar(value: object) -> str:
    """A YAML scalar: true/false, a number as `num` shows it, else a double-quoted string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return num(value)
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a YAML double-quoted one


def to_yaml_text(data: dict[str, Any], indent: int = 0) -> str:
    """Deterministic YAML for provisioning files (mappings, lists of mappings, scalars)."""
    pad = " " * indent
    out: list[str] = []
    for key in sorted(data):
        value = data[key]
        if isinstance(value, dict):
            out.append(f"{pad}{key}:\n{to_yaml_text(value, indent + 2)}")
        elif isinstance(value, list):
            out.append(f"{pad}{key}:\n")
            for item in value:
                body = to_yaml_text(item, indent + 4)
                out.append(f"{pad}  - {body[indent + 4 :]}")
        else:
            out.append(f"{pad}{key}: {_yaml_scalar(value)}\n")
    return "".join(out)
