"""Configuration (SPEC §7): TOML, environment overrides, resolution, one line per problem."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from core.config import Assignment, ConfigError, IpcLimits, LimbLimits, load_settings
from core.config_checks import file_problems, route_warnings
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


# -- issue 15: partial tables at every level, and from the environment ------------------------


def test_partial_ipc_table_keeps_the_ipc_defaults(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, "[alerts.ipc]\nhard_max_mmhg = 280\n"))
    assert s.alerts.ipc == IpcLimits(hard_max_mmhg=280)
    assert (s.alerts.ipc.warn_bout_s, s.alerts.ipc.max_bout_s) == (330.0, 420.0)


def test_team_partial_ipc_and_arm_tables_keep_the_global_values(tmp_path: Path) -> None:
    s = load_settings(_write(
        tmp_path,
        "[alerts.ipc]\nmin_rest_s = 240\n"
        "[teams.t1.alerts.ipc]\nhard_max_mmhg = 260\n"
        "[teams.t1.alerts.arm]\nhard_max_mmhg = 230\n",
    ))
    team = s.team_alerts("t1")
    assert team.ipc == IpcLimits(hard_max_mmhg=260, min_rest_s=240)
    assert _limits(team.arm) == (230.0, 180.0, 900.0)
    assert _limits(team.leg) == (300.0, 240.0, 1200.0)


@pytest.mark.parametrize(("variable", "value", "read"), [
    ("CUFFWATCH_ALERTS__IPC__HARD_MAX_MMHG", "280", lambda s: s.alerts.ipc.hard_max_mmhg),
    ("CUFFWATCH_ALERTS__IPC__MAX_BOUTS_PER_HOUR", "3",
     lambda s: s.alerts.ipc.max_bouts_per_hour),
    ("CUFFWATCH_ALERTS__ARM__MAX_BOUT_S", "800", lambda s: s.alerts.arm.max_bout_s),
    ("CUFFWATCH_ALERTS__TOLERANCE_MMHG", "12", lambda s: s.alerts.tolerance_mmhg),
    ("CUFFWATCH_HEALTH__ENABLED", "false", lambda s: s.health.enabled),
])
def test_one_environment_variable_sets_one_nested_key(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, read: Any,
) -> None:
    monkeypatch.setenv(variable, value)
    s = load_settings()
    assert str(read(s)).lower().removesuffix(".0") == value
    # the rest of that table keeps its defaults
    assert s.alerts.ipc.warn_bout_s == 330.0
    assert _limits(s.alerts.leg) == (300.0, 240.0, 1200.0)


def test_environment_sets_a_key_of_a_teams_partial_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUFFWATCH_TEAMS__T1__ALERTS__LEG__HARD_MAX_MMHG", "280")
    s = load_settings(_write(tmp_path, "[teams.t1.alerts.leg]\nmax_bout_s = 1000\n" + ROSTER))
    assert _limits(s.team_alerts("t1").leg) == (280.0, 240.0, 1000.0)
    assert _limits(s.team_alerts("t2").leg) == (300.0, 240.0, 1200.0)
    assert s.rule_params("t1", "nobody", Limb.LEFT_LEG).hard_max_mmhg == 280.0


def test_environment_alone_overrides_a_teams_alerts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUFFWATCH_TEAMS__T1__ALERTS__IPC__WARN_BOUT_S", "300")
    s = load_settings()
    assert s.team_alerts("t1").ipc == IpcLimits(warn_bout_s=300)


# -- issue 15: what is dangerous is refused, in one clear line ---------------------------------


def _problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, text))
    problems = info.value.problems
    assert all("\n" not in p for p in problems), problems
    return problems


RX = "[teams.t1.athletes.a-17.prescriptions.left_leg]\n"


@pytest.mark.parametrize(("text", "line"), [
    (RX + 'lop_mmhg = "160"\n',
     'teams.t1.athletes.a-17.prescriptions.left_leg.lop_mmhg: must be a number, not the string '
     '"160": write 160'),
    ('[alerts.leg]\nhard_max_mmhg = "280"\n',
     'alerts.leg.hard_max_mmhg: must be a number, not the string "280": write 280'),
    ("[teams.t1.alerts]\nstale_after_s = true\n",
     "teams.t1.alerts.stale_after_s: must be a number, not true"),
    ('[broker]\nprotocol = 5\nsession_expiry_s = "7200"\n',
     'broker.session_expiry_s: must be a number, not the string "7200": write 7200'),
    ('[health]\nenabled = "false"\n',
     'health.enabled: must be true or false, not the string "false": write false'),
    ('[[teams.t1.routes]]\nurl = "json://127.0.0.1:9/x"\nescalation = "true"\n',
     'teams.t1.routes.0.escalation: must be true or false, not the string "true": write true'),
], ids=["prescription", "limits", "team-bool-number", "broker", "bool", "route"])
def test_a_toml_value_of_the_wrong_type_is_refused(tmp_path: Path, text: str, line: str) -> None:
    assert _problems(tmp_path, text) == [line]


def test_a_string_that_is_no_number_is_one_line_not_two(tmp_path: Path) -> None:
    [line] = _problems(tmp_path, RX + 'lop_mmhg = "high"\n')
    assert line.startswith("teams.t1.athletes.a-17.prescriptions.left_leg.lop_mmhg: "), line
    assert "valid number" in line


def test_environment_values_are_strings_and_still_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUFFWATCH_ALERTS__LEG__HARD_MAX_MMHG", "280")
    monkeypatch.setenv("CUFFWATCH_HEALTH__ENABLED", "false")
    monkeypatch.setenv("CUFFWATCH_BROKER__SESSION_EXPIRY_S", "7200")
    s = load_settings(_write(tmp_path, "[alerts.leg]\nmax_bout_s = 1000\n"))
    assert _limits(s.alerts.leg) == (280.0, 240.0, 1000.0)
    assert s.health.enabled is False
    assert s.broker.session_expiry_s == 7200


@pytest.mark.parametrize(("text", "line"), [
    ("[alerts.leg]\nhard_max_mmhg = 200\n",
     "alerts: leg.default_max_mmhg (240) must be below leg.hard_max_mmhg (200)"),
    ("[alerts.arm]\ndefault_max_mmhg = 260\n",
     "alerts: arm.default_max_mmhg (260) must be below arm.hard_max_mmhg (250)"),
    ("[teams.t1.alerts.leg]\nhard_max_mmhg = 230\n",
     "teams.t1.alerts: leg.default_max_mmhg (240) must be below leg.hard_max_mmhg (230)"),
], ids=["leg", "arm", "team"])
def test_a_hard_max_not_above_the_default_max_is_refused(
    tmp_path: Path, text: str, line: str,
) -> None:
    assert _problems(tmp_path, text) == [line]


def test_two_limit_problems_of_one_table_are_two_lines(tmp_path: Path) -> None:
    problems = _problems(tmp_path, "[teams.t1.alerts]\nwarn_bout_s = 1000\n"
                                   "[teams.t1.alerts.leg]\nhard_max_mmhg = 230\n")
    assert problems == [
        "teams.t1.alerts: arm.max_bout_s (900) must exceed warn_bout_s (1000)",
        "teams.t1.alerts: leg.default_max_mmhg (240) must be below leg.hard_max_mmhg (230)",
    ]


CEILING = "every bout at the target would be a critical over_pressure"


@pytest.mark.parametrize(("text", "line"), [
    (RX + "target_mmhg = 360\n",
     "teams.t1.athletes.a-17.prescriptions.left_leg: target_mmhg 360 is not below the hard "
     f"ceiling of 300 mmHg (alerts.leg.hard_max_mmhg): {CEILING}"),
    ("[teams.t1.athletes.a-17.prescriptions.right_arm]\nlop_mmhg = 320\ntarget_pct_lop = 80\n",
     "teams.t1.athletes.a-17.prescriptions.right_arm: target_pct_lop 80 % of lop_mmhg 320 = "
     f"256 mmHg is not below the hard ceiling of 250 mmHg (alerts.arm.hard_max_mmhg): {CEILING}"),
    ("[teams.t1.alerts.ipc]\nhard_max_mmhg = 220\n"
     + RX + 'protocol = "ipc"\ntarget_mmhg = 230\n',
     "teams.t1.athletes.a-17.prescriptions.left_leg: target_mmhg 230 is not below the hard "
     f"ceiling of 220 mmHg (teams.t1.alerts.ipc.hard_max_mmhg): {CEILING}"),
    ("[alerts.leg]\nhard_max_mmhg = 280\n" + RX + "target_mmhg = 280\n",
     "teams.t1.athletes.a-17.prescriptions.left_leg: target_mmhg 280 is not below the hard "
     f"ceiling of 280 mmHg (alerts.leg.hard_max_mmhg): {CEILING}"),
], ids=["leg", "arm-from-pct", "team-ipc", "at-the-ceiling"])
def test_a_target_at_or_above_its_hard_ceiling_is_refused(
    tmp_path: Path, text: str, line: str,
) -> None:
    assert _problems(tmp_path, text) == [line]


def test_the_ceiling_is_the_athletes_limbs_and_protocols(tmp_path: Path) -> None:
    # 260 mmHg is fine on a leg (300) and under ipc (300), not on an arm (250)
    load_settings(_write(tmp_path, RX + "target_mmhg = 260\n"))
    load_settings(_write(tmp_path, "[teams.t1.athletes.a-17.prescriptions.left_arm]\n"
                                   'protocol = "ipc"\ntarget_mmhg = 260\n'))
    [line] = _problems(tmp_path, "[teams.t1.athletes.a-17.prescriptions.left_arm]\n"
                                 "target_mmhg = 260\n")
    assert "hard ceiling of 250 mmHg (alerts.arm.hard_max_mmhg)" in line
    # another team's lower ceiling does not apply to t1
    load_settings(_write(tmp_path, "[teams.t2.alerts.leg]\nhard_max_mmhg = 250\n"
                                   "default_max_mmhg = 200\n" + RX + "target_mmhg = 260\n"))


def test_target_pct_lop_above_100_is_refused(tmp_path: Path) -> None:
    assert _problems(tmp_path, RX + "lop_mmhg = 220\ntarget_pct_lop = 120\n") == [
        "teams.t1.athletes.a-17.prescriptions.left_leg.target_pct_lop: 120 % of LOP is beyond "
        "full occlusion: at most 100 (for an absolute pressure, target_mmhg)"
    ]


def test_a_bfr_target_at_or_above_lop_is_refused_and_ipc_may_occlude(tmp_path: Path) -> None:
    assert _problems(tmp_path, RX + "lop_mmhg = 200\ntarget_mmhg = 210\n") == [
        "teams.t1.athletes.a-17.prescriptions.left_leg: target_mmhg 210 is not below lop_mmhg "
        '200: that is full occlusion, which bfr never prescribes (for full occlusion, '
        'protocol = "ipc")'
    ]
    [line] = _problems(tmp_path, RX + "lop_mmhg = 200\ntarget_pct_lop = 100\n")
    assert "target_pct_lop 100 % of lop_mmhg 200 = 200 mmHg is not below lop_mmhg 200" in line
    ipc = RX + 'lop_mmhg = 200\ntarget_mmhg = 210\nprotocol = "ipc"\n'
    s = load_settings(_write(tmp_path, ipc))
    assert s.rule_params("t1", "a-17", Limb.LEFT_LEG).target_mmhg == 210.0


def test_both_targets_in_one_prescription_are_refused(tmp_path: Path) -> None:
    assert _problems(tmp_path, RX + "lop_mmhg = 220\ntarget_pct_lop = 60\ntarget_mmhg = 140\n") \
        == ["teams.t1.athletes.a-17.prescriptions.left_leg: give target_pct_lop or target_mmhg, "
            "not both"]


def test_a_cuff_naming_an_athlete_the_team_does_not_list_is_refused(tmp_path: Path) -> None:
    text = ("[teams.t1.athletes.a-17]\nname = \"Jo\"\n[teams.t1.athletes.a-18]\n"
            "[teams.t1.cuffs.c7]\nathlete = \"a-71\"\nlimb = \"left_leg\"\n")
    assert _problems(tmp_path, text) == [
        "teams.t1.cuffs.c7.athlete: 'a-71' is not in teams.t1.athletes (a-17, a-18): fix the "
        "id, or list the athlete there (a name is enough)"
    ]


def test_a_team_without_an_athletes_table_names_athletes_by_id(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, "[teams.t1.cuffs.c7]\nathlete = \"a-71\"\n"
                                       "limb = \"left_leg\"\n"))
    assert s.teams["t1"].cuffs["c7"].athlete == "a-71"
    # another team's athletes table says nothing about this team's athletes
    load_settings(_write(tmp_path, "[teams.t2.athletes.b-1]\n[teams.t1.cuffs.c7]\n"
                                   "athlete = \"a-71\"\nlimb = \"left_leg\"\n"))


def test_every_dangerous_value_of_a_file_is_its_own_line(tmp_path: Path) -> None:
    problems = _problems(tmp_path, """
