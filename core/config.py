"""Configuration (SPEC §7): one TOML file, every key overridable from the environment.

`load_settings(path)` reads the file, applies `CUFFWATCH_…` variables (`__` between
levels), and validates everything at once: types (strictly for the file's values, which
TOML types; the environment's are strings), ranges, and what is dangerous together (a
target above its hard ceiling, a cuff naming an athlete its team does not list). Problems
come back as `ConfigError` with one clear line each. `*_file` secrets are read where they
are used; `core.config_checks.file_problems` checks the ones a command needs first.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from core import roster_checks, toml_types
from core.acktoken import MIN_SECRET_BYTES
from core.errors import CoreError
from core.model import Limb, Protocol, Severity
from core.params import RuleParams

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_ID_RE = re.compile(ID_PATTERN)

Ident = Annotated[str, Field(pattern=ID_PATTERN)]
PositiveSeconds = Annotated[float, Field(gt=0)]


class ConfigError(CoreError):
    """The configuration is invalid; `problems` holds one human line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _read_secret_file(path: str | None) -> SecretStr | None:
    if not path:
        return None
    return SecretStr(Path(path).read_text(encoding="utf-8").strip())


class BrokerSettings(_Section):
    url: str = "mqtt://127.0.0.1:1883"
    protocol: Literal[5, 3] = 5
    username: str | None = None
    password: SecretStr | None = None
    password_file: str | None = None
    client_id: str | None = None  # default: cuffwatch-{instance}
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    session_expiry_s: int = Field(default=3600, ge=3600)  # ≥ 1 h (SPEC §2)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    # MQTT 5 shared subscription group; several gateways in one group split the fleet (§9).
    shared_group: str | None = None
    # Restrict this gateway to some teams (partitioning by team); empty = every team.
    teams: tuple[str, ...] = ()

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_from_text(cls, value: object) -> object:
        # CUFFWATCH_BROKER__PROTOCOL=3 arrives as text; a literal of ints takes no text
        return int(value) if isinstance(value, str) and value.strip() in ("3", "5") else value

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
            raise ValueError("must look like mqtt://host:1883 or mqtts://host:8883")
        return v

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme in ("mqtts", "ssl")

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (8883 if self.tls else 1883)

    def secret_password(self) -> str | None:
        secret = self.password or _read_secret_file(self.password_file)
        return secret.get_secret_value() if secret else None


class InfluxSettings(_Section):
    # "file" writes line protocol to local files (`influx write` imports them): the demo's store.
    api: Literal["v2", "v1", "file"] = "v2"
    url: str = "http://127.0.0.1:8086"
    org: str = "club"
    bucket: str = "bfr"
    token: SecretStr | None = None
    token_file: str | None = None
    database: str = "bfr"
    retention_policy: str = ""
    username: str = ""
    password: SecretStr | None = None
    password_file: str | None = None
    ca_file: str | None = None
    verify_ssl: bool = True
    file_dir: str = "./cuffwatch-data"
    gzip: bool = False
    timeout_s: float = Field(default=10.0, gt=0)

    def secret_token(self) -> str | None:
        secret = self.token or _read_secret_file(self.token_file)
        return secret.get_secret_value() if secret else None

    def secret_password(self) -> str | None:
        secret = self.password or _read_secret_file(self.password_file)
        return secret.get_secret_value() if secret else None


class SpoolSettings(_Section):
    dir: str = "/var/lib/cuffwatch/spool"
    max_bytes: int = Field(default=1 << 30, ge=1 << 20)


class HealthSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)


