"""Real Mosquitto, InfluxDB 1.x and VictoriaMetrics processes on free loopback ports for tests.

Each server runs from its own temporary directory (config, data, log), listens only on
127.0.0.1, and is stopped by its PID. Only the standard library is used, so this module
works before anything of ours is importable. The binaries come from Debian packages that
`scripts/ensure-services` installs; a missing one raises `MissingBinaryError` naming it.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Self, TypeVar

LOOPBACK = "127.0.0.1"

START_TIMEOUT_S = 60.0  # each server is up in < 0.1 s here; this only bounds a wedged start
STOP_TIMEOUT_S = 20.0  # influxd snapshots its WAL cache on SIGTERM before it exits
POLL_INTERVAL_S = 0.02  # readiness polls: fast enough to add nothing noticeable to a fixture
HTTP_TIMEOUT_S = 10.0  # generous for loopback; a paused server fails this way, not by hanging
START_ATTEMPTS = 5  # a free port can be taken between our probe and the server's bind
LOG_TAIL_LINES = 40  # enough of a server's log to see why it did not come up
BIND_ERROR_MARKERS = ("address already in use",)  # how all three servers report a taken port
_TCP_LISTEN = "0A"  # the LISTEN state's code in /proc/net/tcp

# Debian installs some daemons in sbin, which a non-root PATH often lacks.
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")


class ServerError(RuntimeError):
    """A test server could not be started, stopped or queried."""


class MissingBinaryError(ServerError):
    """A server binary is not installed; `scripts/ensure-services` installs it."""


class ServerHTTPError(ServerError):
    """A server answered an HTTP request with an unexpected status."""

    def __init__(self, method: str, url: str, status: int, body: bytes) -> None:
        """Keep the status and body for the caller."""
        self.status = status
        self.body = body
        text = body.decode("utf-8", "replace").strip()
        super().__init__(f"{method} {url} answered {status}: {text[:2000]}")


@dataclass(frozen=True, slots=True)
class HTTPResponse:
    """Status and body of an HTTP exchange with a test server."""

    status: int
    body: bytes

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)


def http_request(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = HTTP_TIMEOUT_S,
) -> HTTPResponse:
    """Send one HTTP request and return status and body, whatever the status."""
    if not url.startswith("http://"):
        raise ValueError(f"only plain http to our own servers, not {url!r}")
    # S310: the scheme is checked above; these URLs point at our own loopback servers.
    request = urllib.request.Request(  # noqa: S310
        url, data=body, method=method, headers=dict(headers or {})
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return HTTPResponse(status=response.status, body=response.read())
    except urllib.error.HTTPError as error:
        with error:
            return HTTPResponse(status=error.code, body=error.read())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (callers retry on a bind race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def find_binary(name: str) -> str:
    """The path of an installed server binary, or MissingBinaryError naming the fix."""
    found = shutil.which(name)
    if found is None:
        for directory in _SBIN_DIRS:
            candidate = Path(directory) / name
            if os.access(candidate, os.X_OK):
                found = str(candidate)
                break
    if found is None:
        raise MissingBinaryError(
            f"{name!r} is not installed: run scripts/ensure-services (as root) to install "
            "mosquitto, mosquitto-clients, influxdb, influxdb-client and victoria-metrics"
        )
    return found


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process pid listens on, read from Linux's /proc."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == _TCP_LISTEN and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _clean_env(prefixes: Sequence[str]) -> dict[str, str]:
    """This process's environment without variables a server would read as configuration."""
    return {k: v for k, v in os.environ.items() if not k.startswith(tuple(prefixes))}


