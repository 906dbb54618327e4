"""The CLI in-process: an error of any package is one line and exit code 1; a bug keeps
its traceback. Every command as a real child process: tests/integration/test_cli_processes.py.
"""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("error", [
    "core.errors.CoreError", "alerts.errors.AlertsError", "ingest.errors.IngestError",
    "gateway.errors.GatewayError", "dashboards.errors.DashboardsError",
    "sim.errors.SimulationError", "ops.errors.OpsError",
])
def test_a_package_error_is_one_line_and_exit_1(
    error: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    import importlib

    from ops import cli

    module, name = error.rsplit(".", 1)
    root = getattr(importlib.import_module(module), name)

    def fails(_args: object) -> int:
        raise root("the broker said no")

    monkeypatch.setattr(cli, "cmd_check", fails)
    assert cli.main(["check"]) == 1
    assert capsys.readouterr().err == "cuffwatch check: the broker said no\n"


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from ops import cli

    def fails(_args: object) -> int:
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "cmd_check", fails)
    with pytest.raises(KeyError):
        cli.main(["check"])
