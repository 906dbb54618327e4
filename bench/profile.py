"""Where the gateway's time goes under load: py-spy samples the gateway process (opt-in).

`python -m bench --only profile` runs the end-to-end benchmark (one reading per message,
then arrays of 10) with `py-spy record` attached to the gateway for the timed phase, and
writes `bench/results/profile-{single,array10}.txt`: the functions with most samples,
self and inclusive. py-spy is not in the lock (`pip install py-spy`); it needs ptrace.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.infra import (
    Servers,
)
from bench.throughput import e2e
from tests.support.gateway_process import GatewayProcess

SAMPLE_HZ = 250  # py-spy's rate: enough samples in a 10 s phase for 0.5 % resolution
RECORD_S = 10  # py-spy stops by itself; the timed phase is sized to outlast it
TOP_FUNCTIONS = 30  # beyond the top 30, functions hold well under 1 % each


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter, or on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def _function(frame: str) -> str:
    """`func (path/file.py:123)` → `func (path/file.py)`: lines of one function merged."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def summarise(raw: Path) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """Total samples, and the top functions by self and inclusive samples."""
    self_count: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n_text = line.rpartition(" ")
        if not stack:
            continue
        n = int(n_text)
        total += n
        frames = [_function(f) for f in stack.split(";")]
        self_count[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    return total, self_count.most_common(TOP_FUNCTIONS), inclusive.most_common(TOP_FUNCTIONS)


def _attach(exe: str, raw: Path) -> Callable[[list[GatewayProcess]], Callable[[], None]]:
    def during(gws: list[GatewayProcess]) -> Callable[[], None]:
        spy = subprocess.Popen(
            [exe, "record", "--pid", str(gws[0].pid), "--duration", str(RECORD_S),
             "--rate", str(SAMPLE_HZ), "--format", "raw", "--output", str(raw), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

        def finish() -> None:
            try:
                spy.wait(timeout=RECORD_S * 6)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()

        return finish

    return during


def profile(srv: Servers, *, cuffs: int, out_dir: Path) -> dict[str, Any]:
    """Profile the gateway at full load, 1 and 10 readings per message; write the summaries."""
    exe = py_spy()
    if exe is None:
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    out: dict[str, Any] = {}
    for name, batch in (("single", 1), ("array10", 10)):
        raw = srv.tmp / f"profile-{name}.raw"
        figures = e2e(srv, batch=batch, cuffs=cuffs, target_s=RECORD_S * 2,
                      label=f"profile_{name}", during=_attach(exe, raw))
        if not raw.exists():
            out[name] = {"error": "py-spy wrote nothing (ptrace not permitted?)"}
            continue
        total, by_self, by_incl = summarise(raw)
        text = [f"# gateway profile, {name}: {figures.get('readings_per_s')} readings/s, "
                f"{total} samples at {SAMPLE_HZ} Hz (all threads)", "", "## self"]
        text += [f"{100 * n / total:5.1f}%  {f}" for f, n in by_self]
        text += ["", "## inclusive"] + [f"{100 * n / total:5.1f}%  {f}" for f, n in by_incl]
        path = out_dir / f"profile-{name}.txt"
        path.write_text("\n".join(text) + "\n")
        out[name] = {"file": str(path.relative_to(out_dir.parent.parent)),
                     "readings_per_s": figures.get("readings_per_s"),
                     "top_self": [(f, round(100 * n / total, 1)) for f, n in by_self[:10]]}
    return out
