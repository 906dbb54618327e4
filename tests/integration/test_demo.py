"""`cuffwatch demo` as a new user runs it (README "make demo"), with its output piped.

Without a terminal the demo prints the squad table every 5 s and each alert as it happens.
It runs the whole pipeline in one process: an embedded amqtt broker, the simulated squad
with injected faults (`demo_faults`: low_battery on the 4th cuff at 15 s, over_pressure on
the 2nd at 20 s, simulator time), the gateway, and line-protocol files in `--data-dir`.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.gateway_process import child_env, cuffwatch_command, run_cuffwatch
from tests.support.lineproto_ref import parse_line
from tests.support.paths import REPO
from tests.support.servers import InfluxDB1Server

DURATION_S = 27  # over_pressure is injected at 20 s: a margin for a loaded 2-core box
RUN_TIMEOUT_S = 120.0  # bounds a wedged demo; the run itself takes DURATION_S plus start-up
STOP_TIMEOUT_S = 30.0  # bounds the shutdown after Ctrl-C; it takes about a second
TABLE_TIMEOUT_S = 60.0  # the first table is printed 5 s after the gateway is ready
# A log record at WARNING or above (the alert lines on stdout carry only a time, no date).
LOG_PROBLEM = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ (WARNING|ERROR|CRITICAL) .*$", re.MULTILINE)


def tables(stdout: str) -> list[list[list[str]]]:
    """The squad tables printed so far: each a list of rows, each row a list of cells."""
    found: list[list[list[str]]] = []
    for line in stdout.splitlines():
        if line.startswith("┏"):
            found.append([])
        elif line.startswith("│") and found:
            found[-1].append([cell.strip() for cell in line.strip().strip("│").split("│")])
    return found


def assert_clean(stdout: str, stderr: str) -> None:
    """No traceback anywhere and no warning or error logged: a clean run is quiet."""
    for name, text in (("stdout", stdout), ("stderr", stderr)):
        assert "Traceback" not in text, f"a traceback on {name}:\n{text[-4000:]}"
    problems = LOG_PROBLEM.findall(stderr)
    assert not problems, "logged at warning or above:\n" + "\n".join(
        m.group(0) for m in LOG_PROBLEM.finditer(stderr))


def accepted(stdout: str) -> int:
    match = re.search(r"stopped after \d+ s: (\d+) readings accepted", stdout)
    assert match, f"no final summary line:\n{stdout[-2000:]}"
    return int(match[1])


def test_demo_runs_the_pipeline_and_shows_readings_and_alerts(
    tmp_path: Path, make_influxdb: Callable[[], InfluxDB1Server],
) -> None:
    data = tmp_path / "demo"
    try:
        result = run_cuffwatch("demo", "--duration", str(DURATION_S), "--cuffs", "6",
                               "--data-dir", str(data), timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the demo was still running {RUN_TIMEOUT_S:g} s after start "
                    f"(--duration {DURATION_S}):\n{exc.stdout!r}", pytrace=False)
    assert result.returncode == 0, result.stderr
    assert_clean(result.stdout, result.stderr)

    # the squad table: every cuff in its team, with a pressure; some cuffs inflated by now
    printed = tables(result.stdout)
    assert len(printed) >= DURATION_S // 5 - 1, result.stdout
    rows = {row[1]: row for row in printed[-1]}
    assert sorted(rows) == [f"c00{n}" for n in range(1, 7)], printed[-1]
    assert [rows[c][0] for c in sorted(rows)] == ["t1"] * 3 + ["t2"] * 3
    pressures = [float(rows[c][5]) for c in sorted(rows)]
    assert max(pressures) >= 40, f"no cuff inflated after {DURATION_S} s: {pressures}"

    # the injected faults raised alerts, printed as they happened
    assert re.search(r"INFO\s+raised\s+battery_low t2/c004 ", result.stdout), result.stdout
    assert re.search(r"CRITICAL\s+raised\s+over_pressure t1/c002 ", result.stdout), result.stdout

    # the store: line protocol, every accepted reading once, loadable by `influx -import`
    files = sorted((data / "lines").glob("*.lp"))
    assert files, f"no line-protocol files in {data / 'lines'}"
    measurements: dict[str, int] = {}
    for path in files:
        for line in path.read_text().splitlines():
            if line and not line.startswith("#"):
                measurement, tags, fields, _ts = parse_line(line)
                measurements[measurement] = measurements.get(measurement, 0) + 1
                if measurement == "cuff_telemetry":
                    assert tags.keys() >= {"team", "cuff", "athlete", "limb"}, line
                    assert isinstance(fields["pressure_mmhg"], float), line
    assert measurements.get("cuff_telemetry") == accepted(result.stdout) > 0, measurements
    assert measurements.get("alert", 0) >= 2, measurements
    influxdb = make_influxdb()
    influxdb.create_database("bfr")  # the files' CONTEXT-DATABASE
    for path in files:
        influxdb.import_file(path)
    [row] = influxdb.query("bfr", "SELECT count(pressure_mmhg) FROM cuff_telemetry")
    assert row["count"] == measurements["cuff_telemetry"]


def test_ctrl_c_stops_the_demo_cleanly(tmp_path: Path) -> None:
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [*cuffwatch_command(), "demo", "--cuffs", "4", "--data-dir", str(tmp_path / "demo")],
            cwd=REPO, stdout=stdout, stderr=stderr, env=child_env(),
        )
    try:
        deadline = time.monotonic() + TABLE_TIMEOUT_S
        while not tables(out.read_text()):
            assert proc.poll() is None, f"the demo exited {proc.returncode}:\n{err.read_text()}"
            assert time.monotonic() < deadline, f"no squad table after {TABLE_TIMEOUT_S:g} s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo was still running {STOP_TIMEOUT_S:g} s after Ctrl-C",
                        pytrace=False)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Ctrl-C is the demo's documented way to stop: a complete, clean stop exits 0 (like
    # `cuffwatch run` on SIGTERM); 130 is left for an interrupt before the demo has started.
    assert code == 0, err.read_text()
    assert_clean(out.read_text(), err.read_text())
    assert accepted(out.read_text()) > 0
