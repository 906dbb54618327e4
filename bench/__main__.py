"""`python -m bench [--quick] [--only NAME ...]`: run the benchmarks, write bench/results/.

One run starts its own Mosquitto and InfluxDB 1.x on loopback ports, measures their
ceilings, then the gateway (always a separate `cuffwatch run` process) against them, and
writes latest.json, latest.md and latest.png. Figures are compared with the issue's
targets and printed as pass/miss; nothing here is a test and nothing fails on a miss.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import (
    ceilings,
    footprint,
    latency,
    micro,
    profile,
    report,
    soak,
    soak_disk,
    throughput,
)
from bench.infra import LOAD_TEAMS, Servers, machine_info, servers

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much each benchmark does: full ≤ 10 min on 2 cores, quick ~1–2 min."""

    broker_messages: int
    broker_array_messages: int
    influx_points: int
    e2e_target_s: float
    repeats: int  # broker ceiling and end to end at 1 reading/message: the median of this many
    cuffs: int
    latency_samples: int
    latency_load_s: float
    rss_s: float
    startup_runs: int


FULL = Sizes(broker_messages=200_000, broker_array_messages=30_000, influx_points=500_000,
             e2e_target_s=25.0, repeats=3, cuffs=1000, latency_samples=600, latency_load_s=30.0,
             rss_s=60.0, startup_runs=5)
QUICK = Sizes(broker_messages=40_000, broker_array_messages=6_000, influx_points=100_000,
              e2e_target_s=5.0, repeats=1, cuffs=1000, latency_samples=60, latency_load_s=8.0,
              rss_s=15.0, startup_runs=2)

Bench = Callable[[Servers, Sizes, dict[str, Any]], None]


