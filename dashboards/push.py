"""Upsert the dashboards through Grafana's HTTP API (SPEC §5): a folder per team, stable uids.

Idempotent: a folder is created only when `GET /api/folders/{uid}` answers 404 (renamed
when its title changed), and every dashboard is saved by uid with `overwrite: true`, so
pushing twice leaves one folder per team and one dashboard per uid.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException

from core.config import Settings
from dashboards.catalog import DashboardFile, dashboard_files
from dashboards.errors import GrafanaPushError

__all__ = ["GrafanaPushError", "PushResult", "push", "push_command"]

TOKEN_ENV = "GRAFANA_TOKEN"  # noqa: S105 - the variable holding the service-account token
URL_ENV = "GRAFANA_URL"
PUSH_TIMEOUT_S = 30.0  # one dashboard save; Grafana answers in milliseconds when healthy
COMMIT_MESSAGE = "cuffwatch dashboards push"
HTTP_NOT_FOUND = 404


@dataclass(frozen=True, slots=True)
class PushResult:
    """What a push did: folders created or renamed, dashboards saved (uids, in order)."""

    folders_created: tuple[str, ...] = ()
    folders_renamed: tuple[str, ...] = ()
    dashboards: tuple[str, ...] = ()


def _load_built(files: Sequence[DashboardFile], out_dir: Path) -> list[DashboardFile]:
    """The dashboards as written by `build` under out_dir (what gets pushed is what was built)."""
    loaded = []
    for f in files:
        path = out_dir / "dashboards" / f.relpath
        try:
            model = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise GrafanaPushError(
                f"{path}: missing; run `cuffwatch dashboards build` first") from None
        except ValueError as exc:
            raise GrafanaPushError(f"{path}: not valid JSON: {exc}") from None
        loaded.append(replace(f, model=model))
    return loaded


def _ensure_folder(api: GrafanaApi, uid: str, title: str) -> str | None:
    """Create or rename the folder; return "created", "renamed" or None if it was right."""
    folders: Any = api.folder  # grafana-client's element APIs are untyped
    try:
        folder: dict[str, Any] = folders.get_folder(uid)
    except GrafanaClientError as exc:
        if exc.status_code != HTTP_NOT_FOUND:
            raise
        folders.create_folder(title, uid=uid)
        return "created"
    if folder.get("title") != title:
        folders.update_folder(uid, title=title, version=folder.get("version"), overwrite=True)
        return "renamed"
    return None


def push(files: Sequence[DashboardFile], grafana_url: str, token: str) -> PushResult:
    """Upsert every folder and dashboard of `files` into the Grafana at grafana_url."""
    api = GrafanaApi.from_url(grafana_url, credential=token, timeout=PUSH_TIMEOUT_S)
    created: list[str] = []
    renamed: list[str] = []
    saved: list[str] = []
    done_folders: set[str] = set()
    try:
        for f in files:
            if f.folder_uid not in done_folders:
                change = _ensure_folder(api, f.folder_uid, f.folder_title)
                if change == "created":
                    created.append(f.folder_uid)
                elif change == "renamed":
                    renamed.append(f.folder_uid)
                done_folders.add(f.folder_uid)
            model = {k: v for k, v in f.model.items() if k not in ("id", "version")}
            api.dashboard.update_dashboard(
                {
                    "dashboard": model,
                    "folderUid": f.folder_uid,
                    "overwrite": True,
                    "message": COMMIT_MESSAGE,
                }
            )
            saved.append(f.uid)
    except GrafanaException as exc:
        raise GrafanaPushError(f"Grafana at {grafana_url}: {exc}") from None
    finally:
        api.client.s.close()
    return PushResult(tuple(created), tuple(renamed), tuple(saved))


def push_command(
    settings: Settings, out_dir: Path | None, grafana_url: str | None, token: str | None
) -> int:
    """`cuffwatch dashboards push`: build (or read out_dir's build) and upsert; exit code."""
    url = grafana_url or os.environ.get(URL_ENV)
    secret = token or os.environ.get(TOKEN_ENV)
    if not url:
        print(
            f"dashboards push: give the Grafana URL (--grafana-url or {URL_ENV})", file=sys.stderr
        )
        return 2
    if not secret:
        print(f"dashboards push: set {TOKEN_ENV} to a service-account token", file=sys.stderr)
        return 2
    try:
        files = dashboard_files(settings)
        if out_dir is not None:
            files = _load_built(files, out_dir)
        result = push(files, url, secret)
    except (GrafanaPushError, ValueError) as exc:
        print(f"dashboards push: {exc}", file=sys.stderr)
        return 1
    for uid in result.folders_created:
        print(f"folder {uid}: created")
    for uid in result.folders_renamed:
        print(f"folder {uid}: renamed")
    for uid in result.dashboards:
        print(f"dashboard {uid}: saved")
    return 0
