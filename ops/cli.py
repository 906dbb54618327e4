"""`cuffwatch` command line (SPEC §8): run, demo, simulate, assign, ack, dashboards, query…"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from alerts.errors import AlertsError
from core.config import ConfigError, Settings, load_settings
from core.config_checks import file_problems, route_warnings
from core.errors import CoreError
from core.logsafe import OneLineFormatter
from dashboards.errors import DashboardsError
from gateway.errors import GatewayError
from ingest.errors import IngestError
from ops.errors import OpsError
from sim.errors import SimulationError

log = logging.getLogger("cuffwatch")


# One-shot commands say what went wrong themselves, in one line; library logs only with -v.
QUIET_COMMANDS = frozenset({"assign", "ack", "check", "conform"})


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    # one record, one line: messages carry ids, names and details from MQTT (core/logsafe.py)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO,
        handlers=[handler],
    )
    if not verbose:
        for noisy in ("amqtt", "transitions", "aiohttp.access"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL if quiet else logging.WARNING)
        # gmqtt logs every refused CONNACK and closed socket at ERROR/WARNING, and our link
        # says the same once, in plain words (a refusal at start-up ends `run` in one line)
        logging.getLogger("gmqtt").setLevel(logging.CRITICAL)
    # apprise and urllib3 log whole URLs at DEBUG and INFO; a route's tokens live in its path
    for leaky in ("apprise", "urllib3"):
        logging.getLogger(leaky).setLevel(logging.CRITICAL if quiet else logging.WARNING)


def _settings(args: argparse.Namespace, *files: str) -> Settings:
    """The configuration, or exit 2 with one `config: …` line per problem.

    `files`: the parts whose `*_file` secrets and TLS files the command will read ("broker",
    "influx", "routes"); each unusable one is a problem now, not a traceback later.
    """
    try:
        settings = load_settings(args.config)
        if problems := file_problems(settings, *files):
            raise ConfigError(problems)  # noqa: TRY301
    except ConfigError as exc:
        for line in exc.problems:
            print(f"config: {line}", file=sys.stderr)
        raise SystemExit(2) from None
    return settings


# -- run ------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from alerts.push import PushDispatcher
    from gateway.app import Gateway

    settings = _settings(args, "broker", "influx", "routes", "ack")

    from alerts.push import PushConfigError

    try:
        push = PushDispatcher.from_settings(settings)  # pushes in the teams' names and time
    except PushConfigError as exc:
        for line in exc.problems:
            print(f"config: {line}", file=sys.stderr)
        return 2
    # what the routes leave undone (criticals escalating to nobody), for this gateway's teams
    for line in route_warnings(settings, settings.broker.teams or None):
        log.warning("%s", line)

    async def main() -> None:
        gw = Gateway(settings, notifiers=[push])
        # What exists now (modules, config, roster) lives as long as the process: frozen out
        # of the collector's way, a full collection at 1,000 cuffs walks 48k objects, not
        # 105k (35.6 -> 11.8 ms; a full collection stops the event loop, alerts included).
        gc.collect()
        gc.freeze()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, gw.stop)
        await gw.run()

    asyncio.run(main())
    return 0


# -- assign / ack ---------------------------------------------------------------------------------


PUBLISH_ACK_TIMEOUT_S = 10.0  # assign/ack wait this long for the broker's PUBACK
REFUSAL_GRACE_S = 0.3  # a broker may drop a client after refusing a publish (not Mosquitto 2.0.11)
ANSWER_TIMEOUT_S = 5.0  # ... and this long for the gateway's answer (MQTT 5)


class PublishError(OpsError):
    """assign/ack: the broker is unreachable, refused us, or did not take the message."""


async def _request_once(
    settings: Settings, team: str, topic: str, payload: bytes, *, retain: bool,
    username: str | None,
) -> dict[str, object] | None:
    """Publish once with QoS 1 and wait for the broker's PUBACK; over MQTT 5, ask the
    gateway for an answer (Response Topic: the team's reply topic of this client) and
    return it. None over MQTT 3.1.1, which has no way to ask.

    Raises PublishError, never SystemExit: a BaseException raised in a task stops the event
    loop mid-step, and asyncio.run() then cancels gmqtt's unowned tasks, which log tracebacks.
    """
    import uuid

    from core.topics import Topics
    from gateway.mqtt import MqttError
    from gateway.mqtt_build import link_from_settings

    client_id = f"cuffwatch-cli-{uuid.uuid4().hex[:8]}"
    mqtt5 = settings.broker.protocol == 5
    reply_topic = Topics(settings.topic_root).reply(team, client_id)
    answers: asyncio.Queue[bytes] = asyncio.Queue()

    def on_answer(_topic: str, body: bytes, _qos: int, _retain: bool) -> None:
        answers.put_nowait(body)

    async def nothing_to_wait_for(_position: int) -> None:
        return None

    link = link_from_settings(
        settings.broker, client_id=client_id, username=username, clean_start=True,
        session_expiry_s=0,  # a one-shot client: leave no session (or reply subscription) behind
        subscriptions=[reply_topic] if mqtt5 else [],
        on_message_fast=on_answer, on_flush=lambda: None, wait_durable=nothing_to_wait_for,
    )
    try:
        await link.connect(retry=False)
    except MqttError as exc:
        raise PublishError(str(exc)) from None
    try:
        if mqtt5:
            link.outbound.publish_request(topic, payload, response_topic=reply_topic,
                                          retain=retain)
        else:
            link.publish(topic, payload, qos=1, retain=retain)
        await asyncio.wait_for(link.outbound.publishes_acked(), PUBLISH_ACK_TIMEOUT_S)
        # MQTT 5 says no in the PUBACK; on 3.1.1 Mosquitto only drops the connection
        if link.outbound.refused_publishes or await link.lost_within(REFUSAL_GRACE_S):
            # a broker that answers a refusal by closing the connection (Mosquitto 2.0.11 does not)
            raise PublishError(f"the broker refused the publish to {topic} (not authorised?)")
    except TimeoutError:
        raise PublishError(f"no acknowledgement from the broker for {topic}") from None
    try:
        if not mqtt5:
            return None
        try:
            body = await asyncio.wait_for(answers.get(), ANSWER_TIMEOUT_S)
        except TimeoutError:
            raise PublishError(
                f"no answer from the gateway within {ANSWER_TIMEOUT_S:g} s: is `cuffwatch run` "
                f"up for team {team}?"
            ) from None
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
            raise PublishError(f"an unreadable answer on {reply_topic}")
        return answer
    finally:
        await link.disconnect()


def _request(
    command: str, settings: Settings, team: str, topic: str, payload: bytes, *, retain: bool,
    username: str | None,
) -> tuple[bool, dict[str, object] | None]:
    """`_request_once` as (sent, answer); if not sent, says why on one line of stderr."""
    try:
        return True, asyncio.run(_request_once(settings, team, topic, payload, retain=retain,
                                               username=username))
    except PublishError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return False, None


def _refused(command: str, answer: dict[str, object], more: str = "") -> int:
    """The gateway said no: one line, exit 1."""
    said = f"{answer.get('reason', '?')}: {answer.get('detail', '')}".rstrip(": ")
    print(f"{command}: the gateway refused: {said}{' ' + more if more else ''}", file=sys.stderr)
    return 1


UNCONFIRMED = ("(not confirmed by the gateway: MQTT 3.1.1 has no way to ask for an answer; "
               "broker.protocol = 5 does)")


def _check_roster(command: str, settings: Settings, team: str, cuff: str) -> bool:
    """With teams configured, the team and the cuff must be in the roster: one line if not."""
    if not settings.teams:
        return True  # a config naming no teams: only the gateway's answer can tell
    config = settings.teams.get(team)
    if config is None:
        print(f"{command}: no team {team!r} in the configuration "
              f"(teams: {', '.join(sorted(settings.teams))})", file=sys.stderr)
        return False
    if cuff not in config.cuffs:
        print(f"{command}: no cuff {cuff!r} in team {team}'s roster "
              f"(cuffs: {', '.join(sorted(config.cuffs)) or 'none'})", file=sys.stderr)
        return False
    return True


def cmd_assign(args: argparse.Namespace) -> int:
    from core.config import Assignment
    from core.topics import Topics

    settings = _settings(args, "broker")
    topic = Topics(settings.topic_root).assignment(args.team, args.cuff)
    if not args.clear and not args.athlete:
        print("assign: --athlete is required (or --clear)", file=sys.stderr)
        return 2
    if not _check_roster("assign", settings, args.team, args.cuff):
        return 2
    if args.clear:
        payload = b""
    else:
        known = settings.known_athletes(args.team) if args.team in settings.teams else None
        if known is not None and args.athlete not in known:
            print(f"assign: no athlete {args.athlete!r} in team {args.team}'s roster "
                  f"(athletes: {', '.join(sorted(known)) or 'none'})", file=sys.stderr)
            return 2
        fields = {
            "athlete": args.athlete,
            "limb": args.limb,
            "protocol": args.protocol,
            "lop_mmhg": args.lop,
            "target_pct_lop": args.target_pct,
            "target_mmhg": args.target,
            "max_bout_s": args.max_bout_s,
        }
        assignment = Assignment.model_validate({k: v for k, v in fields.items() if v is not None})
        payload = assignment.model_dump_json(exclude_none=True).encode()
    sent, answer = _request("assign", settings, args.team, topic, payload, retain=True,
                            username=args.username)
    if not sent:
        return 1
    if answer is None:
        print(f"{'cleared' if args.clear else 'assigned'}: {topic} {UNCONFIRMED}")
        return 0
    if not answer["ok"]:
        # the broker keeps the refused message retained, and the gateway refuses it again
        # at each start: say how to replace it
        return _refused("assign", answer, "(it stays retained on the broker: assign a "
                        "valid one, or --clear)" if not args.clear else "")
    print(f"{'cleared' if args.clear else 'assigned'}: {answer.get('detail', topic)}")
    return 0


def cmd_ack(args: argparse.Namespace) -> int:
    from alerts.model import AlertKind
    from core.topics import Topics

    settings = _settings(args, "broker")
    kinds = [k.value for k in AlertKind]
    if args.kind not in kinds:
        print(f"ack: no alert kind {args.kind!r} (kinds: {', '.join(kinds)})", file=sys.stderr)
        return 2
    if not _check_roster("ack", settings, args.team, args.cuff):
        return 2
    topic = Topics(settings.topic_root).ack(args.team, args.cuff, args.kind)
    payload = json.dumps({"by": args.by}).encode() if args.by else b""
    sent, answer = _request("ack", settings, args.team, topic, payload, retain=False,
                            username=args.username)
    if not sent:
        return 1
    if answer is None:
        print(f"acknowledged: {topic} {UNCONFIRMED}")
        return 0
    if not answer["ok"]:
        return _refused("ack", answer)
    alert = answer.get("alert")
    said = alert.get("message", "") if isinstance(alert, dict) else ""
    print(f"acknowledged: {args.kind} on {args.team}/{args.cuff}"
          + (f" by {args.by}" if args.by else "") + (f" ({said})" if said else ""))
    return 0


# -- check ----------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from ops.check import run_checks

    try:
        settings = load_settings(args.config)
        if problems := file_problems(settings, "broker", "influx", "routes", "ack"):
            raise ConfigError(problems)  # noqa: TRY301
    except ConfigError as exc:
        for line in exc.problems:
            print(f"FAIL config: {line}")
        return 1
    problems = asyncio.run(
        run_checks(settings, timeout_s=args.timeout, send_test=args.send_test)
    )
    return 1 if problems else 0


# -- conform --------------------------------------------------------------------------------------


def cmd_conform(args: argparse.Namespace) -> int:
    from ops import conform

    return conform.run_command(args, _settings(args, "broker"))


# -- demo / simulate ------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from sim.demo import run_demo

    return run_demo(args)


def cmd_simulate(args: argparse.Namespace) -> int:
    from ops.brokerauth import load_credentials
    from sim import simulate
    from sim.feed import SimStats

    settings = _settings(args, "broker")
    passwords = load_credentials(args.credentials) if args.credentials else None
    if args.credentials and not passwords:
        print(f"simulate: {args.credentials}: no [passwords] (run cuffwatch broker-auth)",
              file=sys.stderr)
        return 2
    try:
        options = simulate.options_from_args(args, settings, passwords)
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    stats = SimStats()

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await simulate.run_simulation(options, stats=stats)

    try:
        asyncio.run(main())
    except simulate.SimulationError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 1
    if stats.denied:
        # MQTT 5 says so in the PUBACK; a 3.1.1 broker drops a refused publish silently
        print(
            f"simulate: the broker refused {stats.denied} of "
            f"{stats.messages + stats.statuses} message(s) (not authorised: check its ACL; "
            "cuffs connect as themselves with --credentials FILE)",
            file=sys.stderr,
        )
        return 1
    return 0


# -- dashboards / query / broker-auth -------------------------------------------------------------


def cmd_dashboards(args: argparse.Namespace) -> int:
    from dashboards import build, push

    settings = _settings(args)
    if args.action == "build":
        return build.build_command(settings, Path(args.out or "dashboards/generated"))
    return push.push_command(settings, Path(args.out) if args.out else None, args.url, args.token)


def cmd_query(args: argparse.Namespace) -> int:
    from ingest.query import query_command

    settings = _settings(args, "influx")
    return query_command(
        settings,
        args.kind,
        args.team,
        args.athlete,
        args.since,
        args.start,
        args.end,
        args.format,
        args.out,
        limit=args.limit,
    )


def cmd_broker_auth(args: argparse.Namespace) -> int:
    from ops import brokerauth

    return brokerauth.run_command(args, _settings(args))


# -- parser ---------------------------------------------------------------------------------------

AddArguments = Callable[[argparse.ArgumentParser], None]  # a command's own arguments
Command = Callable[[argparse.Namespace], int]  # a command's handler: the exit status


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cuffs", type=int, default=8, help="simulated cuffs (default 8)")
    p.add_argument(
        "--speed",
        type=float,
        default=10.0,
        help="session time compression (default 10x, so bouts end within minutes)",
    )
    p.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    p.add_argument("--data-dir", default=None, help="where the demo keeps spool and line files")
    p.add_argument("--no-faults", action="store_true", help="a squad without injected faults")
    p.add_argument("--port", type=int, default=0, help="embedded broker port (default: free)")


def _simulate_arguments(p: argparse.ArgumentParser) -> None:
    from sim import simulate

    simulate.add_arguments(p)


def _cuff_arguments(p: argparse.ArgumentParser) -> None:
    """assign and ack: which cuff."""
    p.add_argument("--team", required=True)
    p.add_argument("--cuff", required=True)


def _username_argument(p: argparse.ArgumentParser) -> None:
    """assign and ack: who publishes."""
    p.add_argument(
        "--username",
        help="broker user (staff-TEAM with broker-auth's ACLs; "
        "password from CUFFWATCH_BROKER__PASSWORD)",
    )


def _assign_arguments(p: argparse.ArgumentParser) -> None:
    _cuff_arguments(p)
    p.add_argument("--athlete")
    p.add_argument("--limb", choices=["left_arm", "right_arm", "left_leg", "right_leg"])
    p.add_argument("--protocol", choices=["bfr", "ipc"])
    p.add_argument("--lop", type=float, help="limb occlusion pressure, mmHg")
    p.add_argument("--target-pct", type=float, help="target, %% of LOP")
    p.add_argument("--target", type=float, help="target, mmHg")
    p.add_argument("--max-bout-s", type=float)
    p.add_argument("--clear", action="store_true", help="clear the assignment")
    _username_argument(p)


def _ack_arguments(p: argparse.ArgumentParser) -> None:
    _cuff_arguments(p)
    p.add_argument("--kind", required=True, help="alert kind, e.g. over_pressure")
    p.add_argument("--by", help="who acknowledges")
    _username_argument(p)


def _dashboards_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["build", "push"])
    p.add_argument("--out", default=None, help="output dir (build; default dashboards/generated)")
    p.add_argument("--url", default=None, help="Grafana URL (push; or GRAFANA_URL)")
    p.add_argument(
        "--token",
        default=None,
        help="service-account token (push; better: GRAFANA_TOKEN in the environment)",
    )


def _query_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=["bouts", "telemetry", "alerts"])
    p.add_argument("--team", required=True)
    p.add_argument("--athlete")
    p.add_argument("--since", default=None, help="e.g. 7d, 24h, 30m (default 7d)")
    p.add_argument("--from", dest="start", help="RFC 3339 start")
    p.add_argument("--to", dest="end", help="RFC 3339 end")
    p.add_argument("--format", default="table", choices=["table", "csv", "json", "parquet"])
    p.add_argument("--out", help="write to FILE instead of stdout")
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="only the latest N rows, 0 for all (default: 200 in a table, all otherwise)",
    )


def _check_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=5.0, help="per connection, seconds")
    p.add_argument(
        "--send-test",
        action="store_true",
        help="send each push route a test push, labelled as a test (without it, check "
        "sends nothing: it connects to the services it can reach without sending)",
    )


def _conform_arguments(p: argparse.ArgumentParser) -> None:
    from ops import conform

    conform.add_arguments(p)


def _broker_auth_arguments(p: argparse.ArgumentParser) -> None:
    from ops import brokerauth

    brokerauth.add_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cuffwatch",
        description="Telemetry and safety alerts for blood-flow-restriction cuffs.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # (name, help, its own arguments, handler), in the order `cuffwatch --help` lists them;
    # built per call, so that the handlers are the module's as the parser is built
    commands: tuple[tuple[str, str, AddArguments | None, Command], ...] = (
        ("run", "run the gateway", None, cmd_run),
        ("demo", "everything on embedded defaults: broker, simulated squad, gateway, live table",
         _demo_arguments, cmd_demo),
        ("simulate", "a virtual squad of cuffs against any broker", _simulate_arguments,
         cmd_simulate),
        ("assign", "assign a cuff to an athlete and limb (retained)", _assign_arguments,
         cmd_assign),
        ("ack", "acknowledge an open alert", _ack_arguments, cmd_ack),
        ("dashboards", "Grafana dashboards as code", _dashboards_arguments, cmd_dashboards),
        ("query", "query stored bouts, telemetry or alerts", _query_arguments, cmd_query),
        ("check", "validate the config and try every connection", _check_arguments, cmd_check),
        ("broker-auth", "write Mosquitto password and ACL files from the roster",
         _broker_auth_arguments, cmd_broker_auth),
        ("conform", "watch one device (or bridge) on a broker and check it against the "
         "contract, rule by rule", _conform_arguments, cmd_conform),
    )
    for name, help_, add_arguments, handler in commands:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            help="cuffwatch.toml (default: none; "
            "every key also from CUFFWATCH_… environment variables)",
        )
        if add_arguments is not None:
            add_arguments(p)
        p.set_defaults(func=handler)
    return parser


# Each package's exception root: what a command could not do, said in one line. Anything
# else is a bug and keeps its traceback.
ERROR_ROOTS: tuple[type[Exception], ...] = (
    CoreError, AlertsError, IngestError, GatewayError, DashboardsError, SimulationError, OpsError,
)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, quiet=args.command in QUIET_COMMANDS)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except ERROR_ROOTS as exc:
        print(f"cuffwatch {args.command}: {exc}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        # a TaskGroup's failure: ours are still one line each; anything else keeps its traceback
        ours, rest = group.split(ERROR_ROOTS)
        if ours is None or rest is not None:
            raise
        for leaf in _leaves(ours):
            print(f"cuffwatch {args.command}: {leaf}", file=sys.stderr)
        return 1


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions of a (nested) exception group."""
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


if __name__ == "__main__":
    raise SystemExit(main())
