"""What a simulation run is told: `SimOptions`, and the `simulate` flags that make them."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from core.config import ID_PATTERN, BrokerSettings, Settings
from sim.faults import FaultKind, FaultSpec, parse_duration
from sim.roster import generated_squad, squad_from_settings
from sim.squad import CuffSpec

__all__ = [
    "DEFAULT_CUFFS",
    "DEFAULT_CUFF_HZ",
    "MAX_BATCH",
    "PER_CUFF_CLIENTS_MAX",
    "POOL_CLIENTS",
    "SimOptions",
    "add_arguments",
    "options_from_args",
]

DEFAULT_CUFF_HZ = 1.0  # one reading per second per cuff, as real cuffs report
DEFAULT_CUFFS = 6  # a generated squad when neither --cuffs nor a roster says otherwise
MAX_BATCH = 256  # SPEC §2: a telemetry message holds at most 256 readings
# Up to this many cuffs, one MQTT connection per cuff: own client id, own last will, as
# real devices. Beyond it the run is a load test; a few shared connections carry it,
# because hundreds of sockets cost a 2-core box more than they show.
PER_CUFF_CLIENTS_MAX = 50
POOL_CLIENTS = 4  # shared connections in a load test: spreads per-connection in-flight windows

_ID_RE = re.compile(ID_PATTERN)
_ROOT_RE = re.compile(r"^[A-Za-z0-9_/-]{1,64}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class SimOptions:
    """Everything `run_simulation` needs; checked on construction (ValueError)."""

    squad: tuple[CuffSpec, ...]
    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # per-cuff credentials (`cuffwatch broker-auth`'s file): each cuff connects as itself
    # (username = client id = cuff id), as the broker's ACL expects of a device
    cuff_passwords: Mapping[str, str] | None = field(default=None, repr=False)
    protocol: Literal[5, 3] = 5  # amqtt (the demo's embedded broker) speaks only 3.1.1
    topic_root: str = "bfr"
    rate: float | None = None  # readings/s over the whole squad; None: 1 Hz per cuff
    batch: int = 1  # readings per message (a JSON array when > 1)
    speed: float = 1.0  # script compression while inflated (sim/squad.py docstring)
    duration_s: float | None = None  # None: until cancelled
    seed: int = 0
    faults: tuple[FaultSpec, ...] = ()
    pool: bool | None = None  # shared connections; None: only above PER_CUFF_CLIENTS_MAX cuffs

    def __post_init__(self) -> None:
        """Check every field; ValueError lists every problem."""
        problems = []
        if not self.squad:
            problems.append("the squad is empty")
        ids = [spec.cuff for spec in self.squad]
        if len(set(ids)) != len(ids):
            problems.append("a cuff id appears twice in the squad")
        bad = [i for spec in self.squad for i in (spec.team, spec.cuff) if not _ID_RE.match(i)]
        if bad:
            problems.append(f"team/cuff ids must be 1–64 of [A-Za-z0-9_-]: {bad[0]!r}")
        if not _ROOT_RE.match(self.topic_root):
            problems.append(f"bad topic root {self.topic_root!r}")
        if self.protocol not in (3, 5):
            problems.append("protocol must be 5 or 3")
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            problems.append("rate must be > 0 readings/s")
        if not 1 <= self.batch <= MAX_BATCH:
            problems.append(f"batch must be 1…{MAX_BATCH} readings")
        if not (self.speed > 0 and math.isfinite(self.speed)):
            problems.append("speed must be > 0")
        if self.duration_s is not None and not self.duration_s > 0:
            problems.append("duration must be > 0 s")
        if self.cuff_passwords is not None:
            if self.pool:
                problems.append("per-cuff credentials need one connection per cuff (no --pool)")
            elif len(self.squad) > PER_CUFF_CLIENTS_MAX and self.pool is None:
                problems.append(
                    f"per-cuff credentials need one connection per cuff: over "
                    f"{PER_CUFF_CLIENTS_MAX} cuffs, say --no-pool"
                )
            lacking = [i for i in ids if i not in self.cuff_passwords]
            if lacking:
                problems.append(
                    f"no password for cuff(s) {', '.join(lacking[:5])}"
                    f"{' …' if len(lacking) > 5 else ''} in the credentials file "
                    "(`cuffwatch broker-auth` writes one for the roster's cuffs)"
                )
        known = set(ids)
        problems += [f"fault {f}: no cuff {f.cuff!r} in the squad"
                     for f in self.faults if f.cuff not in known]
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def cuff_hz(self) -> float:
        """Readings per second of each cuff."""
        return DEFAULT_CUFF_HZ if self.rate is None else self.rate / len(self.squad)

    def credentials_for(self, client_id: str) -> tuple[str | None, str | None]:
        """(username, password) a connection with this client id logs in with."""
        if self.cuff_passwords is not None and client_id in self.cuff_passwords:
            return client_id, self.cuff_passwords[client_id]
        return self.username, self.password

    @property
    def pooled(self) -> bool:
        """Whether cuffs share a few connections instead of one each."""
        return len(self.squad) > PER_CUFF_CLIENTS_MAX if self.pool is None else self.pool


def _positive_int(text: str) -> int:
    """An argparse type: an integer ≥ 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def _duration_arg(text: str) -> float:
    """An argparse type: a duration > 0 in seconds."""
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _fault_arg(text: str) -> FaultSpec:
    """An argparse type: a fault spec."""
    try:
        return FaultSpec.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _batch_arg(text: str) -> int:
    """An argparse type: readings per message."""
    value = _positive_int(text)
    if value > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"at most {MAX_BATCH} readings per message (SPEC §2)")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `simulate` flags (the caller adds `-c/--config`)."""
    kinds = ", ".join(k.value for k in FaultKind)
    parser.add_argument("--broker", metavar="URL",
                        help="mqtt://host:1883 or mqtts://host:8883 (default: the config's "
                        "broker.url; its username and password are used either way)")
    parser.add_argument("--cuffs", type=_positive_int, metavar="N",
                        help="simulate N generated cuffs (c001…) instead of the config's roster "
                        f"(default: the roster, or {DEFAULT_CUFFS} without one)")
    parser.add_argument("--teams", type=_positive_int, default=1, metavar="N",
                        help="spread generated cuffs over teams t1…tN (default 1)")
    parser.add_argument("--rate", type=_positive_float, metavar="R",
                        help="readings per second over the whole squad, for load tests "
                        "(default: 1 per cuff)")
    parser.add_argument("--batch", type=_batch_arg, default=1, metavar="K",
                        help=f"readings per message, as a JSON array (1…{MAX_BATCH}, default 1)")
    parser.add_argument("--speed", type=_positive_float, default=1.0, metavar="X",
                        help="run inflated phases X times faster (elapsed_s too); timestamps, "
                        "reperfusion and rep swings stay real time (default 1)")
    parser.add_argument("--duration", type=_duration_arg, metavar="S",
                        help="stop after S (90, 90s, 2m, 1h; default: until Ctrl-C)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--fault", type=_fault_arg, action="append", default=[], metavar="SPEC",
                        help=f"inject KIND:CUFF[@AT][+FOR], e.g. over_pressure:c003@30s or "
                        f"dropout:c002@1m+20s; repeatable. KIND: {kinds}")
    parser.add_argument("--protocol", type=int, choices=(5, 3), default=None,
                        help="MQTT 5 or 3 (3.1.1) (default: the config's broker.protocol)")
    parser.add_argument("--credentials", type=Path, metavar="FILE",
                        help="per-cuff passwords (the credentials file `cuffwatch broker-auth` "
                        "writes): each cuff connects as itself, as the broker's ACL expects; "
                        "without it every cuff connects as broker.username")
    parser.add_argument("--pool", action=argparse.BooleanOptionalAction, default=None,
                        help=f"share {POOL_CLIENTS} connections instead of one per cuff "
                        f"(default: only above {PER_CUFF_CLIENTS_MAX} cuffs)")


def options_from_args(
    args: argparse.Namespace, settings: Settings, cuff_passwords: Mapping[str, str] | None = None
) -> SimOptions:
    """SimOptions from parsed `simulate` flags over the loaded config (ValueError if bad).

    `cuff_passwords`: read by the caller from `--credentials` (ops owns that file's format).
    """
    if args.cuffs is not None:
        squad = generated_squad(args.cuffs, args.teams, args.seed)
    elif any(team.cuffs for team in settings.teams.values()):
        squad = squad_from_settings(settings)
    else:
        squad = generated_squad(DEFAULT_CUFFS, min(args.teams, DEFAULT_CUFFS), args.seed)
    broker = settings.broker
    endpoint = broker
    if args.broker is not None:
        try:
            endpoint = BrokerSettings(url=args.broker)
        except ValueError as exc:
            raise ValueError(f"--broker {args.broker}: must look like mqtt://host:1883") from exc
    return SimOptions(
        squad=tuple(squad),
        host=endpoint.host,
        port=endpoint.port,
        tls=endpoint.tls,
        ca_file=broker.ca_file,
        cert_file=broker.cert_file,
        key_file=broker.key_file,
        username=broker.username,
        password=broker.secret_password(),
        protocol=args.protocol or broker.protocol,
        topic_root=settings.topic_root,
        rate=args.rate,
        batch=args.batch,
        speed=args.speed,
        duration_s=args.duration,
        seed=args.seed,
        faults=tuple(args.fault),
        pool=args.pool,
        cuff_passwords=cuff_passwords,
    )
