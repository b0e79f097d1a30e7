"""Summaries of simulation results and markdown tables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from halffull.sim.cluster import SimResult
from halffull.sim.workload import Job


@dataclass(frozen=True, slots=True)
class Summary:
    requests: int
    offered_rps: float
    ttft_p50: float
    ttft_p90: float
    ttft_p99: float
    ttft_mean: float
    tgt_p50: float
    tgt_p90: float
    tgt_p99: float
    tgt_mean: float
    preemptions: int
    completed_rps: float
    output_tps: float
    wall_s: float


def offered_rate(jobs: Sequence[Job]) -> float:
    if len(jobs) < 2 or jobs[-1].arrival <= jobs[0].arrival:
        return float("inf")
    return (len(jobs) - 1) / (jobs[-1].arrival - jobs[0].arrival)


def summarize(jobs: Sequence[Job], res: SimResult) -> Summary:
    ttft, tgt = res.ttft, res.tgt
    p = np.percentile
    return Summary(
        requests=len(jobs),
        offered_rps=offered_rate(jobs),
        ttft_p50=float(p(ttft, 50)),
        ttft_p90=float(p(ttft, 90)),
        ttft_p99=float(p(ttft, 99)),
        ttft_mean=float(ttft.mean()),
        tgt_p50=float(p(tgt, 50)),
        tgt_p90=float(p(tgt, 90)),
        tgt_p99=float(p(tgt, 99)),
        tgt_mean=float(tgt.mean()),
        preemptions=int(res.preemptions.sum()),
        completed_rps=res.completed / res.makespan_s if res.makespan_s > 0 else 0.0,
        output_tps=res.throughput_tokens_s(),
        wall_s=res.wall_s,
    )


def fmt(x: float) -> str:
    if not np.isfinite(x):
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 0.1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [fmt(c) if isinstance(c, float) else str(c) for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
