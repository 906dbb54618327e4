"""The dashboards under test: the example configuration's, and how to read their JSON."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from core.config import Settings, load_settings
from dashboards.build import dashboard_files
from dashboards.influxql import DATASOURCE_UID
from tests.support.paths import REPO

EXAMPLE = REPO / "dashboards" / "example.toml"
GENERATED = REPO / "dashboards" / "generated"


@functools.cache
def example_settings() -> Settings:
    """The example configuration the committed dashboards are built from."""
    return load_settings(EXAMPLE)


def example_boards() -> dict[str, dict[str, Any]]:
    """Every generated dashboard of the example, by its path under dashboards/."""
    return {f.relpath: f.model for f in dashboard_files(example_settings())}


def panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    """Every non-row panel of a dashboard, in order."""
    return [p for p in model["panels"] if p["type"] != "row"]


def panel(model: dict[str, Any], title: str) -> dict[str, Any]:
    """The panel with this title."""
    (found,) = [p for p in panels(model) if p["title"] == title]
    return dict(found)


def target(p: dict[str, Any]) -> str:
    """The panel's single InfluxQL query."""
    (t,) = p["targets"]
    assert t["rawQuery"] is True
    assert t["datasource"] == {"type": "influxdb", "uid": DATASOURCE_UID}
    return str(t["query"])


def variable(model: dict[str, Any], name: str) -> dict[str, Any]:
    """The template variable with this name."""
    (found,) = [v for v in model["templating"]["list"] if v["name"] == name]
    return dict(found)


def every_query(model: dict[str, Any]) -> Iterator[tuple[str, str, str | None]]:
    """(where, InfluxQL, panel timeFrom) of every panel target, variable and annotation."""
    for p in panels(model):
        for t in p["targets"]:
            yield f"panel {p['title']!r}", t["query"], p.get("timeFrom")
    for v in model["templating"]["list"]:
        if v["type"] == "query":
            yield f"variable {v['name']}", v["query"], None
    for a in model["annotations"].get("list", []):
        yield f"annotation {a['name']}", a["target"]["query"], None