class AckSettings(_Section):
    """The one-tap ack endpoint (SPEC §3, §7): off while `public_url` is unset."""

    public_url: str = ""  # what phones reach (behind a TLS reverse proxy)
    host: str = "127.0.0.1"
    port: int = Field(default=9109, ge=0, le=65535)
    link_ttl_s: PositiveSeconds = 3600.0
    secret: SecretStr | None = None  # CUFFWATCH_ACK__SECRET; never logged
    secret_file: str | None = None

    @field_validator("public_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if value and (parts.scheme not in ("http", "https") or not parts.hostname):
            raise ValueError(f"must be an http(s) URL phones can reach, not {value!r}")
        if parts.query or parts.fragment:  # links are `{public_url}/ack/{token}`
            raise ValueError(f"must have no query or fragment: {value!r}")
        return value.rstrip("/")

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"must be at least {MIN_SECRET_BYTES} bytes (make one with "
                             "`openssl rand -base64 48`)")
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.public_url)

    def secret_bytes(self) -> bytes | None:
        """The signing secret (UTF-8 bytes of `secret` or the file's text), or None."""
        secret = self.secret or _read_secret_file(self.secret_file)
        return secret.get_secret_value().encode() if secret else None


class LimbLimits(_Section):
    """The limits of one kind of limb; `ArmLimits` and `LegLimits` carry the defaults."""

    hard_max_mmhg: float = Field(gt=0)
    default_max_mmhg: float = Field(gt=0)
    max_bout_s: PositiveSeconds


# Arms and legs default differently, so each has its own class: a partial `[alerts.leg]`
# keeps the leg defaults for the keys it leaves out (SPEC §7).
class ArmLimits(LimbLimits):
    hard_max_mmhg: float = Field(default=250.0, gt=0)
    default_max_mmhg: float = Field(default=180.0, gt=0)
    max_bout_s: PositiveSeconds = 900.0


class LegLimits(LimbLimits):
    hard_max_mmhg: float = Field(default=300.0, gt=0)
    default_max_mmhg: float = Field(default=240.0, gt=0)
    max_bout_s: PositiveSeconds = 1200.0


class IpcLimits(_Section):
    """Replaces the limb values for the ipc protocol (SPEC §7 `[alerts.ipc]`)."""

    hard_max_mmhg: float = Field(default=300.0, gt=0)
    warn_bout_s: PositiveSeconds = 330.0
    max_bout_s: PositiveSeconds = 420.0
    min_rest_s: float = Field(default=270.0, ge=0)
    max_bouts_per_hour: int = Field(default=4, ge=1)