[alerts.leg]
hard_max_mmhg = 200
[teams.t1.athletes.a-17.prescriptions.left_leg]
lop_mmhg = "160"
[teams.t1.athletes.a-17.prescriptions.right_leg]
lop_mmhg = 220
target_pct_lop = 120
[teams.t1.cuffs.c7]
athlete = "a-71"
limb = "left_leg"
""")
    keys = sorted(p.split(": ", 1)[0] for p in problems)
    # the roster's cross-checks (the cuff's athlete a-71) come once every value is valid
    assert keys == [
        "alerts",
        "teams.t1.athletes.a-17.prescriptions.left_leg.lop_mmhg",
        "teams.t1.athletes.a-17.prescriptions.right_leg.target_pct_lop",
    ], problems


# -- issue 15: *_file secrets and TLS files are checked before a command uses them ---------------


def test_missing_and_empty_secret_files_are_one_line_each(tmp_path: Path) -> None:
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    text = f"""
[broker]
password_file = "{tmp_path}/absent.password"
[influx]
token_file = "{empty}"
[[teams.t1.routes]]
url_file = "{tmp_path}"
"""
    s = load_settings(_write(tmp_path, text))  # loading reads no secret
    assert file_problems(s, "broker", "influx", "routes") == [
        f"broker.password_file: {tmp_path}/absent.password: no such file",
        f"influx.token_file: {empty}: is empty",
        f"teams.t1.routes[0].url_file: {tmp_path}: is a directory, not a file",
    ]
    assert file_problems(s, "influx") == [f"influx.token_file: {empty}: is empty"]
    assert file_problems(s) == []


def test_a_secret_given_itself_leaves_its_file_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the example config names a password_file; CUFFWATCH_BROKER__PASSWORD "instead" is fine
    monkeypatch.setenv("CUFFWATCH_BROKER__PASSWORD", "pw")
    s = load_settings(_write(tmp_path, f'[broker]\npassword_file = "{tmp_path}/absent"\n'))
    assert file_problems(s, "broker") == []
    assert s.broker.secret_password() == "pw"


def test_v1_influx_needs_its_password_file_not_the_token_file(tmp_path: Path) -> None:
    text = (f'[influx]\napi = "v1"\ntoken_file = "{tmp_path}/t"\n'
            f'password_file = "{tmp_path}/p"\n')
    s = load_settings(_write(tmp_path, text))
    assert file_problems(s, "influx") == [f"influx.password_file: {tmp_path}/p: no such file"]


NOBODY = 65534


def test_an_unreadable_secret_file_says_permission_denied(tmp_path: Path) -> None:
    secret = tmp_path / "gateway.password"
    secret.write_text("pw\n")
    secret.chmod(0)
    settings = load_settings(_write(tmp_path, f'[broker]\npassword_file = "{secret}"\n'))
    if os.geteuid() != 0:
        [line] = file_problems(settings, "broker")
    else:  # root reads any file (CI runs as root): look as `nobody`, then be root again
        os.seteuid(NOBODY)
        try:
            [line] = file_problems(settings, "broker")
        finally:
            os.seteuid(0)
    assert line.startswith(f"broker.password_file: {secret}: permission denied"), line


def test_broker_tls_files_are_checked(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.crt"
    not_pem.write_text("not a certificate\n")
    s = load_settings(_write(tmp_path, f'[broker]\nurl = "mqtts://broker.example:8883"\n'
                                       f'ca_file = "{not_pem}"\n'
                                       f'cert_file = "{tmp_path}/absent.crt"\n'))
    assert file_problems(s, "broker") == [f"broker.cert_file: {tmp_path}/absent.crt: no such file"]
    s = load_settings(_write(tmp_path, f'[broker]\nurl = "mqtts://broker.example:8883"\n'
                                       f'ca_file = "{not_pem}"\n'))
    [line] = file_problems(s, "broker")
    assert line.startswith(f"broker.ca_file: {not_pem}: not a PEM CA bundle"), line


# -- issue 15: routes that leave criticals unescalated -----------------------------------------


def test_route_warnings_name_teams_whose_criticals_escalate_to_nobody(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, """
[teams.none.cuffs.c1]
limb = "left_arm"
[[teams.plain.routes]]
url = "json://127.0.0.1:9/a"
[teams.plain.alerts]
escalate_after_s = 90
[[teams.only.routes]]
url = "json://127.0.0.1:9/b"
escalation = true
[[teams.both.routes]]
url = "json://127.0.0.1:9/c"
[[teams.both.routes]]
url = "json://127.0.0.1:9/d"
escalation = true
"""))
    lines = route_warnings(s)
    assert [line.split(":", 1)[0] for line in lines] == ["team none", "team plain", "team only"]
    none, plain, only = lines
    assert none.startswith("team none: no push route: ")
    assert "escalated to nobody" in none
    assert plain == ("team plain: no escalation route: a critical alert unacknowledged after "
                     "90 s (escalate_after_s) is escalated to nobody; give a route "
                     "escalation = true")
    assert only.startswith("team only: only escalation routes: nothing is pushed until")
    assert route_warnings(s, ["both", "plain"]) == [plain]


def test_the_mqtt_protocol_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # environment values are text: "3" must mean MQTT 3.1.1, as in the file
    monkeypatch.setenv("CUFFWATCH_BROKER__PROTOCOL", "3")
    assert load_settings(None).broker.protocol == 3
    monkeypatch.setenv("CUFFWATCH_BROKER__PROTOCOL", "4")
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    assert [p.split(":")[0] for p in info.value.problems] == ["broker.protocol"]


def test_an_assignments_share_of_lop_wins_over_the_rosters_target(tmp_path: Path) -> None:
    """SPEC v2 §3: the assignment's target_pct_lop × LOP before the roster's target_mmhg."""
    path = tmp_path / "rx.toml"
    path.write_text(
        "[teams.t1.athletes.a-17.prescriptions.left_leg]\n"
        "lop_mmhg = 220\ntarget_mmhg = 150\n"
        "[teams.t1.athletes.a-18.prescriptions.left_leg]\n"
        "lop_mmhg = 220\ntarget_pct_lop = 60\n"
        '[teams.t1.cuffs.c7]\nathlete = "a-17"\nlimb = "left_leg"\n'
        '[teams.t1.cuffs.c8]\nathlete = "a-18"\nlimb = "left_leg"\n'
    )
    s = load_settings(path)

    def target(athlete: str, **assigned: Any) -> float | None:
        a = Assignment(athlete=athlete, **assigned) if assigned else None
        return s.rule_params("t1", athlete, Limb.LEFT_LEG, a).target_mmhg

    assert target("a-17") == 150.0  # the roster's, as it is
    assert target("a-17", target_pct_lop=50) == 110.0  # 50 % of the roster's LOP
    assert target("a-17", target_pct_lop=50, lop_mmhg=200) == 100.0
    assert target("a-17", target_mmhg=140, target_pct_lop=50) == 140.0
    assert target("a-17", lop_mmhg=200) == 150.0  # a LOP alone leaves an absolute target
    assert target("a-18") == 132.0
    assert target("a-18", lop_mmhg=200) == 120.0  # the roster's share of the new LOP
