"""Dashboards pushed to Grafana (SPEC §5), against a RECORDED Grafana HTTP API contract.

Grafana cannot run here. tests/data/grafana_contract/*.json hold the request/response pairs
of Grafana 11's documented folder and dashboard API; the stub below replays them and checks
that our push makes exactly those requests (method, path, Bearer token, body).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from core.config import load_settings
from dashboards.build import DashboardFile, build, dashboard_files
from dashboards.push import GrafanaPushError, push, push_command
from tests.support.paths import DATA

CONTRACT = DATA / "grafana_contract"


class ContractStub:
    """An HTTP server replaying one recorded contract, in order, and noting every deviation."""

    def __init__(self, contract: dict[str, Any]) -> None:
        self.token: str = contract["token"]
        self.exchanges: list[dict[str, Any]] = contract["exchanges"]
        self.served = 0
        self.problems: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: deviations are collected, not printed."""

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                status, answer = stub.answer(self.command, self.path, dict(self.headers), body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _handle  # noqa: N815 - http.server's names

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="grafana-contract")

    def answer(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        """Check one request against the next recorded one and return its recorded response."""
        if self.served >= len(self.exchanges):
            self.problems.append(f"unexpected extra request {method} {path}")
            return 500, {"message": "not in the contract"}
        expected = self.exchanges[self.served]
        self.served += 1
        want = expected["request"]
        seen = f"#{self.served} {method} {path}"
        if (method, path) != (want["method"], want["path"]):
            self.problems.append(f"{seen}: contract says {want['method']} {want['path']}")
        if headers.get("Authorization") != f"Bearer {self.token}":
            self.problems.append(f"{seen}: Authorization {headers.get('Authorization')!r}")
        if "body_keys" in want and sorted(body or {}) != sorted(want["body_keys"]):
            self.problems.append(f"{seen}: body keys {sorted(body or {})}")
        if "json" in want:
            if "application/json" not in headers.get("Content-Type", ""):
                self.problems.append(f"{seen}: body not sent as application/json")
            if not _contains(body, want["json"]):
                self.problems.append(f"{seen}: body {json.dumps(body)[:300]} lacks {want['json']}")
        return int(expected["response"]["status"]), expected["response"]["body"]

    def __enter__(self) -> ContractStub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def check(self) -> None:
        """Fail unless every recorded exchange happened, exactly as recorded."""
        assert self.problems == []
        assert self.served == len(self.exchanges), "requests missing from the contract run"


def _contains(actual: Any, expected: Any) -> bool:
    """Whether `expected` (a JSON subset) is contained in `actual`."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and _contains(actual[k], v) for k, v in expected.items()
        )
    return bool(actual == expected)


def contract(name: str) -> dict[str, Any]:
    """A recorded contract from tests/data/grafana_contract/."""
    data: dict[str, Any] = json.loads((CONTRACT / f"{name}.json").read_text())
    assert "RECORDED" in data["_comment"]
    return data


@pytest.fixture
def one_team() -> list[DashboardFile]:
    """The dashboards of a one-team configuration (the contract's recording)."""
    return dashboard_files(load_settings(None, teams={"t1": {"name": "First team"}}))


def test_push_first_time_creates_folders_then_upserts(one_team: list[DashboardFile]) -> None:
    """404 on the folder → POST /api/folders; every dashboard POSTed with folderUid, overwrite."""
    recorded = contract("first_push")
    with ContractStub(recorded) as stub:
        result = push(one_team, stub.url, recorded["token"])
    stub.check()
    assert result.folders_created == ("cw-t1", "cw-system")
    assert result.dashboards == ("cw-t1-live", "cw-t1-athlete", "cw-gateway")


def test_push_again_is_idempotent(one_team: list[DashboardFile]) -> None:
    """Folders exist → nothing created; dashboards saved again under the same uids."""
    recorded = contract("second_push")
    with ContractStub(recorded) as stub:
        result = push(one_team, stub.url, recorded["token"])
    stub.check()
    assert (result.folders_created, result.folders_renamed) == ((), ())
    assert result.dashboards == ("cw-t1-live", "cw-t1-athlete", "cw-gateway")


def test_push_renames_a_folder_whose_team_was_renamed(one_team: list[DashboardFile]) -> None:
    """A folder with an old title is updated in place (PUT, same uid)."""
    recorded = contract("rename_folder")
    with ContractStub(recorded) as stub:
        result = push(one_team, stub.url, recorded["token"])
    stub.check()
    assert result.folders_renamed == ("cw-t1",)


def test_push_reports_grafana_refusing_the_token(one_team: list[DashboardFile]) -> None:
    """401 from Grafana becomes one GrafanaPushError line."""
    recorded = contract("unauthorized")
    with ContractStub(recorded) as stub, pytest.raises(GrafanaPushError, match="Unauthorized"):
        push(one_team, stub.url, recorded["token"])
    stub.check()


def test_push_command_pushes_the_built_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With out_dir it pushes what build wrote; the token comes from GRAFANA_TOKEN."""
    settings = load_settings(None, teams={"t1": {"name": "First team"}})
    recorded = contract("first_push")
    assert push_command(settings, tmp_path, "http://127.0.0.1:9", "x") == 1
    assert "dashboards build" in capsys.readouterr().err
    build(settings, tmp_path)
    monkeypatch.setenv("GRAFANA_TOKEN", recorded["token"])
    with ContractStub(recorded) as stub:
        assert push_command(settings, tmp_path, stub.url, None) == 0
    stub.check()
    assert "dashboard cw-gateway: saved" in capsys.readouterr().out