def _median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run with the median `key` (odd count), carrying every run's figure for the record."""
    ordered = sorted(runs, key=lambda run: float(run.get(key) or 0.0))
    return {**ordered[len(ordered) // 2], f"{key}_runs": [run.get(key) for run in runs]}


def _broker(srv: Servers, s: Sizes, r: dict[str, Any]) -> None:
    r["broker_ceiling"] = {
        # the ratio's denominator varied ±20% between runs of a few seconds: median of N
        "single": _median_run(
            [ceilings.broker(srv, messages=s.broker_messages, batch=1, cuffs=s.cuffs)
             for _ in range(s.repeats)], "msg_per_s"),
        "array10": ceilings.broker(srv, messages=s.broker_array_messages, batch=10,
                                   cuffs=s.cuffs),
    }


def _influx(srv: Servers, s: Sizes, r: dict[str, Any]) -> None:
    r["influx_ceiling"] = {
        "one_writer": ceilings.influx(srv, points=s.influx_points, writers=1, cuffs=s.cuffs),
        "two_writers": ceilings.influx(srv, points=s.influx_points, writers=2, cuffs=s.cuffs),
    }


def _paired_single(srv: Servers, s: Sizes, k: int) -> dict[str, Any]:
    """One end-to-end run at one reading per message, with a broker ceiling run just before.

    This VM's speed drifts over minutes (other tenants), and the ceilings of the `broker`
    benchmark are measured minutes earlier: a ratio of runs seconds apart cancels the drift.
    """
    ceiling = ceilings.broker(srv, messages=s.broker_messages, batch=1, cuffs=s.cuffs)
    run = throughput.e2e(srv, batch=1, cuffs=s.cuffs, target_s=s.e2e_target_s,
                         label=f"e2e_single{k}")
    run["paired_broker_readings_per_s"] = ceiling["readings_per_s"]
    run["share_of_paired_broker"] = round(run["readings_per_s"] / ceiling["readings_per_s"], 3)
    return run


def _e2e(srv: Servers, s: Sizes, r: dict[str, Any]) -> None:
    runs = [_paired_single(srv, s, k) for k in range(s.repeats)]
    shares = sorted(run["share_of_paired_broker"] for run in runs)
    r["e2e"] = {
        "single": {**_median_run(runs, "readings_per_s"),
                   "share_of_paired_broker_runs": [run["share_of_paired_broker"]
                                                   for run in runs],
                   "share_of_paired_broker_median": shares[len(shares) // 2]},
        "array10": throughput.e2e(srv, batch=10, cuffs=s.cuffs, target_s=s.e2e_target_s,
                                  label="e2e_array10"),
    }


def _scaleout(srv: Servers, s: Sizes, r: dict[str, Any]) -> None:
    r["scaleout"] = throughput.e2e(
        srv, batch=1, cuffs=s.cuffs, target_s=s.e2e_target_s,
        partitions=tuple((team,) for team in LOAD_TEAMS), label="scaleout",
    )


def _latency(srv: Servers, s: Sizes, r: dict[str, Any]) -> None:
    max_rate = r.get("e2e", {}).get("single", {}).get("readings_per_s")
    r["latency"] = latency.latency(srv, samples=s.latency_samples, cuffs=s.cuffs,
                                   max_rate=max_rate, load_s=s.latency_load_s)


def _rss(srv: Servers, s: Sizes, r: dict[str, Any]) -> None:
    r["rss"] = footprint.rss(srv, cuffs=s.cuffs, seconds=s.rss_s)


def _startup(srv: Servers, s: Sizes, r: dict[str, Any]) -> None:
    r["startup"] = footprint.startup(srv, runs=s.startup_runs, cuffs=s.cuffs)


def _micro(srv: Servers, s: Sizes, r: dict[str, Any]) -> None:
    r["micro"] = micro.run()


def _profile(srv: Servers, s: Sizes, r: dict[str, Any]) -> None:
    r["profile"] = profile.profile(srv, cuffs=s.cuffs, out_dir=RESULTS_DIR)


def _soak(srv: Servers, s: Sizes, r: dict[str, Any]) -> None:
    r["soak"] = soak.soak(srv, quick=r["quick"])


def _disk_soak(srv: Servers, s: Sizes, r: dict[str, Any]) -> None:
    r["disk_soak"] = soak_disk.disk_soak(srv, quick=r["quick"])


BENCHMARKS: dict[str, Bench] = {
    "broker": _broker, "influx": _influx, "e2e": _e2e, "scaleout": _scaleout,
    "latency": _latency, "rss": _rss, "startup": _startup, "micro": _micro,
    "profile": _profile, "soak": _soak, "disk_soak": _disk_soak,
}
DEFAULT = ("broker", "influx", "e2e", "scaleout", "latency", "rss", "startup", "micro", "soak",
           "disk_soak")


def _status_line(t: dict[str, Any]) -> str:
    value = "–" if t["value"] is None else f"{t['value']:,.3g}"
    return f"  {t['status']:>7}  {t['label']}: {value} (target {t['target']:,})"


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks and write the results."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run of everything")
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS), metavar="NAME",
                        help=f"run only NAME (repeatable): {', '.join(BENCHMARKS)}; "
                        "profile (needs py-spy) runs only when named")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    parser.add_argument("--keep", action="store_true", help="keep the servers' temp dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sizes = QUICK if args.quick else FULL
    names = args.only or list(DEFAULT)
    results: dict[str, Any] = {"quick": args.quick, "machine": machine_info(),
                               "sizes": asdict(sizes), "errors": {}}
    started = time.monotonic()
    print(f"bench: {'quick' if args.quick else 'full'} run of {', '.join(names)}", flush=True)
    with servers(keep=args.keep) as srv:
        for name in names:
            t0 = time.monotonic()
            print(f"bench: {name} …", flush=True)
            try:
                BENCHMARKS[name](srv, sizes, results)
            except Exception as exc:  # one broken benchmark must not lose the others' figures
                logging.exception("benchmark %s failed", name)
                results["errors"][name] = repr(exc)
            print(f"bench: {name} done in {time.monotonic() - t0:.0f} s", flush=True)
    results["total_s"] = round(time.monotonic() - started, 1)
    paths = report.write(results, args.out)
    print(json.dumps(results.get("ratios", {})))
    for t in results["targets"].values():
        print(_status_line(t))
    print("bench: wrote " + ", ".join(str(p) for p in paths) + f" in {results['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
