"""`cuffwatch` as a child process: the gateway (`cuffwatch run -c FILE`) and one-shot commands.

`GatewayProcess` is the one launcher the integration tests and the benchmarks share: spawn,
readiness (/readyz), /metrics as numbers, RSS and CPU time, SIGTERM (drain and exit) and
SIGKILL. Its calls block; an async test awaits `started()` and `terminated()`, which run the
waits off the event loop. Every child starts from the repository root with a clean
environment: no CUFFWATCH_* variable of the caller's reaches it unless passed in `env`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import psutil  # type: ignore[import-untyped,unused-ignore]

from core.config import Settings
from tests.support.paths import REPO
from tests.support.servers import dump_toml, free_port

READY_TIMEOUT_S = 60.0  # a gateway not ready by then is broken, not slow
READY_POLL_S = 0.005  # fine-grained: the benchmarks time start-up with it
STOP_TIMEOUT_S = 30.0  # SIGTERM drains and flushes (DRAIN_TIMEOUT_S is 10 s) before exit
HTTP_TIMEOUT_S = 5.0  # /metrics of a saturated gateway answers late; a poll then retries
COMMAND_TIMEOUT_S = 60.0  # a one-shot command: start-up plus its own network timeouts
LOG_TAIL_LINES = 30
_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


class GatewayProcessError(RuntimeError):
    """The gateway process exited early, did not get ready, or answered /metrics badly."""


def cuffwatch_command() -> list[str]:
    """The venv's `cuffwatch` console script, or `python -m ops.cli` without one."""
    script = Path(sys.executable).parent / "cuffwatch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ops.cli"]


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without CUFFWATCH_* variables, then `env` on top."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CUFFWATCH_")}
    return clean | dict(env or {})


