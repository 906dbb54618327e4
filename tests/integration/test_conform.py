"""`cuffwatch conform` against a real Mosquitto: it passes the reference client and the simulator,
and fails each deliberately broken variant of the client by exactly the rule it breaks.

Everything runs as users run it: `cuffwatch conform` and the reference client
(deploy/devices/python/cuff_client.py, paho-mqtt) as child processes. A power cut is the
client's SIGKILL (its socket closes without DISCONNECT: the broker publishes the last will), a
network cut its SIGUSR1 test hook. Each test has its own topic root and cuff id; windows are
short and cadences fast (10 readings/s, 2 s bouts, 1 s rests) so that each test takes seconds.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from tests.support.gateway_process import child_env, cuffwatch_command, write_config
from tests.support.paths import REPO
from tests.support.servers import MosquittoServer

CLIENT = REPO / "deploy" / "devices" / "python" / "cuff_client.py"
TEAM = "t1"
WAIT_S = 20.0  # a bound for a wedged child on a loaded box; waits end as soon as true
# The reference client as the tests run it: fast, with a bout and a deflation every 3 s.
FAST = ("--rate", "10", "--bout-s", "2", "--rest-s", "1")


class _Lines:
    """A child's output, read line by line on a thread, so that a test can wait for a line."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        with stream:  # closed at the child's exit
            for line in stream:
                with self._changed:
                    self.lines.append(line.rstrip("\n"))
                    self._changed.notify_all()

    def join(self) -> None:
        self._thread.join(5.0)

    def wait_for(self, text: str, timeout: float = WAIT_S) -> str:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((line for line in self.lines if text in line), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line with {text!r} in {timeout:g} s: {self.lines}")
                self._changed.wait(left)

    def text(self) -> str:
        self.join()
        return "\n".join(self.lines)


@dataclass
class Conform:
    """`cuffwatch conform` as a child process, its report in `report_path`."""

    proc: subprocess.Popen[str]
    report_path: Path
    out: _Lines = field(init=False)
    err: _Lines = field(init=False)

    def __post_init__(self) -> None:
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self.out = _Lines(self.proc.stdout)
        self.err = _Lines(self.proc.stderr)

    def watching(self) -> None:
        """Wait until it is subscribed: what a device sends from now on, it sees."""
        self.err.wait_for("conform: watching")
        time.sleep(0.2)  # the SUBACK, after the CONNACK that the line follows

    def finish(self) -> tuple[int, dict[str, Any], str]:
        """Exit status, JSON report and stdout, once it is done."""
        code = self.proc.wait(WAIT_S + 30)
        stdout = self.out.text()
        assert "Traceback" not in stdout + self.err.text(), self.err.text()
        assert self.report_path.exists(), f"no report; stderr:\n{self.err.text()}"
        report: dict[str, Any] = json.loads(self.report_path.read_text())
        return code, report, stdout

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.out.join()
        self.err.join()


@dataclass
class Device:
    """The reference client as a child process: started, cut off, restarted, stopped."""

    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> Device:
        self.starts += 1
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(CLIENT), *self.args], stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=child_env(),
            )
        self.wait_log("connected to", self.starts)
        return self

    def wait_log(self, text: str, times: int = 1) -> None:
        deadline = time.monotonic() + WAIT_S
        while self.log_path.read_text(errors="replace").count(text) < times:
            assert self.proc is not None
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, f"no {text!r} from the client: {self.log()}"
            time.sleep(0.05)

    def power_cut(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def network_cut(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


@dataclass
class Rig:
    """One test's broker, topic root and cuff, and the children it started (stopped after)."""

    mosquitto: MosquittoServer
    tmp_path: Path
    topic_root: str
    cuff: str = field(default_factory=lambda: f"c-{uuid.uuid4().hex[:10]}")
    children: list[Device | Conform | subprocess.Popen[Any]] = field(default_factory=list)

    def config(self, protocol: int = 5, **more: Any) -> Path:
        """A cuffwatch.toml naming the broker, the protocol and the test's topic root."""
        return write_config(self.tmp_path / f"cuffwatch-{protocol}.toml", {
            "topic_root": self.topic_root,
            "broker": {"url": self.mosquitto.url, "protocol": protocol}, **more,
        })

    def conform(self, window_s: float, *options: str, protocol: int = 5) -> Conform:
        report = self.tmp_path / f"conform-{len(self.children)}.json"
        proc = subprocess.Popen(
            [*cuffwatch_command(), "conform", "-c", str(self.config(protocol)), "--team", TEAM,
             "--cuff", self.cuff, "--for", f"{window_s:g}s", "--json", str(report), *options],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=REPO, env=child_env(),
        )
        conform = Conform(proc, report)
        self.children.append(conform)
        conform.watching()
        return conform

    def device(self, *options: str, protocol: int = 5) -> Device:
        args = ["--broker", self.mosquitto.url, "--topic-root", self.topic_root, "--team", TEAM,
                "--cuff", self.cuff, "--protocol", str(protocol), *FAST, *options]
        device = Device(args, self.tmp_path / f"device-{len(self.children)}.log")
        self.children.append(device)
        return device

    def close(self) -> None:
        for child in reversed(self.children):
            if isinstance(child, Device):
                child.stop()
            elif isinstance(child, Conform):
                child.close()
            elif child.poll() is None:
                child.kill()
                child.wait(10)


@pytest.fixture
def rig(mosquitto: MosquittoServer, tmp_path: Path, topic_root: str) -> Iterator[Rig]:
    r = Rig(mosquitto, tmp_path, topic_root)
    yield r
    r.close()


def verdicts(report: dict[str, Any]) -> dict[str, str]:
    return {rule["rule"]: rule["verdict"] for rule in report["rules"]}


def failed(report: dict[str, Any]) -> set[str]:
    return {rule for rule, verdict in verdicts(report).items() if verdict == "FAIL"}


def not_ok(report: dict[str, Any]) -> dict[str, str]:
    return {r["rule"]: f"{r['verdict']}: {r['detail']}" for r in report["rules"]
            if r["verdict"] != "ok"}


# -- the reference client passes ---------------------------------------------------------------


@pytest.mark.parametrize("protocol", [5, 3], ids=["mqtt5", "mqtt311"])
def test_the_reference_client_passes_every_rule_through_a_power_cut(
    rig: Rig, protocol: int
) -> None:
    conform = rig.conform(8, "--expect-offline", protocol=protocol)
    device = rig.device(protocol=protocol).start()
    time.sleep(2.5)  # a bout and a deflation
    device.power_cut()
    conform.err.wait_for("`offline` arrived")
    device.start()  # the reboot: seq and elapsed_s from 0
    conform.err.wait_for("the device is back")
    code, report, stdout = conform.finish()
    assert not_ok(report) == {}, stdout
    assert code == 0
    assert report["passed"] is True
    assert report["observed"]["restarts"] == 1
    assert report["protocol"] == protocol
    assert "PASS: no rule broken" in stdout


def test_the_reference_client_passes_through_a_network_cut_with_its_backlog(rig: Rig) -> None:
    conform = rig.conform(8, "--expect-offline")
    device = rig.device("--backlog", "300", "--batch", "2", "--outage-s", "2").start()
    time.sleep(1.5)
    device.network_cut()  # no DISCONNECT: the broker publishes the will
    conform.err.wait_for("`offline` arrived")
    conform.err.wait_for("the device is back")  # and sends what it held, in arrays
    code, report, stdout = conform.finish()
    assert not_ok(report) == {}, stdout
    assert code == 0
    detail = {r["rule"]: r["detail"] for r in report["rules"]}
    assert "largest array 256 readings" in detail["array_size"]
    assert "reconnected" in detail["restart"]
    assert "held back" in detail["restart"]
    assert report["observed"]["restarts"] == 0


# -- each broken variant fails its rule ----------------------------------------------------------


@dataclass(frozen=True)
class Broken:
    defect: str
    fails: frozenset[str]
    options: tuple[str, ...] = ()  # the client's, besides --defect
    power_cut: bool = False  # conform --expect-offline, and the test cuts the power


BROKEN = [
    Broken("skip-seq", frozenset({"seq"})),
    Broken("clock-jump", frozenset({"device_time"})),
    Broken("oversize-array", frozenset({"array_size"}), ("--backlog", "300")),
    Broken("no-will", frozenset({"last_will"}), power_cut=True),
    Broken("qos0", frozenset({"qos"})),
    Broken("unretained-status", frozenset({"status_retained"})),
    # the first deflation 1.5 s after boot, well inside the window on a loaded box
    Broken("elapsed-no-reset", frozenset({"deflation"}), ("--rest-s", "0.5", "--bout-s", "1")),
]


@pytest.mark.parametrize("case", BROKEN, ids=[b.defect for b in BROKEN])
def test_a_broken_variant_fails_exactly_its_rule(rig: Rig, case: Broken) -> None:
    conform = rig.conform(5, *(["--expect-offline"] if case.power_cut else []))
    device = rig.device("--defect", case.defect, *case.options).start()
    if case.power_cut:
        time.sleep(1.5)
        device.power_cut()
        time.sleep(0.5)
        device.start()
    code, report, stdout = conform.finish()
    assert failed(report) == case.fails, stdout
    assert code == 1
    assert report["passed"] is False
    assert stdout.splitlines()[-1].startswith(f"FAIL: {len(case.fails)} rule(s) broken")
    for rule in report["rules"]:
        if rule["verdict"] == "FAIL":
            assert rule["contract"] in stdout  # the failure points at its section


# -- the simulator passes too ----------------------------------------------------------------------


def test_the_simulator_passes(rig: Rig) -> None:
    conform = rig.conform(8, "--expect-offline")
    config = rig.config(teams={TEAM: {"cuffs": {rig.cuff: {"athlete": "a-1",
                                                            "limb": "left_leg"}}}})

    def simulate(*options: str) -> subprocess.Popen[bytes]:
        with (rig.tmp_path / "simulate.log").open("ab") as log:
            sim = subprocess.Popen(
                [*cuffwatch_command(), "simulate", "-c", str(config), "--rate", "5", *options],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                env=child_env(),
            )
        rig.children.append(sim)
        return sim

    # a leak starts a bout at once (at 5 readings/s the script's own first one is minutes away)
    sim = simulate("--fault", f"leak:{rig.cuff}@0.5s")
    time.sleep(3.0)
    sim.kill()  # a power cut of the simulated cuff: its last will
    sim.wait(10)
    conform.err.wait_for("`offline` arrived")
    simulate()  # the reboot
    conform.err.wait_for("the device is back")
    code, report, stdout = conform.finish()
    assert failed(report) == set(), stdout
    assert code == 0
    assert {rule: verdicts(report)[rule] for rule in ("elapsed", "last_will", "restart")} == {
        "elapsed": "ok", "last_will": "ok", "restart": "ok"}, stdout
    assert report["observed"]["restarts"] == 1
