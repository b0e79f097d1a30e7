"""LARRY's trade-off between the median and the tail, and the setting to recommend.

A sweep simulates one engine over a grid of (alpha, maxWaitSeconds) on the user's traffic and
compares each point with FCFS on the same requests: the median-TTFT gain against the cost on
p99 TTFT and p99 TGT. The recommendation is the point with the best median gain whose tails stay
within a budget over FCFS's at every load swept; the shipped defaults are always in the grid, so
the answer is never worse than leaving the service as it is, as far as the simulator can tell.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from halffull import defaults as D
from halffull.api.runtime_config import SchedulerConfig
from halffull.sim.cluster import ClusterConfig, simulate
from halffull.sim.profiles import Profile, get_profile
from halffull.sim.report import Summary, summarize, table
from halffull.sim.traces import load_trace, resolve_trace
from halffull.sim.workload import Job, prepare

DEFAULTS = SchedulerConfig()
"""The shipped scheduler parameters (policy, alpha, maxWaitSeconds)."""

ALPHAS = (0.01, 0.03, 0.1, 0.3)
"""The default alpha grid (the shipped alpha is always added, see `grid`)."""
MAX_WAITS = (0.0, 2.0, 3.0, 5.0, 10.0, 20.0)
"""The default grid; 0 is plain LARRY without a bound."""
BETAS = tuple(sorted({1.0, 16.0, 64.0, D.BETA, 1024.0}))
"""SAL's betas swept by default: the shipped one, smaller and larger ones."""


@dataclass(frozen=True, slots=True)
class Point:
    """One setting at one load, against FCFS at the same load."""

    alpha: float
    max_wait: float
    summary: Summary
    fcfs: Summary

    @property
    def gain(self) -> float:
        """FCFS's median TTFT over this setting's (above 1: faster)."""
        return self.fcfs.ttft_p50 / max(self.summary.ttft_p50, 1e-9)

    @property
    def ttft_p99_ratio(self) -> float:
        return self.summary.ttft_p99 / max(self.fcfs.ttft_p99, 1e-9)

    @property
    def tgt_p99_ratio(self) -> float:
        return self.summary.tgt_p99 / max(self.fcfs.tgt_p99, 1e-9)

    def within(self, budget: float) -> bool:
        return max(self.ttft_p99_ratio, self.tgt_p99_ratio) <= 1.0 + budget


def grid(alphas: Sequence[float], max_waits: Sequence[float]) -> list[tuple[float, float]]:
    """The (alpha, maxWait) pairs to sweep, the shipped defaults always among them."""
    pairs = {(float(a), float(m)) for a in alphas for m in max_waits}
    pairs.add((DEFAULTS.alpha, DEFAULTS.max_wait_seconds))
    return sorted(pairs)


def sweep(
    jobs: Sequence[Job], profile: Profile, pairs: Sequence[tuple[float, float]]
) -> list[Point]:
    """Simulate FCFS and every (alpha, maxWait) pair on `jobs`, one engine."""
    fcfs = summarize(jobs, simulate(jobs, ClusterConfig(profile)))
    points = []
    for alpha, max_wait in pairs:
        cfg = ClusterConfig(profile, admission="larry", alpha=alpha, max_wait=max_wait)
        points.append(Point(alpha, max_wait, summarize(jobs, simulate(jobs, cfg)), fcfs))
    return points


def recommend(loads: Sequence[Sequence[Point]], budget: float = 0.10) -> tuple[float, float] | None:
    """The (alpha, maxWait) with the best worst-case median gain over `loads` among the points
    whose p99 TTFT and p99 TGT stay within `budget` over FCFS at every load; None if no point
    does (then FCFS is the answer)."""
    ok: dict[tuple[float, float], float] = {}
    for i, points in enumerate(loads):
        seen = {}
        for p in points:
            key = (p.alpha, p.max_wait)
            if p.within(budget) and (i == 0 or key in ok):
                seen[key] = min(ok.get(key, float("inf")), p.gain)
        ok = seen
    if not ok:
        return None
    # best gain; among equals the larger alpha and the smaller bound (closer to FCFS)
    return max(ok, key=lambda k: (round(ok[k], 6), k[0], -k[1] if k[1] > 0 else float("-inf")))


def patch_command(name: str, choice: tuple[float, float] | None, namespace: str = "") -> str:
    """The `kubectl patch` that applies `choice` (FCFS when None) to LLMService `name`."""
    if choice is None:
        scheduler: dict[str, object] = {"policy": "fcfs"}
    else:
        scheduler = {"policy": "larry", "alpha": choice[0], "maxWaitSeconds": choice[1]}
    body = json.dumps({"spec": {"scheduler": scheduler}}, separators=(",", ":"))
    ns = f" -n {namespace}" if namespace else ""
    return f"kubectl patch llmservice {name}{ns} --type merge -p '{body}'"


def frontier_table(label: str, points: Sequence[Point], budget: float = 0.10) -> str:
    """One row per setting: median gain against the two tail ratios; `*` marks points within
    the budget."""
    rows: list[list[object]] = []
    for p in points:
        mark = "*" if p.within(budget) else ""
        rows.append(
            [
                label,
                f"{p.alpha:g}",
                f"{p.max_wait:g}" if p.max_wait > 0 else "none",
                p.summary.ttft_p50,
                f"{p.gain:.2f}x",
                f"{p.ttft_p99_ratio:.2f}",
                f"{p.tgt_p99_ratio:.2f}",
                mark,
            ]
        )
    return table(
        [
            "load",
            "alpha",
            "maxWait (s)",
            "TTFT p50",
            "p50 gain",
            "p99 TTFT / FCFS",
            "p99 TGT / FCFS",
            f"within {budget:.0%}",
        ],
        rows,
    )


