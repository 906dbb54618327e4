"""The root of the dashboards package's exceptions."""

from __future__ import annotations


class DashboardsError(Exception):
    """Building or pushing the dashboards failed; the message says which and why."""


class GrafanaPushError(DashboardsError):
    """Grafana refused a request or could not be reached; the message says which."""
