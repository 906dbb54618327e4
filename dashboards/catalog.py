"""Every dashboard of a configuration: its file, its Grafana folder and its finished JSON."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.models import dashboard as dash

from core.config import Settings
from dashboards.athlete_history import history_dashboard
from dashboards.gateway_health import gateway_dashboard
from dashboards.influxql import dump_dashboard, load_dashboard
from dashboards.queries import queries_for
from dashboards.squad_live import live_dashboard
from dashboards.uids import folder_uid, stable_uid

__all__ = ["DashboardFile", "dashboard_files"]

# The folder of the dashboards that belong to no team (the gateway's).
GATEWAY_FOLDER_UID = stable_uid("system")
GATEWAY_FOLDER_TITLE = "cuffwatch"


@dataclass(frozen=True, slots=True)
class DashboardFile:
    """One generated dashboard: where it goes, in which folder, and its JSON."""

    relpath: str  # under out_dir/dashboards/
    folder_uid: str
    folder_title: str
    model: dict[str, Any]

    @property
    def uid(self) -> str:
        """The dashboard's uid."""
        return str(self.model["uid"])


def _finish(model: dash.Dashboard) -> dict[str, Any]:
    """Number the panels and return the SDK's canonical JSON of the dashboard.

    Decoding once through the SDK's models fills in the defaults its panel plugins give
    (table cell options and the like), so the committed JSON is a fixed point of
    unmarshal-then-marshal: nothing in it is lost on the way through the models.
    """
    for i, panel in enumerate(model.panels or [], start=1):
        panel.id_val = i  # dashboard-unique, in layout order
    return dump_dashboard(load_dashboard(dump_dashboard(model)))


def dashboard_files(settings: Settings) -> list[DashboardFile]:
    """Every dashboard of the configuration, teams in sorted order, gateway last."""
    q = queries_for(settings)
    files: list[DashboardFile] = []
    for team in sorted(settings.teams):
        title = settings.teams[team].name or team
        for stem, make in (("live", live_dashboard), ("athlete", history_dashboard)):
            model = _finish(make(team, settings, q))
            files.append(DashboardFile(f"teams/{team}/{stem}.json", folder_uid(team), title, model))
    gateway = _finish(gateway_dashboard(settings, q))
    files.append(
        DashboardFile("gateway/gateway.json", GATEWAY_FOLDER_UID, GATEWAY_FOLDER_TITLE, gateway)
    )
    _check_unique_uids(files)
    return files


def _check_unique_uids(files: Sequence[DashboardFile]) -> None:
    """Refuse a uid shared by two dashboards, or by a dashboard and a folder (one uid space)."""
    dashboards = [f.uid for f in files]
    folders = {f.folder_uid for f in files}
    clashes = sorted(
        {u for u in dashboards if dashboards.count(u) > 1} | (set(dashboards) & folders)
    )
    if clashes:
        raise ValueError(f"Grafana uids used twice: {', '.join(clashes)} (rename a team)")