class ServerProcess:
    """One server process: start, readiness wait, pause/resume, stop and kill by PID."""

    name = "server"
    #: environment variable prefixes the server reads as configuration; dropped from its env
    env_prefixes: tuple[str, ...] = ()

    def __init__(self, tmpdir: Path | str | None = None) -> None:
        """Prepare a server whose files live in tmpdir (a fresh temporary dir if None)."""
        self._owns_tmpdir = tmpdir is None
        self.tmpdir = (
            Path(tempfile.mkdtemp(prefix=f"cuffwatch-{self.name}-"))
            if tmpdir is None
            else Path(tmpdir)
        )
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.tmpdir / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._ports_fixed = False
        self._paused = False
        self._log_offset = 0

    # -- to be provided by each server ------------------------------------------------

    def _allocate_ports(self) -> None:
        """Pick free ports for every listener."""
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write configuration files for the current ports."""

    def _command(self) -> list[str]:
        """The command line that runs the server in the foreground."""
        raise NotImplementedError

    def _listen_ports(self) -> list[int]:
        """Every port the server must listen on."""
        raise NotImplementedError

    def _is_ready(self) -> bool:
        """Whether the server, already listening on its ports, answers requests."""
        return True

    def _env(self) -> dict[str, str]:
        """Variables the server reads as configuration, on top of the cleaned environment."""
        return {}

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """PID of the running process, or None."""
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        """Whether the process is alive (paused counts as alive)."""
        return self._process is not None and self._process.poll() is None

    @property
    def paused(self) -> bool:
        """Whether the process is stopped by SIGSTOP."""
        return self._paused and self.running

    def start(self) -> Self:
        """Start the server and wait until it answers; the same ports and data on a restart."""
        if self.running:
            raise ServerError(f"{self.name} is already running (pid {self.pid})")
        last_error: ServerError | None = None
        for _attempt in range(START_ATTEMPTS):
            if not self._ports_fixed:
                self._allocate_ports()
            self._prepare()
            try:
                self._spawn_and_wait()
            except _BindRaceError as error:
                last_error = error
                continue
            self._ports_fixed = True
            return self
        assert last_error is not None
        raise last_error

    def _spawn_and_wait(self) -> None:
        """Run the command and wait for readiness, raising with the log's tail on failure."""
        command = self._command()
        self._log = self.log_path.open("ab")
        self._log_offset = self._log.tell()
        self._process = subprocess.Popen(
            command,
            cwd=self.tmpdir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=_clean_env(self.env_prefixes) | self._env(),
            start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, not the servers
        )
        self._paused = False
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._reap()
                if any(marker in self._log_since_start().lower() for marker in BIND_ERROR_MARKERS):
                    raise _BindRaceError(self._failure(f"exited with {code}: a port was taken"))
                raise ServerError(self._failure(f"exited with {code} during start-up"))
            # Our own PID must hold the ports: a stranger on a port would fool a mere probe.
            if set(self._listen_ports()) <= listening_ports(self._process.pid) and self._is_ready():
                return
            if time.monotonic() > deadline:
                self._signal(signal.SIGKILL)
                self._reap()
                raise ServerError(self._failure(f"not ready within {START_TIMEOUT_S:.0f} s"))
            time.sleep(POLL_INTERVAL_S)

    def stop(self) -> None:
        """Stop the server with SIGTERM (SIGKILL if it does not exit in time); idempotent."""
        if self._process is None:
            return
        self.resume()
        self._signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
        self._reap()

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash would; idempotent."""
        if self._process is None:
            return
        self._signal(signal.SIGKILL)
        self._reap()

    def pause(self) -> None:
        """Freeze the server with SIGSTOP: connections stay open, nothing is answered."""
        if not self.running:
            raise ServerError(f"{self.name} is not running")
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Undo pause() with SIGCONT; a no-op if not paused."""
        if self._paused and self.running:
            self._signal(signal.SIGCONT)
        self._paused = False

    def close(self) -> None:
        """Stop the server and delete its temporary directory if this object created it."""
        self.stop()
        if self._owns_tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def __enter__(self) -> Self:
        """Start the server."""
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        """Stop the server and remove what it owns."""
        self.close()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the server's log."""
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:])

    def _log_since_start(self) -> str:
        """What the server logged since the latest start."""
        with contextlib.suppress(FileNotFoundError), self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode("utf-8", "replace")
        return ""

    def _failure(self, what: str) -> str:
        """A start-up failure message with the command and the log's tail."""
        return (
            f"{self.name} {what}\n  command: {' '.join(self._command())}\n"
            f"  log {self.log_path}, last lines:\n{self.log_tail()}"
        )

    def _signal(self, signum: signal.Signals) -> None:
        """Send a signal to our process if it is still alive."""
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signum)

    def _reap(self) -> None:
        """Wait for the process and close its log handle."""
        if self._process is not None:
            self._process.wait()
            self._process = None
        self._paused = False
        if self._log is not None:
            self._log.close()
            self._log = None

    def __repr__(self) -> str:
        """Name, state and directory, for test failure output."""
        state = "paused" if self.paused else "running" if self.running else "stopped"
        return f"<{type(self).__name__} {state} pid={self.pid} dir={self.tmpdir}>"


