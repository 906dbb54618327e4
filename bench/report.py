"""Ratios, targets and the three result files: latest.json, latest.md, latest.png."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Target:
    """One benchmark target of the issue: a figure, how to read it, and the bar."""

    name: str
    label: str
    unit: str
    get: Callable[[dict[str, Any]], float | None]
    bar: float
    higher_is_better: bool
    exact: bool = False  # pass only at exactly `bar` (a count that must be 0)

    def judge(self, results: dict[str, Any]) -> dict[str, Any]:
        """Measured value and pass/miss (None when the figure was not measured)."""
        value = self.get(results)
        if value is None:
            return {"label": self.label, "value": None, "target": self.bar, "status": "not run"}
        ok = value >= self.bar if self.higher_is_better else value < self.bar
        if self.exact:
            ok = value == self.bar
        return {"label": self.label, "value": value, "unit": self.unit, "target": self.bar,
                "status": "pass" if ok else "miss"}


def _dig(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """End-to-end figures over the ceilings measured in the same run."""
    out: dict[str, float] = {}

    def ratio(name: str, num: Any, den: Any) -> None:
        if isinstance(num, int | float) and isinstance(den, int | float) and den:
            out[name] = round(num / den, 3)

    broker1 = _dig(results, "broker_ceiling", "single", "readings_per_s")
    broker10 = _dig(results, "broker_ceiling", "array10", "readings_per_s")
    influx = max((_dig(results, "influx_ceiling", k, "points_per_s") or 0)
                 for k in ("one_writer", "two_writers")) or None
    e2e1 = _dig(results, "e2e", "single", "readings_per_s")
    e2e10 = _dig(results, "e2e", "array10", "readings_per_s")
    # the target's figure: each run over a broker ceiling run just before it, median
    paired = _dig(results, "e2e", "single", "share_of_paired_broker_median")
    if isinstance(paired, int | float):
        out["e2e_single_over_broker"] = round(paired, 3)
    else:
        ratio("e2e_single_over_broker", e2e1, broker1)
    ratio("e2e_single_over_broker_medians", e2e1, broker1)
    ratio("e2e_array10_over_broker_array10", e2e10, broker10)
    ratio("e2e_single_over_influx", e2e1, influx)
    ratio("e2e_array10_over_influx", e2e10, influx)
    ratio("two_gateways_over_one", _dig(results, "scaleout", "readings_per_s"), e2e1)
    return out


TARGETS = (
    Target("e2e_single_ratio", "end to end, 1 reading/message, share of broker ceiling "
           "(median of runs, each over a ceiling run just before it)", "",
           lambda r: _dig(r, "ratios", "e2e_single_over_broker"), 0.65, True),
    Target("e2e_array10", "end to end, arrays of 10, readings/s", "readings/s",
           lambda r: _dig(r, "e2e", "array10", "readings_per_s"), 60_000, True),
    # SPEC §3's latency: the reading in on the gateway's socket → its alert out (wire times).
    Target("latency_idle_p99", "alert latency p99, idle (reading in → alert out)", "ms",
           lambda r: _dig(r, "latency", "idle", "gateway_p99_ms"), 10.0, False),
    Target("latency_half_load_p99", "alert latency p99, half load (reading in → alert out)",
           "ms", lambda r: _dig(r, "latency", "half_load", "gateway_p99_ms"), 50.0, False),
    Target("rss_1000_cuffs", "peak RSS, 1,000 cuffs", "MB",
           lambda r: _dig(r, "rss", "peak_mb"), 200.0, False),
    Target("startup_ready", "start-up to /readyz 200 (median)", "s",
           lambda r: _dig(r, "startup", "median_s"), 1.0, False),
    Target("soak_lost", "soak: readings lost across 5 injected faults", "readings",
           lambda r: _dig(r, "soak", "lost"), 0, False, exact=True),
    Target("disk_soak_lost", "disk soak: readings lost while the spool's disk fills and "
           "empties", "readings", lambda r: _dig(r, "disk_soak", "lost"), 0, False, exact=True),
)


def judge(results: dict[str, Any]) -> dict[str, Any]:
    """Every target judged."""
    return {t.name: t.judge(results) for t in TARGETS}


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, float) and value < 10:
        return f"{value:.3g}"
    return f"{value:,.0f}" if isinstance(value, int | float) else str(value)


def markdown(results: dict[str, Any]) -> str:
    """The short table for the README."""
    m = results["machine"]
    lines = [
        f"Benchmarks ({'quick' if results['quick'] else 'full'} run, {m['date']}, "
        f"{m['nproc']} cores {m['cpu_model']}; gateway, broker, InfluxDB and load share them):",
        "",
        "| figure | measured | target | |",
        "| --- | ---: | ---: | --- |",
    ]
    for t in results["targets"].values():
        comparator = "≥" if t["status"] != "not run" and t["value"] is not None else ""
        for target in TARGETS:
            if target.label == t["label"]:
                comparator = "≥" if target.higher_is_better else "<"
                comparator = "=" if target.exact else comparator
        lines.append(f"| {t['label']} | {_fmt(t['value'])} | {comparator} {_fmt(t['target'])} "
                     f"| {t['status']} |")
    rows = (
        ("broker ceiling, msg/s (1 reading/msg), median",
         ("broker_ceiling", "single", "msg_per_s")),
        ("broker ceiling, msg/s, each run", ("broker_ceiling", "single", "msg_per_s_runs")),
        ("broker ceiling, readings/s (arrays of 10)",
         ("broker_ceiling", "array10", "readings_per_s")),
        ("InfluxDB ceiling, points/s (1 writer)", ("influx_ceiling", "one_writer", "points_per_s")),
        ("InfluxDB ceiling, points/s (2 writers)",
         ("influx_ceiling", "two_writers", "points_per_s")),
        ("end to end, readings/s (1 reading/msg), median",
         ("e2e", "single", "readings_per_s")),
        ("end to end, readings/s (1 reading/msg), each run",
         ("e2e", "single", "readings_per_s_runs")),
        ("end to end over the broker ceiling run just before it, each run",
         ("e2e", "single", "share_of_paired_broker_runs")),
        ("median end to end over median broker ceiling (1 reading/msg)",
         ("ratios", "e2e_single_over_broker_medians")),
        ("end to end, readings/s, 2 gateways by team", ("scaleout", "readings_per_s")),
        ("alert latency p50 / max, idle, reading in → alert out (ms)",
         ("latency", "idle", "gateway_p50_ms")),
        ("alert latency p50 / max, half load, reading in → alert out (ms)",
         ("latency", "half_load", "gateway_p50_ms")),
        ("alert latency p99, idle, publish → alert received (ms)", ("latency", "idle", "p99_ms")),
        ("alert latency p99, half load, publish → alert received (ms)",
         ("latency", "half_load", "p99_ms")),
        ("alert latency p50 / max, half load, publish → alert received (ms)",
         ("latency", "half_load", "p50_ms")),
        ("half load: readings/s offered / carried",
         ("latency", "half_load", "load_target_readings_per_s")),
        ("soak: readings/s sustained, 200 cuffs, QoS 1, 5 faults", ("soak", "readings_per_s")),
        ("soak: slowest catch-up after a fault (s)", ("soak", "recovery_max_s")),
        ("disk soak: disk-full cycles / episodes the gateway counted / DISK FULL log lines",
         ("disk_soak", "cycles")),
        ("disk soak: slowest recovery, InfluxDB back → disk full cleared (s)",
         ("disk_soak", "recovery_max_s")),
        ("disk soak: SIGTERM while the disk is full, until exit (s)",
         ("disk_soak", "sigterm_stop_s")),
    )
    lines += ["", "| context | measured |", "| --- | ---: |"]
    for label, path in rows:
        value = _dig(results, *path)
        if "p50" in path[-1]:
            worst = _dig(results, *path[:-1], path[-1].replace("p50", "max"))
            lines.append(f"| {label} | {_fmt(value)} / {_fmt(worst)} |")
        elif path == ("disk_soak", "cycles"):
            episodes = _dig(results, "disk_soak", "disk_full_episodes")
            logged = _dig(results, "disk_soak", "disk_full_log_lines")
            lines.append(f"| {label} | {_fmt(value)} / {_fmt(episodes)} / {_fmt(logged)} |")
        elif path[-1] == "load_target_readings_per_s":
            carried = _dig(results, *path[:-1], "load_carried_readings_per_s")
            lines.append(f"| {label} | {_fmt(value)} / {_fmt(carried)} |")
        else:
            lines.append(f"| {label} | {_fmt(value)} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """Throughput against the ceilings, and latency percentiles against their targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    bars = [
        ("broker\n1/msg", ("broker_ceiling", "single", "readings_per_s"), "#999999"),
        ("gateway\n1/msg", ("e2e", "single", "readings_per_s"), "#1f77b4"),
        ("2 gateways\n1/msg", ("scaleout", "readings_per_s"), "#17becf"),
        ("broker\n10/msg", ("broker_ceiling", "array10", "readings_per_s"), "#999999"),
        ("gateway\n10/msg", ("e2e", "array10", "readings_per_s"), "#1f77b4"),
        ("InfluxDB\n1 writer", ("influx_ceiling", "one_writer", "points_per_s"), "#bbbbbb"),
        ("InfluxDB\n2 writers", ("influx_ceiling", "two_writers", "points_per_s"), "#bbbbbb"),
    ]
    shown = [(label, float(_dig(results, *p)), c) for label, p, c in bars if _dig(results, *p)]
    if shown:
        left.bar([s[0] for s in shown], [s[1] for s in shown], color=[s[2] for s in shown])
        for k, (_, v, _) in enumerate(shown):
            left.text(k, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
    left.axhline(60_000, color="#d62728", linestyle="--", linewidth=1)
    left.text(len(shown) - 0.5, 60_000, "target 60k (10/msg)", color="#d62728", fontsize=8,
              ha="right", va="bottom")
    left.set_ylabel("readings (points) per second")
    left.set_title("Throughput vs ceilings (grey), same run")
    groups = [("idle\nin → out", "idle", "gateway_", 10.0),
              ("half load\nin → out", "half_load", "gateway_", 50.0),
              ("idle\npublish → received", "idle", "", None),
              ("half load\npublish → received", "half_load", "", None)]
    width = 0.25
    for k, key in enumerate(("p50_ms", "p99_ms", "max_ms")):
        values = [float(_dig(results, "latency", g, prefix + key) or 0)
                  for _, g, prefix, _ in groups]
        right.bar([i + (k - 1) * width for i in range(len(groups))], values, width,
                  label=key.removesuffix("_ms"))
    for i, (_, _, _, bar) in enumerate(groups):
        if bar is not None:
            right.hlines(bar, i - 1.5 * width, i + 1.5 * width, colors="#d62728",
                         linestyles="--")
    right.set_xticks(range(len(groups)), [g[0] for g in groups], fontsize=8)
    right.set_ylabel("ms")
    right.set_title("Alert latency: on the gateway's wire (SPEC §3), and client to client\n"
                    "(red: p99 target)", fontsize=10)
    right.legend()
    m = results["machine"]
    fig.suptitle(f"cuffwatch bench, {m['date']}, {m['nproc']} cores {m['cpu_model']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Add ratios and targets; write latest.json, latest.md and latest.png in out_dir."""
    results["ratios"] = ratios(results)
    results["targets"] = judge(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "latest.json", out_dir / "latest.md", out_dir / "latest.png"]
    paths[0].write_text(json.dumps(results, indent=2) + "\n")
    paths[1].write_text(markdown(results))
    plot(results, paths[2])
    return paths
