"""LARRY's trade-off between the median and the tail, and the setting to recommend.

A sweep simulates one engine over a grid of (alpha, maxWaitSeconds) on the user's traffic and
compares each point with FCFS on the same requests: the median-TTFT gain against the cost on
p99 TTFT and p99 TGT. The recommendation is the point with the best median gain whose tails stay
within a budget over FCFS's at every load swept; the shipped defaults are always in the grid, so
the answer is never worse than leaving the service as it is, as far as the simulator can tell.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from halffull.api.runtime_config import SchedulerConfig
from halffull.sim.cluster import ClusterConfig, simulate
from halffull.sim.profiles import Profile
from halffull.sim.report import Summary, summarize, table
from halffull.sim.workload import Job

DEFAULTS = SchedulerConfig()
"""The shipped scheduler parameters (policy, alpha, maxWaitSeconds)."""

ALPHAS = (0.01, 0.03, 0.1, 0.3)
MAX_WAITS = (0.0, 2.0, 3.0, 5.0, 10.0, 20.0)
"""The default grid; 0 is plain LARRY without a bound."""


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
