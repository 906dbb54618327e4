"""An InfluxQL dataquery for the Grafana Foundation SDK, which ships no InfluxDB builder.

`InfluxQLQuery` mirrors the JSON of Grafana's InfluxDB datasource (`InfluxQuery`) in raw
InfluxQL mode. It is registered with the SDK's runtime for the `influxdb` datasource type,
so `Dashboard.from_json` decodes our panel targets into it instead of an untyped bag, and
`load_dashboard` does the same for annotation targets, which the SDK types for Grafana's
built-in annotation datasource only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, Self

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import dashboard

__all__ = [
    "DATASOURCE_TYPE",
    "DATASOURCE_UID",
    "InfluxQL",
    "InfluxQLQuery",
    "ResultFormat",
    "datasource_ref",
    "dump_dashboard",
    "load_dashboard",
    "register",
]

DATASOURCE_TYPE = "influxdb"
# The uid our provisioning gives the datasource: dashboards reference it, never a name.
DATASOURCE_UID = "cuffwatch-influx"

ResultFormat = Literal["time_series", "table"]


def datasource_ref() -> dashboard.DataSourceRef:
    """A reference to the provisioned cuffwatch InfluxDB datasource."""
    return dashboard.DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)


# Grafana 11 stores an annotation's target as an ordinary query of the annotation's
# datasource, so this one class serves panels (a Dataquery) and annotations (where the
# SDK expects its AnnotationTarget, typed for the built-in datasource only).
@dataclass(eq=False, kw_only=True)
class InfluxQLQuery(cogvariants.Dataquery, dashboard.AnnotationTarget):
    """One raw InfluxQL query as Grafana's InfluxDB datasource stores it."""

    ref_id: str = ""
    query: str = ""
    raw_query: bool = True
    result_format: ResultFormat = "time_series"
    alias: str | None = None
    hide: bool | None = None
    datasource: dashboard.DataSourceRef | None = None
    from_annotations: bool | None = None
    title_column: str | None = None
    text_column: str | None = None
    tags_column: str | None = None

    def to_json(self) -> dict[str, object]:
        """The query as Grafana's dashboard JSON holds it."""
        payload: dict[str, object] = {
            "refId": self.ref_id,
            "query": self.query,
            "rawQuery": self.raw_query,
            "resultFormat": self.result_format,
        }
        optional: dict[str, object | None] = {
            "alias": self.alias,
            "hide": self.hide,
            "datasource": self.datasource,
            "fromAnnotations": self.from_annotations,
            "titleColumn": self.title_column,
            "textColumn": self.text_column,
            "tagsColumn": self.tags_column,
        }
        payload.update({k: v for k, v in optional.items() if v is not None})
        return payload

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        """Decode Grafana's JSON; the inverse of `to_json`."""
        ds = data.get("datasource")
        return cls(
            ref_id=data.get("refId", ""),
            query=data.get("query", ""),
            raw_query=data.get("rawQuery", True),
            result_format=data.get("resultFormat", "time_series"),
            alias=data.get("alias"),
            hide=data.get("hide"),
            datasource=dashboard.DataSourceRef.from_json(ds) if ds is not None else None,
            from_annotations=data.get("fromAnnotations"),
            title_column=data.get("titleColumn"),
            text_column=data.get("textColumn"),
            tags_column=data.get("tagsColumn"),
        )


class InfluxQL(cogbuilder.Builder[InfluxQLQuery]):
    """Builder for `InfluxQLQuery`, for the SDK's `panel.with_target(...)`."""

    _internal: InfluxQLQuery

    def __init__(self, query: str) -> None:
        self._internal = InfluxQLQuery(query=query, datasource=datasource_ref())

    def build(self) -> InfluxQLQuery:
        """The query built so far."""
        return self._internal

    def ref_id(self, ref_id: str) -> Self:
        """Set the query's id within its panel (A, B, …)."""
        self._internal.ref_id = ref_id
        return self

    def alias(self, alias: str) -> Self:
        """Set the series name pattern (`$tag_limb`, `$col`, …)."""
        self._internal.alias = alias
        return self

    def table(self) -> Self:
        """Return rows (a table frame) instead of time series."""
        self._internal.result_format = "table"
        return self

    def hide(self, hide: bool) -> Self:
        """Run the query but do not draw it."""
        self._internal.hide = hide
        return self

    def annotation(self, *, text: str, tags: list[str], title: str = "") -> Self:
        """Mark the query as an annotation source with its text, tags and title columns."""
        self._internal.result_format = "table"
        self._internal.from_annotations = True
        self._internal.text_column = text
        self._internal.tags_column = ",".join(tags)
        self._internal.title_column = title
        return self


def register() -> None:
    """Register the SDK's own plugins and our InfluxQL variant with the SDK's runtime."""
    register_default_plugins()
    cogruntime.register_dataquery_variant(
        cogruntime.DataqueryConfig(
            identifier=DATASOURCE_TYPE, from_json_hook=InfluxQLQuery.from_json
        )
    )


def load_dashboard(data: dict[str, Any]) -> dashboard.Dashboard:
    """Decode dashboard JSON into the SDK's models, InfluxDB annotation targets included."""
    register()
    model = dashboard.Dashboard.from_json(data)
    raw_annotations = data.get("annotations", {}).get("list", [])
    for raw, annotation in zip(raw_annotations, model.annotations.list_val or [], strict=True):
        if raw.get("datasource", {}).get("type") == DATASOURCE_TYPE and "target" in raw:
            annotation.target = InfluxQLQuery.from_json(raw["target"])
    return model


def dump_dashboard(model: dashboard.Dashboard) -> dict[str, Any]:
    """Encode an SDK dashboard as plain JSON data (dicts, lists, scalars)."""
    decoded: dict[str, Any] = json.loads(json.dumps(model, cls=JSONEncoder))
    return decoded


register()