def add_arguments(t: argparse.ArgumentParser) -> None:
    """The options of `halffull bench tune`."""
    t.add_argument("--trace", required=True, help="CSV: arrival, prompt_tokens, output_tokens")
    t.add_argument("--traces-dir", type=Path)
    t.add_argument("--profile", default="h100-llama3-8b")
    t.add_argument("--replicas", type=int, default=4)
    t.add_argument("--rate-scales", type=float, nargs="+", default=[1.0, 2.0])
    t.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS))
    t.add_argument(
        "--max-waits",
        type=float,
        nargs="+",
        default=list(MAX_WAITS),
        help="maxWaitSeconds values to sweep (0: no tail bound)",
    )
    t.add_argument(
        "--tail-budget",
        type=float,
        default=0.10,
        help="how much worse than FCFS p99 TTFT and p99 TGT may get (0.10: 10%%)",
    )
    t.add_argument("--name", default="my-llm", help="the LLMService to patch")
    t.add_argument("--namespace", default="", help="its namespace (default: kubectl's)")
    t.add_argument("--betas", type=float, nargs="+", default=list(BETAS))


def tune_scheduler(
    jobs: Sequence[Job], profile: Profile, scales: Sequence[float], args: argparse.Namespace
) -> tuple[str, str]:
    """The LARRY part of `halffull bench tune`: one engine given `jobs` (its share of the
    traffic) at each rate scale. Returns the frontier tables and, apart, the recommendation with
    the `kubectl patch` that applies it (the command prints it last)."""
    pairs = grid(args.alphas, args.max_waits)
    out: list[str] = []
    loads: list[list[Point]] = []
    for scale in scales:
        scaled = [replace(j, arrival=j.arrival / scale) for j in jobs]
        points = sweep(scaled, profile, pairs)
        loads.append(points)
        f = points[0].fcfs
        out.append(
            f"\n### x{scale:g} ({f.offered_rps:.1f} req/s to this engine; FCFS TTFT p50 "
            f"{f.ttft_p50:.2f} s, p99 {f.ttft_p99:.2f} s, TGT p99 {f.tgt_p99:.2f} s)\n"
        )
        out.append(frontier_table(f"x{scale:g}", points, args.tail_budget))
    choice = recommend(loads, args.tail_budget)
    rec = [f"\n## Recommendation (tail budget {args.tail_budget:.0%} over FCFS)\n"]
    if choice is None:
        rec.append(
            "No setting kept p99 TTFT and p99 TGT within the budget at every load: keep FCFS "
            "(or raise --tail-budget)."
        )
    else:
        gains = [p.gain for points in loads for p in points if (p.alpha, p.max_wait) == choice]
        bound = f"{choice[1]:g} s" if choice[1] > 0 else "none"
        rec.append(
            f"alpha {choice[0]:g}, maxWaitSeconds {bound}: median TTFT "
            + ", ".join(f"{g:.2f}x" for g in gains)
            + " lower than FCFS at the loads above, tails within the budget."
        )
    rec.append("\n    " + patch_command(args.name, choice, args.namespace))
    return "\n".join(out), "\n".join(rec)


def tune(args: argparse.Namespace) -> int:
    """Sweep alpha and beta at a few multiples of the user's traffic on `--replicas` replicas.

    alpha: one replica given every N-th request (its share under an even split); beta: all N
    replicas behind the router with the whole trace. A rate scale of 2 means twice today's
    traffic."""
    profile = get_profile(args.profile)
    jobs0 = prepare(
        load_trace(resolve_trace(args.trace, args.traces_dir)),
        max_model_len=profile.shape.max_model_len,
    )
    scales = args.rate_scales
    print(f"# Tuning on {args.trace}: {len(jobs0)} requests, {profile.description}\n")
    print(
        f"## LARRY: alpha x maxWaitSeconds (one replica with every {args.replicas}th request; "
        "p50 gain = FCFS's median TTFT / this setting's)"
    )
    tables, recommendation = tune_scheduler(jobs0[:: args.replicas], profile, scales, args)
    print(tables)
    print(f"\n## beta ({args.replicas} replicas, FCFS engines; lower TGT is better)\n")
    rows: list[list[object]] = []
    for scale in scales:
        jobs = [replace(j, arrival=j.arrival / scale) for j in jobs0]
        for label, router, beta in [
            ("round-robin", "round-robin", 1.0),
            ("least-requests", "least-requests", 1.0),
        ] + [(f"sal b={x:g}", "sal", x) for x in args.betas]:
            cfg = ClusterConfig(profile, replicas=args.replicas, router=router, beta=beta)
            s = summarize(jobs, simulate(jobs, cfg))
            rows.append(
                [
                    f"x{scale:g}",
                    s.offered_rps,
                    label,
                    s.ttft_p50,
                    s.tgt_mean,
                    s.tgt_p99,
                ]
            )
    print(table(["scale", "req/s", "router", "TTFT p50", "TGT mean", "TGT p99"], rows))
    print(recommendation)
    return 0
