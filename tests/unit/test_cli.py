"""The CLI in-process: an error of any package is one line and exit code 1; a bug keeps
its traceback. Every command as a real child process: tests/integration/test_cli_processes.py.
"""

from __future__ import annotations

from pathlib import Path

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


def test_an_exception_group_of_package_errors_is_one_line_each(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from gateway.errors import GatewayError
    from ingest.errors import IngestError
    from ops import cli

    def fails(_args: object) -> int:  # what a TaskGroup raises when its tasks fail
        raise ExceptionGroup("unhandled errors in a TaskGroup", [
            GatewayError("the broker said no"),
            ExceptionGroup("nested", [IngestError("the spool is locked")]),
        ])

    monkeypatch.setattr(cli, "cmd_check", fails)
    assert cli.main(["check"]) == 1
    assert capsys.readouterr().err == ("cuffwatch check: the broker said no\n"
                                       "cuffwatch check: the spool is locked\n")


def test_an_exception_group_holding_a_bug_keeps_its_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.errors import GatewayError
    from ops import cli

    def fails(_args: object) -> int:
        raise ExceptionGroup("unhandled", [GatewayError("no"), KeyError("a bug")])

    monkeypatch.setattr(cli, "cmd_check", fails)
    with pytest.raises(ExceptionGroup):
        cli.main(["check"])


# -- issue 15: a secret file that is missing is one line before anything starts ---------------


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cuffwatch.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(("command", "key"), [
    (("run",), "broker.password_file"),
    (("run",), "influx.token_file"),
    (("run",), "teams.t1.routes[0].url_file"),
    (("assign", "--team", "t1", "--cuff", "c7", "--athlete", "a-17"), "broker.password_file"),
    (("ack", "--team", "t1", "--cuff", "c7", "--kind", "over_pressure"),
     "broker.password_file"),
    (("query", "bouts", "--team", "t1"), "influx.token_file"),
], ids=["run-broker", "run-influx", "run-route", "assign", "ack", "query"])
def test_a_missing_secret_file_stops_a_command_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: tuple[str, ...], key: str,
) -> None:
    from ops import cli

    missing = tmp_path / "secrets" / "absent"
    files = {
        "broker.password_file": f'[broker]\npassword_file = "{missing}"\n',
        "influx.token_file": f'[influx]\ntoken_file = "{missing}"\n',
        "teams.t1.routes[0].url_file": f'[[teams.t1.routes]]\nurl_file = "{missing}"\n',
    }
    config = _config(tmp_path, files[key])
    with pytest.raises(SystemExit) as exited:  # what the console script exits with
        cli.main([command[0], "-c", config, *command[1:]])
    assert exited.value.code == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == f"config: {key}: {missing}: no such file\n"


def test_check_reports_a_missing_secret_file_as_a_config_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from ops import cli

    config = _config(tmp_path, f'[broker]\npassword_file = "{tmp_path}/gw.password"\n'
                               f'[influx]\ntoken_file = "{tmp_path}/influx.token"\n')
    assert cli.main(["check", "-c", config]) == 1
    assert capsys.readouterr().out == (
        f"FAIL config: broker.password_file: {tmp_path}/gw.password: no such file\n"
        f"FAIL config: influx.token_file: {tmp_path}/influx.token: no such file\n"
    )


def test_commands_that_read_no_secret_do_not_need_the_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from ops import cli

    # broker-auth writes the gateway's password file: it cannot require it to exist
    config = _config(tmp_path, f'[broker]\npassword_file = "{tmp_path}/gw.password"\n'
                               "[teams.t1.cuffs.c7]\nlimb = \"left_leg\"\n")
    out = tmp_path / "dashboards"
    assert cli.main(["dashboards", "build", "-c", config, "--out", str(out)]) == 0
    assert "config:" not in capsys.readouterr().err