class AlertSettings(_Section):
    """Defaults for every team (SPEC §3 names); a team may override any of them."""

    tolerance_mmhg: float = Field(default=15.0, ge=0)
    warn_bout_s: PositiveSeconds = 600.0
    min_rest_s: float = Field(default=60.0, ge=0)
    min_rest_after_max_s: float = Field(default=180.0, ge=0)
    max_session_occlusion_s: PositiveSeconds = 1800.0
    stale_after_s: PositiveSeconds = 10.0
    escalate_after_s: PositiveSeconds = 60.0
    ack_silence_s: PositiveSeconds = 60.0
    reraise_after_s: float = Field(default=30.0, ge=0)
    alert_max_age_s: PositiveSeconds = 60.0
    max_clock_skew_s: PositiveSeconds = 300.0
    max_backlog_s: PositiveSeconds = 3600.0
    arm: ArmLimits = ArmLimits()
    leg: LegLimits = LegLimits()
    ipc: IpcLimits = IpcLimits()

    @model_validator(mode="after")
    def _check_order(self) -> Self:
        problems: list[str] = []
        for name in ("arm", "leg"):
            limits: LimbLimits = getattr(self, name)
            if limits.max_bout_s <= self.warn_bout_s:
                problems.append(
                    f"{name}.max_bout_s ({limits.max_bout_s:g}) must exceed warn_bout_s "
                    f"({self.warn_bout_s:g})"
                )
            # the 5 s mean warning must come before the hard ceiling's critical, not after it
            if limits.default_max_mmhg >= limits.hard_max_mmhg:
                problems.append(
                    f"{name}.default_max_mmhg ({limits.default_max_mmhg:g}) must be below "
                    f"{name}.hard_max_mmhg ({limits.hard_max_mmhg:g})"
                )
        if self.ipc.max_bout_s <= self.ipc.warn_bout_s:
            problems.append(
                f"ipc.max_bout_s ({self.ipc.max_bout_s:g}) must exceed ipc.warn_bout_s "
                f"({self.ipc.warn_bout_s:g})"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


class Route(_Section):
    """One push destination (an Apprise URL) and which alerts it receives."""

    url: SecretStr | None = None  # Apprise URLs may carry tokens: never logged
    url_file: str | None = None
    min_severity: Literal["info", "warning", "critical"] = "warning"
    escalation: bool = False  # true: receives escalations only
    max_per_minute: int = Field(default=30, ge=1)
    # who a tap on this route's pushes acknowledges as (SPEC §3 `acknowledged_by`)
    person: Annotated[str, Field(max_length=64)] = ""

    @model_validator(mode="after")
    def _one_url(self) -> Self:
        if (self.url is None) == (self.url_file is None):
            raise ValueError("give exactly one of url or url_file")
        return self

    @property
    def severity(self) -> Severity:
        return Severity.parse(self.min_severity)

    def secret_url(self) -> str:
        secret = self.url or _read_secret_file(self.url_file)
        assert secret is not None  # guaranteed by _one_url
        return secret.get_secret_value()


class Prescription(_Section):
    """Per athlete and limb: LOP and target, optionally own bout limits and protocol."""

    lop_mmhg: float | None = Field(default=None, gt=0, le=400)
    target_pct_lop: float | None = Field(default=None, gt=0)
    target_mmhg: float | None = Field(default=None, gt=0, le=400)
    max_bout_s: PositiveSeconds | None = None
    warn_bout_s: PositiveSeconds | None = None
    tolerance_mmhg: float | None = Field(default=None, ge=0)
    protocol: Protocol = Protocol.BFR

    @field_validator("target_pct_lop")
    @classmethod
    def _at_most_full_occlusion(cls, value: float | None) -> float | None:
        if value is not None and value > 100:
            raise ValueError(
                f"{value:g} % of LOP is beyond full occlusion: at most 100 (for an absolute "
                "pressure, target_mmhg)"
            )
        return value

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if self.target_pct_lop is not None and self.lop_mmhg is None:
            raise ValueError("target_pct_lop needs lop_mmhg")
        if self.target_pct_lop is not None and self.target_mmhg is not None:
            # one would silently win over the other (target_mmhg did)
            raise ValueError("give target_pct_lop or target_mmhg, not both")
        return self


class Athlete(_Section):
    name: str = ""
    prescriptions: dict[Limb, Prescription] = {}


class RosterCuff(_Section):
    """A cuff of the roster and its default assignment."""

    athlete: str | None = None
    limb: Limb  # required: the rules need arm or leg limits before any assignment arrives


class Team(_Section):
    name: str = ""
    timezone: str = "UTC"  # an IANA zone: pushes and dashboards show the team's local time
    alerts: dict[str, Any] = {}  # partial overrides of [alerts]
    routes: list[Route] = []
    athletes: dict[str, Athlete] = {}
    cuffs: dict[Ident, RosterCuff] = {}

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (an IANA name such as \"Europe/London\")"
            ) from None
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class Assignment(BaseModel):
    """A cuff's current assignment (SPEC §2), from MQTT; fields missing come from the roster."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    athlete: Annotated[str, Field(min_length=1, max_length=64)]
    limb: Limb | None = None
    protocol: Protocol | None = None
    lop_mmhg: float | None = Field(default=None, gt=0, le=400)
    target_pct_lop: float | None = Field(default=None, gt=0, le=150)
    target_mmhg: float | None = Field(default=None, gt=0, le=400)
    max_bout_s: float | None = Field(default=None, gt=0)


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class Settings(BaseSettings):
    """The whole configuration; build it with `load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="CUFFWATCH_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    instance: Ident = "gw-1"
    topic_root: Annotated[str, Field(pattern=r"^[A-Za-z0-9_/-]{1,64}$")] = "bfr"
    broker: BrokerSettings = BrokerSettings()
    influx: InfluxSettings = InfluxSettings()
    spool: SpoolSettings = SpoolSettings()
    health: HealthSettings = HealthSettings()
    ack: AckSettings = AckSettings()
    alerts: AlertSettings = AlertSettings()
    teams: dict[Ident, Team] = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs; the environment overrides it (SPEC §7).
        # pydantic-settings deep-merges the sources, so CUFFWATCH_ALERTS__LEG__HARD_MAX_MMHG
        # replaces that one key and keeps the rest of the file's [alerts.leg].
        return (env_settings, init_settings, file_secret_settings)

    @model_validator(mode="after")
    def _check_roster(self) -> Self:
        problems: list[str] = []
        owner: dict[str, str] = {}
        for team_id, team in self.teams.items():
            for cuff_id in team.cuffs:
                if cuff_id in owner:
                    problems.append(
                        f"teams.{team_id}.cuffs.{cuff_id}: cuff already belongs to team "
                        f"{owner[cuff_id]} (a cuff belongs to one team)"
                    )
                owner[cuff_id] = team_id
            for athlete_id in team.athletes:
                if not _ID_RE.match(athlete_id):
                    problems.append(f"teams.{team_id}.athletes.{athlete_id}: bad athlete id")
            problems += roster_checks.unknown_athletes(
                team_id, team.athletes, {c: cuff.athlete for c, cuff in team.cuffs.items()}
            )
            try:
                self.team_alerts(team_id)
            except ValidationError as exc:
                for err in exc.errors(include_url=False):
                    loc = ".".join(["teams", team_id, "alerts", *(str(p) for p in err["loc"])])
                    msg = err["msg"].removeprefix("Value error, ")
                    problems.extend(f"{loc}: {part}" for part in msg.split("; "))
                continue  # the prescriptions are judged against limits that do not hold
            prescribed = [
                roster_checks.Prescribed(a, rx.target_mmhg, rx.target_pct_lop, rx.lop_mmhg,
                                         self.rule_params(team_id, a, limb))
                for a, athlete in team.athletes.items()
                for limb, rx in athlete.prescriptions.items()
            ]
            problems += roster_checks.dangerous_targets(team_id, prescribed, team.alerts)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # -- lookups used by the gateway, the rules and the dashboards ---------------------------

    def known_athletes(self, team_id: str) -> frozenset[str]:
        """The athletes of a team's roster: its athletes tables and its cuffs' owners."""
        team = self.teams[team_id]
        return frozenset(team.athletes).union(
            c.athlete for c in team.cuffs.values() if c.athlete
        )

    def team_alerts(self, team_id: str) -> AlertSettings:
        """[alerts] with the team's overrides applied.

        The overrides merge key by key at every level, so a partial nested table
        (`[teams.T.alerts.leg]` with only `max_bout_s`) keeps the [alerts] values of the
        keys it leaves out.
        """
        overrides = self.teams[team_id].alerts
        if not overrides:
            return self.alerts
        merged = _deep_merge(self.alerts.model_dump(), overrides)
        return AlertSettings.model_validate(merged)

    def rule_params(
        self,
        team_id: str,
        athlete: str,
        limb: Limb,
        assignment: Assignment | None = None,
    ) -> RuleParams:
        """Resolve the limits: assignment, then the athlete's prescription, then team defaults."""
        team = self.teams[team_id]
        defaults = self.team_alerts(team_id)
        athlete_cfg = team.athletes.get(athlete)
        rx = athlete_cfg.prescriptions.get(limb) if athlete_cfg else None
        a = assignment

        protocol = (a.protocol if a else None) or (rx.protocol if rx else Protocol.BFR)
        lop = (a.lop_mmhg if a else None) or (rx.lop_mmhg if rx else None)
        # the target (SPEC §3): the assignment's, in mmHg or as a share of LOP, before the
        # roster's; a share applies to the LOP in force (a re-measured one included)
        target: float | None = None
        for source in (a, rx):
            if source is None:
                continue
            if source.target_mmhg is not None:
                target = source.target_mmhg
            elif source.target_pct_lop is not None and lop is not None:
                target = round(lop * source.target_pct_lop / 100.0, 1)
            if target is not None:
                break

        limits = defaults.leg if limb.is_leg else defaults.arm
        hard_max = limits.hard_max_mmhg
        warn_bout = (rx.warn_bout_s if rx else None) or defaults.warn_bout_s
        max_bout = limits.max_bout_s
        min_rest = defaults.min_rest_s
        per_hour: int | None = None
        if protocol is Protocol.IPC:
            hard_max = defaults.ipc.hard_max_mmhg
            warn_bout = defaults.ipc.warn_bout_s
            max_bout = defaults.ipc.max_bout_s
            min_rest = defaults.ipc.min_rest_s
            per_hour = defaults.ipc.max_bouts_per_hour
        max_bout = (a.max_bout_s if a else None) or (rx.max_bout_s if rx else None) or max_bout
        return RuleParams(
            limb=limb,
            protocol=protocol,
            tolerance_mmhg=(
                rx.tolerance_mmhg
                if rx and rx.tolerance_mmhg is not None
                else defaults.tolerance_mmhg
            ),
            hard_max_mmhg=hard_max,
            default_max_mmhg=limits.default_max_mmhg,
            lop_mmhg=lop,
            target_mmhg=target,
            warn_bout_s=min(warn_bout, max_bout),
            max_bout_s=max_bout,
            min_rest_s=min_rest,
            min_rest_after_max_s=max(defaults.min_rest_after_max_s, min_rest),
            max_session_occlusion_s=defaults.max_session_occlusion_s,
            max_bouts_per_hour=per_hour,
            stale_after_s=defaults.stale_after_s,
            escalate_after_s=defaults.escalate_after_s,
            ack_silence_s=defaults.ack_silence_s,
            reraise_after_s=defaults.reraise_after_s,
            alert_max_age_s=defaults.alert_max_age_s,
        )

    @property
    def client_id(self) -> str:
        return self.broker.client_id or f"cuffwatch-{self.instance}"


def _format_errors(exc: ValidationError) -> list[str]:
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        # A whole-config check (`_check_roster`) already names each problem's location.
        lines.extend(f"{loc}: {part}" if loc else part for part in msg.split("; "))
    return lines


# The file's sections, validated strictly on their own to find values of the wrong TOML type.
_SECTIONS: dict[str, TypeAdapter[Any]] = {
    "broker": TypeAdapter(BrokerSettings),
    "influx": TypeAdapter(InfluxSettings),
    "spool": TypeAdapter(SpoolSettings),
    "health": TypeAdapter(HealthSettings),
    "ack": TypeAdapter(AckSettings),
    "alerts": TypeAdapter(AlertSettings),
    "teams": TypeAdapter(dict[str, Team]),
}


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read `path` (TOML) plus the environment; raise `ConfigError` listing every problem.

    TOML values must have the type of their key (`lop_mmhg = "160"` is refused); the
    environment's values are strings and are converted.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError([f"{path}: no such file"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    wrongly_typed = toml_types.wrongly_typed(data, _SECTIONS, team_alerts="alerts")
    data = _deep_merge(data, overrides)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        problems = [
            line for line in _format_errors(exc) if line.split(": ", 1)[0] not in wrongly_typed
        ]
        raise ConfigError(problems + [f"{k}: {v}" for k, v in wrongly_typed.items()]) from None
    if wrongly_typed:
        raise ConfigError([f"{k}: {v}" for k, v in wrongly_typed.items()])
    return settings
