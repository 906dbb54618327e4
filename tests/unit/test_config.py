"""Configuration (SPEC §7): TOML, environment overrides, resolution, one line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import ConfigError, IpcLimits, LimbLimits, load_settings
from core.model import Limb, Protocol

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
    assert p.warn_bout_s == 330.0
    assert p.max_bout_s == 700.0  # the prescription's own limit wins
    assert p.min_rest_s == 270.0
    assert p.max_bouts_per_hour == 4
    assert p.target_mmhg == 90.0


def test_assignment_overrides_prescription(config_file: Path) -> None:
    from core.config import Assignment

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


# -- SPEC v2: a table given in part keeps the defaults of the keys it leaves out ---------------


def _limits(limits: LimbLimits) -> tuple[float, float, float]:
    return (limits.hard_max_mmhg, limits.default_max_mmhg, limits.max_bout_s)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cuffwatch.toml"
    path.write_text(text)
    return path


ROSTER = """
[teams.t1.cuffs.c1]
limb = "left_leg"
[teams.t2.cuffs.c2]
limb = "right_leg"
"""


def test_partial_leg_table_keeps_the_leg_defaults(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, "[alerts.leg]\nhard_max_mmhg = 280\n" + ROSTER))
    assert _limits(s.alerts.leg) == (280.0, 240.0, 1200.0)
    assert _limits(s.alerts.arm) == (250.0, 180.0, 900.0)
    p = s.rule_params("t1", "nobody", Limb.LEFT_LEG)
    assert (p.hard_max_mmhg, p.default_max_mmhg, p.max_bout_s) == (280.0, 240.0, 1200.0)


def test_partial_arm_table_keeps_the_arm_defaults(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, "[alerts.arm]\ndefault_max_mmhg = 170\n"))
    assert _limits(s.alerts.arm) == (250.0, 170.0, 900.0)  # arm defaults, not the leg's
    assert _limits(s.alerts.leg) == (300.0, 240.0, 1200.0)


def test_environment_alone_sets_one_nested_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUFFWATCH_ALERTS__LEG__HARD_MAX_MMHG", "280")
    s = load_settings()
    assert _limits(s.alerts.leg) == (280.0, 240.0, 1200.0)
    assert _limits(s.alerts.arm) == (250.0, 180.0, 900.0)


def test_environment_merges_into_a_partial_file_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUFFWATCH_ALERTS__LEG__HARD_MAX_MMHG", "280")
    s = load_settings(_write(tmp_path, "[alerts.leg]\nmax_bout_s = 1000\n"))
    assert _limits(s.alerts.leg) == (280.0, 240.0, 1000.0)  # both kept, the rest defaults


def test_team_partial_nested_override_keeps_the_global_values(tmp_path: Path) -> None:
    s = load_settings(
        _write(
            tmp_path,
            "[alerts.leg]\nhard_max_mmhg = 280\n"
            "[teams.t1.alerts.leg]\nmax_bout_s = 1000\n" + ROSTER,
        )
    )
    assert _limits(s.team_alerts("t1").leg) == (280.0, 240.0, 1000.0)
    assert _limits(s.team_alerts("t1").arm) == (250.0, 180.0, 900.0)
    assert _limits(s.team_alerts("t2").leg) == (280.0, 240.0, 1200.0)
    assert _limits(s.alerts.leg) == (280.0, 240.0, 1200.0)  # the global is untouched
    p = s.rule_params("t1", "nobody", Limb.LEFT_LEG)
    assert (p.hard_max_mmhg, p.default_max_mmhg, p.max_bout_s) == (280.0, 240.0, 1000.0)


def test_ipc_defaults_are_spec_v2() -> None:
    ipc = load_settings().alerts.ipc
    assert ipc == IpcLimits(
        hard_max_mmhg=300, warn_bout_s=330, max_bout_s=420, min_rest_s=270, max_bouts_per_hour=4
    )
    assert IpcLimits() == ipc


def test_rule_params_use_the_ipc_defaults(tmp_path: Path) -> None:
    s = load_settings(
        _write(
            tmp_path,
            """
[teams.t1.athletes.p-02.prescriptions.left_arm]
protocol = "ipc"
target_mmhg = 200
[teams.t1.cuffs.c1]
athlete = "p-02"
limb = "left_arm"
""",
        )
    )
    p = s.rule_params("t1", "p-02", Limb.LEFT_ARM)
    assert p.protocol is Protocol.IPC
    assert p.hard_max_mmhg == 300.0
    assert p.warn_bout_s == 330.0
    assert p.max_bout_s == 420.0
    assert p.min_rest_s == 270.0
    assert p.min_rest_after_max_s == 270.0  # never shorter than the ipc reperfusion
    assert p.max_bouts_per_hour == 4


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            "[alerts.arm]\nmax_bout_s = 500\n",
            "alerts: arm.max_bout_s (500) must exceed warn_bout_s (600)",
        ),
        (
            "[alerts.ipc]\nmax_bout_s = 300\n",
            "alerts: ipc.max_bout_s (300) must exceed ipc.warn_bout_s (330)",
        ),
        (
            "[teams.t1.alerts]\nwarn_bout_s = 1000\n",
            "teams.t1.alerts: arm.max_bout_s (900) must exceed warn_bout_s (1000)",
        ),
        (
            "[alerts.leg]\nhard_max_mmhg = 280\n[teams.t1.alerts.leg]\nmax_bout_s = -1\n",
            "teams.t1.alerts.leg.max_bout_s: Input should be greater than 0",
        ),
    ],
)
def test_partial_tables_are_still_checked(tmp_path: Path, text: str, line: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, text))
    assert info.value.problems == [line]


def test_team_timezone_and_route_person(tmp_path: Path) -> None:
    path = tmp_path / "tz.toml"
    path.write_text(
        """
[teams.t1]
timezone = "Europe/London"
[[teams.t1.routes]]
url = "json://127.0.0.1:9/hook"
person = "Sam (physio)"
[teams.t2.cuffs.c2]
limb = "left_arm"
"""
    )
    settings = load_settings(path)
    assert settings.teams["t1"].zone.key == "Europe/London"
    assert settings.teams["t1"].routes[0].person == "Sam (physio)"
    assert settings.teams["t2"].timezone == "UTC"  # the default
    assert settings.teams["t2"].routes == []


def test_unknown_timezone_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "tz.toml"
    path.write_text('[teams.t1]\ntimezone = "Europe/Londn"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    (problem,) = info.value.problems
    assert problem.startswith("teams.t1.timezone:"), problem
    assert "unknown time zone 'Europe/Londn'" in problem
