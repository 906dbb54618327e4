"""Configuration (SPEC §7): TOML, environment overrides, resolution, one line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_settings
from gateway.model import Limb, Protocol

TOML = """
instance = "gw-7"
[influx]
api = "v1"
database = "squad"
[alerts]
tolerance_mmhg = 12
[alerts.leg]
hard_max_mmhg = 290
default_max_mmhg = 230
max_bout_s = 1100
[teams.t1]
name = "First team"
[teams.t1.alerts]
stale_after_s = 15
[teams.t1.alerts.arm]
max_bout_s = 800
[[teams.t1.routes]]
url = "ntfy://ntfy.example.org/t1-staff"
min_severity = "critical"
[teams.t1.athletes.a-17.prescriptions.left_leg]
lop_mmhg = 220
target_pct_lop = 60
[teams.t1.athletes.a-18.prescriptions.right_arm]
lop_mmhg = 200
target_mmhg = 90
max_bout_s = 700
protocol = "ipc"
[teams.t1.cuffs.c7]
athlete = "a-17"
limb = "left_leg"
[teams.t1.cuffs.c8]
athlete = "a-18"
limb = "right_arm"
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "cuffwatch.toml"
    path.write_text(TOML)
    return path


def test_toml_loads_and_resolves_prescriptions(config_file: Path) -> None:
    s = load_settings(config_file)
    assert s.instance == "gw-7"
    assert s.client_id == "cuffwatch-gw-7"
    assert s.influx.api == "v1"
    assert s.influx.database == "squad"
    p = s.rule_params("t1", "a-17", Limb.LEFT_LEG)
    assert p.target_mmhg == 132.0  # 60 % of 220
    assert p.lop_mmhg == 220.0
    assert p.hard_max_mmhg == 290.0
    assert p.max_bout_s == 1100.0
    assert p.tolerance_mmhg == 12.0
    assert p.stale_after_s == 15.0  # the team's override
    assert p.protocol is Protocol.BFR
    arm = s.rule_params("t1", "nobody", Limb.LEFT_ARM)
    assert arm.max_bout_s == 800.0  # team override of a nested default
    assert arm.target_mmhg is None
    assert arm.hard_max_mmhg == 250.0


def test_ipc_profile_replaces_limb_limits(config_file: Path) -> None:
    p = load_settings(config_file).rule_params("t1", "a-18", Limb.RIGHT_ARM)
    assert p.protocol is Protocol.IPC
    assert p.hard_max_mmhg == 300.0
    assert p.warn_bout_s == 240.0
    assert p.max_bout_s == 700.0  # the prescription's own limit wins
    assert p.min_rest_s == 300.0
    assert p.max_bouts_per_hour == 4
    assert p.target_mmhg == 90.0


def test_assignment_overrides_prescription(config_file: Path) -> None:
    from gateway.config import Assignment

    s = load_settings(config_file)
    a = Assignment.model_validate_json(
        b'{"athlete": "a-17", "target_mmhg": 150, "protocol": "ipc"}'
    )
    p = s.rule_params("t1", "a-17", Limb.LEFT_LEG, a)
    assert p.target_mmhg == 150.0
    assert p.protocol is Protocol.IPC
    assert p.lop_mmhg == 220.0  # from the prescription


def test_environment_overrides_file(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUFFWATCH_INFLUX__TOKEN", "s3cret-token")
    monkeypatch.setenv("CUFFWATCH_INFLUX__DATABASE", "other")
    monkeypatch.setenv("CUFFWATCH_BROKER__PASSWORD", "pw")
    s = load_settings(config_file)
    assert s.influx.secret_token() == "s3cret-token"
    assert s.influx.database == "other"
    assert s.broker.secret_password() == "pw"
    assert "s3cret-token" not in repr(s)
    assert "s3cret-token" not in str(s.influx)


def test_secret_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("from-a-file\n")
    monkeypatch.setenv("CUFFWATCH_INFLUX__TOKEN_FILE", str(token))
    assert load_settings().influx.secret_token() == "from-a-file"


def test_every_problem_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        """
[broker]
url = "http://nope"
protocol = 4
[alerts]
warn_bout_s = 2000
[teams.t1.cuffs.c1]
limb = "tail"
[teams.t1.athletes.a1.prescriptions.left_leg]
target_pct_lop = 60
"""
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    problems = info.value.problems
    text = "\n".join(problems)
    assert any(p.startswith("broker.url:") for p in problems), text
    assert any(p.startswith("broker.protocol:") for p in problems), text
    assert any(p.startswith("teams.t1.cuffs.c1.limb:") for p in problems), text
    assert any("target_pct_lop needs lop_mmhg" in p for p in problems), text
    assert any("max_bout_s" in p and "warn_bout_s" in p for p in problems), text
    assert all("\n" not in p for p in problems)


def test_cuff_in_two_teams_and_bad_team_override(tmp_path: Path) -> None:
    path = tmp_path / "dup.toml"
    path.write_text(
        """
[teams.t1.cuffs.c1]
limb = "left_arm"
[teams.t2.cuffs.c1]
limb = "left_arm"
[teams.t2.alerts]
stale_after_s = -5
"""
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    text = "\n".join(info.value.problems)
    assert "teams.t2.cuffs.c1: cuff already belongs to team t1" in text
    assert "teams.t2.alerts.stale_after_s" in text


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[teams\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken)