def run_cuffwatch(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = COMMAND_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """Run `cuffwatch ARGS` to completion from the repository root; output captured as text.

    A command still running after `timeout` raises subprocess.TimeoutExpired.
    """
    return subprocess.run(
        [*cuffwatch_command(), *args], cwd=REPO, capture_output=True, text=True,
        env=child_env(env), timeout=timeout, check=False, stdin=subprocess.DEVNULL,
    )


def write_config(path: Path, settings: Settings | Mapping[str, Any]) -> Path:
    """Write settings (or a plain mapping) as a cuffwatch.toml a gateway loads; secrets excluded."""
    data = (settings.model_dump(mode="json", exclude_none=True)
            if isinstance(settings, Settings) else settings)
    path.write_text(dump_toml(data))
    return path


def http_get(url: str, timeout: float = HTTP_TIMEOUT_S) -> tuple[int, bytes]:
    """Status and body of a GET to one of our loopback servers (any status)."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"loopback only, not {url!r}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - checked above
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return int(err.code), bytes(err.read())


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text → {name: value} (labelled samples keyed with their labels)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


class GatewayProcess:
    """`cuffwatch [OPTIONS] run -c FILE` in its own process; restartable after a stop or kill.

    Output goes to `log_path` (appended, so a restart keeps the earlier run's lines); with
    `log_pipe`, through a pipe the parent copies to it (a gateway under a file-size limit
    cannot write a log file of its own).
    """

    def __init__(self, config: Path, health_port: int, log_path: Path, *,
                 options: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 log_pipe: bool = False) -> None:
        """A gateway for `config`, whose health server listens on `health_port`."""
        self.config = config
        self.health_port = health_port
        self.log_path = log_path
        self.options = tuple(options)  # global options before `run`, e.g. ("-v",)
        self.env = dict(env or {})
        self.log_pipe = log_pipe
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0
        self._copier: threading.Thread | None = None

    @classmethod
    def for_settings(cls, settings: Settings, directory: Path, name: str = "gateway", *,
                     options: Sequence[str] = (), env: Mapping[str, str] | None = None,
                     log_pipe: bool = False) -> GatewayProcess:
        """Write `directory/NAME.toml` from settings and log to `directory/NAME.log`.

        Settings whose health port is 0 get a free one (the launcher must know it).
        """
        port = settings.health.port or free_port()
        if port != settings.health.port:
            health = settings.health.model_copy(update={"port": port})
            settings = settings.model_copy(update={"health": health})
        config = write_config(directory / f"{name}.toml", settings)
        return cls(config, port, directory / f"{name}.log", options=options, env=env,
                   log_pipe=log_pipe)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Spawn the process; readiness is `wait_ready` (or await `started()`)."""
        if self.running:
            raise GatewayProcessError(f"gateway already running (pid {self.pid})")
        command = [*cuffwatch_command(), *self.options, "run", "-c", str(self.config)]
        if self.log_pipe:
            self.spawned_at = time.monotonic()
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, cwd=REPO, env=child_env(self.env),
            )
            self._copier = threading.Thread(target=self._copy_log, args=(self.proc,),
                                            name="gateway-log", daemon=True)
            self._copier.start()
            return self
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.spawned_at = time.monotonic()
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=REPO, env=child_env(self.env),
            )
        return self

    def _copy_log(self, proc: subprocess.Popen[bytes]) -> None:
        """Copy the child's output to the log file, a line at a time, until it closes."""
        assert proc.stdout is not None
        with proc.stdout, self.log_path.open("ab") as log:
            for line in proc.stdout:
                log.write(line)
                log.flush()

    def _join_log(self) -> None:
        """Wait for the copier to reach the end of the child's output (after it exited)."""
        if self._copier is not None:
            self._copier.join(5.0)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S, interval: float = READY_POLL_S
                   ) -> float:
        """Poll /readyz until it answers 200; the seconds since the spawn."""
        deadline = time.monotonic() + timeout
        proc = self._proc()
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise GatewayProcessError(
                    f"gateway exited with {proc.returncode}; {self.log_path}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                if http_get(self.url("/readyz"), timeout=1.0)[0] == 200:
                    return time.monotonic() - self.spawned_at
            time.sleep(interval)
        raise GatewayProcessError(
            f"gateway not ready within {timeout:.0f} s; {self.log_path}:\n{self.log_tail()}")

    async def started(self, within_s: float = READY_TIMEOUT_S) -> Self:
        """Spawn and wait until ready, off the event loop (for async tests)."""
        self.start()
        await asyncio.to_thread(self.wait_ready, within_s, 0.05)
        return self

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM; the exit code once the gateway has drained and exited.

        Raise subprocess.TimeoutExpired if it is still running after `timeout`.
        """
        proc = self._proc()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout)
        self._join_log()
        return code

    async def terminated(self, within_s: float = STOP_TIMEOUT_S) -> int:
        """`terminate` off the event loop (for async tests)."""
        return await asyncio.to_thread(self.terminate, within_s)

    def kill(self) -> None:
        """SIGKILL if it is still running (no drain, no flush), and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._join_log()

    def stop(self) -> None:
        """SIGTERM (drain and flush), SIGKILL if it does not exit in time; idempotent."""
        if self.proc is None:
            return
        try:
            self.terminate()
        except subprocess.TimeoutExpired:
            self.kill()

    # -- looking at it -----------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The gateway's PID (of the latest start)."""
        return self._proc().pid

    @property
    def running(self) -> bool:
        """Whether the process of the latest start is alive."""
        return self.proc is not None and self.proc.poll() is None

    def url(self, path: str) -> str:
        """A URL of the health server."""
        return f"http://127.0.0.1:{self.health_port}{path}"

    def metrics(self, timeout: float = HTTP_TIMEOUT_S) -> dict[str, float]:
        """The gateway's /metrics as numbers (labelled samples keyed with their labels)."""
        status, body = http_get(self.url("/metrics"), timeout)
        if status != 200:
            raise GatewayProcessError(f"/metrics answered {status}")
        return parse_metrics(body.decode())

    def metric(self, name: str) -> float:
        """One unlabelled sample of /metrics."""
        try:
            return self.metrics()[name]
        except KeyError:
            raise GatewayProcessError(f"no metric {name} in /metrics") from None

    def rss_bytes(self) -> int:
        """Resident set size now."""
        return int(psutil.Process(self.pid).memory_info().rss)

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far."""
        t = psutil.Process(self.pid).cpu_times()
        return float(t.user + t.system)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def _proc(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise GatewayProcessError("gateway not started")
        return self.proc