ServerT = TypeVar("ServerT", bound=ServerProcess)


def start_or_fail(make: Callable[[], ServerT]) -> ServerT:  # noqa: RET503 - pytest.fail
    """Build and start a server for a test; a missing binary or a failed start fails the test.

    Never a skip: under CI a server that cannot run is a red build. (pytest is imported here
    only: the benchmarks start their servers with `start()` and see the exception.)
    """
    import pytest

    server: ServerT | None = None
    try:
        server = make()
        return server.start()
    except MissingBinaryError as error:
        failure = str(error)
    except ServerError as error:
        failure = f"could not start a test server: {error}"
    if server is not None:
        server.close()
    pytest.fail(failure, pytrace=False)  # outside `except`: no chained traceback noise


class _BindRaceError(ServerError):
    """The server lost a race for a port we had probed as free."""


# -- Mosquitto ------------------------------------------------------------------------

MQTT_MAX_PACKET_BYTES = 1 << 20  # far above SPEC's 64 KiB: oversize payloads reach the gateway
MQTT_MAX_INFLIGHT = 1000  # a squad's burst fits in flight; the broker default 20 throttles QoS 1
MQTT_AUTOSAVE_S = 1  # a SIGKILLed broker loses at most ~1 s of session state (stop() saves all)


class MosquittoServer(ServerProcess):
    """A Mosquitto 2 broker on 127.0.0.1 with persistence in its temp dir.

    `extra_listeners` maps a name to the option lines of one more listener (TLS files,
    `require_certificate true`, `protocol websockets`...); its port is `ports[name]`.
    `extra_config` lines are added to the global section. Authentication: pass
    `password_file` (made with mosquitto_passwd) or `users` ({name: password}, hashed
    here), and `acl_file` or `acl` (the ACL text); either turns anonymous access off unless
    `allow_anonymous` says otherwise.
    """

    name = "mosquitto"

    def __init__(
        self,
        tmpdir: Path | str | None = None,
        *,
        allow_anonymous: bool | None = None,
        extra_config: Sequence[str] = (),
        extra_listeners: Mapping[str, Sequence[str]] | None = None,
        password_file: Path | str | None = None,
        users: Mapping[str, str] | None = None,
        acl_file: Path | str | None = None,
        acl: str | None = None,
        run_as: str | None = None,
    ) -> None:
        """Configure, without starting, a broker (see the class docstring).

        `run_as`: as root, the user the broker drops to, as a packaged Mosquitto does
        (`mosquitto`); its own files (config, log, persistence) are made that user's, the
        password file and ACL are left as they are. Default: stay the current user.
        """
        super().__init__(tmpdir)
        self.run_as = run_as
        self.host = LOOPBACK
        self.port = 0
        self.ports: dict[str, int] = {}
        self.extra_config = list(extra_config)
        self.extra_listeners = {k: list(v) for k, v in (extra_listeners or {}).items()}
        if password_file is not None and users is not None:
            raise ValueError("pass password_file or users, not both")
        if acl_file is not None and acl is not None:
            raise ValueError("pass acl_file or acl, not both")
        self.password_file = Path(password_file) if password_file is not None else None
        self.users = dict(users or {})
        self.acl_file = Path(acl_file) if acl_file is not None else None
        self.acl = acl
        authenticated = bool(password_file or users or acl_file or acl is not None)
        self.allow_anonymous = not authenticated if allow_anonymous is None else allow_anonymous
        self.config_path = self.tmpdir / "mosquitto.conf"
        self.persistence_dir = self.tmpdir / "persistence"
        self._binary = find_binary("mosquitto")

    @property
    def url(self) -> str:
        """The broker's URL, e.g. mqtt://127.0.0.1:41234."""
        return f"mqtt://{self.host}:{self.port}"

    def _allocate_ports(self) -> None:
        """A free port for the plain listener and one for each extra listener."""
        self.port = free_port()
        self.ports = {"default": self.port} | {name: free_port() for name in self.extra_listeners}

    def _prepare(self) -> None:
        """Write mosquitto.conf, and the password and ACL files when given as data."""
        self.persistence_dir.mkdir(exist_ok=True)
        if self.users and self.password_file is None:
            self.password_file = self.tmpdir / "passwords"
            self.password_file.write_text("")
            for user, password in self.users.items():
                subprocess.run(
                    [
                        find_binary("mosquitto_passwd"),
                        "-b",
                        str(self.password_file),
                        user,
                        password,
                    ],
                    check=True,
                    capture_output=True,
                )
        if self.acl is not None and self.acl_file is None:
            self.acl_file = self.tmpdir / "acl"
            self.acl_file.write_text(self.acl)
        self.config_path.write_text("\n".join(self._config_lines()) + "\n")
        if self.run_as is not None and os.geteuid() == 0:
            account = pwd.getpwnam(self.run_as)
            for own in (self.tmpdir, self.persistence_dir):
                os.chown(own, account.pw_uid, account.pw_gid)
            for parent in self.tmpdir.parents:  # traversable (not listable) on the way there
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    parent.chmod(mode | 0o001)

    def _config_lines(self) -> list[str]:
        """The broker's configuration: global options first, then the listeners."""
        lines = [
            "# generated by tests/servers.py",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            "persistence true",
            f"persistence_location {self.persistence_dir}/",
            f"autosave_interval {MQTT_AUTOSAVE_S}",
            "max_queued_messages 0",  # unlimited: a gateway's backlog after an outage is the test
            "max_queued_bytes 0",
            f"max_inflight_messages {MQTT_MAX_INFLIGHT}",
            f"max_packet_size {MQTT_MAX_PACKET_BYTES}",
            "set_tcp_nodelay true",  # Nagle would add tens of ms to every alert publish
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if os.geteuid() == 0:
            # As root mosquitto switches to the `mosquitto` user, who cannot write our temp dir.
            lines.append(f"user {self.run_as or getpass.getuser()}")
        if self.password_file is not None:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        lines.extend(self.extra_config)
        lines.append(f"listener {self.port} {self.host}")
        for name, options in self.extra_listeners.items():
            lines.append(f"listener {self.ports[name]} {self.host}")
            lines.extend(options)
        return lines

    def _command(self) -> list[str]:
        """mosquitto -c CONFIG."""
        return [self._binary, "-c", str(self.config_path)]

    def _listen_ports(self) -> list[int]:
        """The plain listener and every extra one."""
        return list(self.ports.values())


# -- InfluxDB 1.x ---------------------------------------------------------------------

INFLUX_QUERY_TIMEOUT = "60s"  # a runaway query fails inside pytest's 120 s test timeout


class InfluxDB1Server(ServerProcess):
    """An InfluxDB 1.x server (`influxd`) on 127.0.0.1 with every file in its temp dir."""

    name = "influxd"
    env_prefixes = ("INFLUXDB_",)  # influxd reads INFLUXDB_* variables as config overrides

    def __init__(self, tmpdir: Path | str | None = None) -> None:
        """Configure, without starting, an InfluxDB 1.x server."""
        super().__init__(tmpdir)
        self.host = LOOPBACK
        self.port = 0
        self.rpc_port = 0
        self.config_path = self.tmpdir / "influxdb.conf"
        self._binary = find_binary("influxd")

    @property
    def url(self) -> str:
        """The HTTP API's URL, e.g. http://127.0.0.1:41234."""
        return f"http://{self.host}:{self.port}"

    def _allocate_ports(self) -> None:
        """Free ports for the HTTP API and the RPC (backup/restore) service."""
        self.port = free_port()
        self.rpc_port = free_port()

    def _prepare(self) -> None:
        """Rewrite `influxd config`'s built-in defaults for a private loopback test server."""
        defaults = subprocess.run(
            [self._binary, "config", "-config", os.devnull],  # built-in defaults, not /etc
            check=True,
            capture_output=True,
            env=_clean_env(self.env_prefixes) | self._env(),
        ).stdout.decode()
        self.config_path.write_text(dump_toml(self._rewrite(tomllib.loads(defaults))))

    def _rewrite(self, config: dict[str, Any]) -> dict[str, Any]:
        """Move every dir into tmpdir and every listener to 127.0.0.1; turn off the extras."""
        home = self.tmpdir / "var"
        config["reporting-enabled"] = False
        config["bind-address"] = f"{self.host}:{self.rpc_port}"
        config["meta"] |= {"dir": str(home / "meta"), "logging-enabled": False}
        config["data"] |= {
            "dir": str(home / "data"),
            "wal-dir": str(home / "wal"),
            "query-log-enabled": False,
        }
        config["coordinator"] |= {"query-timeout": INFLUX_QUERY_TIMEOUT}
        config["monitor"] |= {"store-enabled": False}  # no _internal database written every 10 s
        config["http"] |= {
            "enabled": True,
            "bind-address": f"{self.host}:{self.port}",
            "auth-enabled": False,
            "log-enabled": False,
            "pprof-enabled": False,
            "unix-socket-enabled": False,
            "bind-socket": str(home / "influxdb.sock"),
        }
        config["logging"] |= {"suppress-logo": True}
        if "continuous_queries" in config:
            config["continuous_queries"] |= {"log-enabled": False}
        for section in ("ifql", "flux"):
            if section in config:
                config[section] |= {"enabled": False, "bind-address": f"{self.host}:0"}
        for service in ("graphite", "collectd", "opentsdb", "udp"):
            for entry in config.get(service, []):
                entry |= {"enabled": False, "bind-address": f"{self.host}:0"}
        return config

    def _command(self) -> list[str]:
        """influxd -config FILE."""
        return [self._binary, "-config", str(self.config_path)]

    def _listen_ports(self) -> list[int]:
        """HTTP and RPC."""
        return [self.port, self.rpc_port]

    def _is_ready(self) -> bool:
        """GET /ping answers 204."""
        try:
            return http_request("GET", f"{self.url}/ping", timeout=1.0).status == 204
        except OSError:
            return False

    def create_database(self, name: str) -> None:
        """CREATE DATABASE name (with the default `autogen` retention policy)."""
        self.query("", f"CREATE DATABASE {quote_ident(name)}")

    def drop_database(self, name: str) -> None:
        """DROP DATABASE name."""
        self.query("", f"DROP DATABASE {quote_ident(name)}")

    def write(self, db: str, lines: str, precision: str = "ns", rp: str = "") -> None:
        """Write line protocol through /write; raise ServerHTTPError unless it answers 204.

        `precision` defaults to ns, what line protocol and `ingest.lineproto` use.
        """
        params = {"db": db, "precision": precision} | ({"rp": rp} if rp else {})
        url = f"{self.url}/write?{urllib.parse.urlencode(params)}"
        response = http_request("POST", url, body=lines.encode())
        if response.status != 204:
            raise ServerHTTPError("POST", url, response.status, response.body)

    def import_file(self, path: Path, precision: str = "ns") -> None:
        """Load a `# DML` import file with InfluxDB 1.x's own `influx -import`, as its header
        says (the gateway's files: ns).

        Raise ServerError unless the tool exits 0 having failed no insert.
        """
        result = subprocess.run(
            [find_binary("influx"), "-host", self.host, "-port", str(self.port),
             "-import", f"-path={path}", f"-precision={precision}"],
            capture_output=True, text=True, check=False, timeout=60,
        )
        output = result.stdout + result.stderr
        if result.returncode != 0 or "Failed 0 inserts" not in output:
            raise ServerError(f"influx -import {path.name} exited {result.returncode}: {output}")

    def query_raw(self, db: str, influxql: str, *, epoch: str | None = "ms") -> dict[str, Any]:
        """POST /query and return the decoded JSON; raise on an HTTP or statement error."""
        params = {"q": influxql} | ({"db": db} if db else {}) | ({"epoch": epoch} if epoch else {})
        url = f"{self.url}/query"
        response = http_request(
            "POST",
            url,
            body=urllib.parse.urlencode(params).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        if response.status != 200:
            raise ServerHTTPError("POST", f"{url} q={influxql!r}", response.status, response.body)
        decoded: dict[str, Any] = response.json()
        for result in decoded.get("results", []):
            if "error" in result:
                raise ServerError(f"InfluxQL {influxql!r} failed: {result['error']}")
        return decoded

    def query(self, db: str, influxql: str, *, epoch: str | None = "ms") -> list[dict[str, Any]]:
        """Run InfluxQL and return its rows, one dict per row of every series of every statement.

        A row maps each column to its value (`time` is an int in `epoch` units, ms by
        default) and also holds the series' GROUP BY tags. The series name (measurement)
        is left out; use query_raw() when it matters. Example:
        `SELECT pressure_mmhg FROM cuff_telemetry GROUP BY cuff` →
        `[{"time": 1700000000000, "pressure_mmhg": 101.5, "cuff": "c7"}, ...]`.
        """
        rows: list[dict[str, Any]] = []
        for result in self.query_raw(db, influxql, epoch=epoch).get("results", []):
            for series in result.get("series", []):
                tags: dict[str, Any] = series.get("tags", {})
                columns: list[str] = series["columns"]
                rows.extend(
                    tags | dict(zip(columns, values, strict=True))
                    for values in series.get("values", [])
                )
        return rows


def quote_ident(name: str) -> str:
    """An InfluxQL double-quoted identifier."""
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _toml_value(value: Any) -> str:
    """One TOML value: a scalar, or a list of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def dump_toml(data: Mapping[str, Any], prefix: str = "") -> str:
    """Nested tables, scalars, lists and arrays of flat tables as TOML (keys quoted).

    The one writer for the configs the tests and the bench hand to real programs: influxd's,
    and cuffwatch's (which reads it back with tomllib).
    """
    def is_table_array(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, Mapping) for x in v)

    def name(key: str) -> str:
        return f"{prefix}.{json.dumps(key)}" if prefix else json.dumps(key)

    simple = {k: v for k, v in data.items()
              if not isinstance(v, Mapping) and not is_table_array(v)}
    tables = {k: v for k, v in data.items() if isinstance(v, Mapping)}
    out = []
    if prefix and (simple or not tables):
        out.append(f"[{prefix}]")
    out += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in simple.items()]
    for k, v in tables.items():
        out.append(dump_toml(v, name(k)))
    for k, items in data.items():
        if is_table_array(items):
            for item in items:
                out.append(f"[[{name(k)}]]")
                out += [f"{json.dumps(ik)} = {_toml_value(iv)}" for ik, iv in item.items()]
    return "\n".join(out) + "\n"


# -- VictoriaMetrics ------------------------------------------------------------------

VM_RETENTION = "100y"  # accept the fixed historical timestamps tests like to write
VM_EXPORT_AHEAD_S = 7 * 86400  # export's default end is "now": reach past VM's 2-day future limit


class VictoriaMetricsServer(ServerProcess):
    """A single-node VictoriaMetrics on 127.0.0.1, standing in for InfluxDB's v2 write API.

    It accepts line protocol at `/api/v2/write` (and v1 `/write`), ignoring org, bucket,
    token and the Authorization header. Each field becomes its own series named
    `{measurement}_{field}` (a field named `value` too: `m_value`) and each tag a label of
    the same name; v1 /write's `db` parameter, if given, adds a `db` label (v2's bucket
    adds none). Values are floats: booleans are stored as 1/0, a string field as its
    number if it parses as one, else 0 (VictoriaMetrics 1.79). Samples more than ~2 days
    in the future are rejected.
    """

    name = "victoria-metrics"
    env_prefixes = ("VM_",)  # harmless unless -envflag.enable, which we never pass

    def __init__(self, tmpdir: Path | str | None = None) -> None:
        """Configure, without starting, a VictoriaMetrics server."""
        super().__init__(tmpdir)
        self.host = LOOPBACK
        self.port = 0
        self.data_dir = self.tmpdir / "data"
        self._binary = find_binary("victoria-metrics")

    @property
    def url(self) -> str:
        """The HTTP API's URL, e.g. http://127.0.0.1:41234."""
        return f"http://{self.host}:{self.port}"

    def _allocate_ports(self) -> None:
        """A free port for the HTTP API."""
        self.port = free_port()

    def _command(self) -> list[str]:
        """victoria-metrics with its data in tmpdir, quiet and with no query latency offset."""
        return [
            self._binary,
            f"-storageDataPath={self.data_dir}",
            f"-httpListenAddr={self.host}:{self.port}",
            f"-retentionPeriod={VM_RETENTION}",
            "-search.latencyOffset=0s",  # freshly written points are visible to queries at once
            "-search.disableCache",  # no cached query results across tests
            "-loggerLevel=WARN",
        ]

    def _listen_ports(self) -> list[int]:
        """HTTP."""
        return [self.port]

    def _is_ready(self) -> bool:
        """GET /health answers 200."""
        try:
            return http_request("GET", f"{self.url}/health", timeout=1.0).status == 200
        except OSError:
            return False

    def flush(self) -> None:
        """Make every accepted sample searchable now (/internal/force_flush)."""
        url = f"{self.url}/internal/force_flush"
        response = http_request("GET", url)
        if response.status != 200:
            raise ServerHTTPError("GET", url, response.status, response.body)

    def export(self, match: str) -> list[dict[str, Any]]:
        """Every sample of the series matching a selector, after a flush, sorted by metric.

        One dict per series, as /api/v1/export's JSON lines:
        `{"metric": {"__name__": "cuff_telemetry_pressure_mmhg", "team": "t1", ...},
        "values": [101.5, ...], "timestamps": [1700000000000, ...]}` (timestamps in ms).
        """
        self.flush()
        params = {"match[]": match, "start": "0", "end": str(int(time.time()) + VM_EXPORT_AHEAD_S)}
        url = f"{self.url}/api/v1/export?{urllib.parse.urlencode(params)}"
        response = http_request("GET", url)
        if response.status != 200:
            raise ServerHTTPError("GET", url, response.status, response.body)
        series = [json.loads(line) for line in response.body.decode().splitlines() if line.strip()]
        return sorted(series, key=lambda s: sorted(s["metric"].items()))
