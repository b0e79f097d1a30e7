"""LARRY's frontier in the simulator: median-TTFT gain against p99 TTFT and p99 TGT, over
alpha x maxWaitSeconds, one `h100-llama3-8b` engine, both Azure traces, at each trace's knee and
at 1.2x the knee. Prints markdown tables and the goal check for the shipped defaults.

    python bench/larry_frontier.py [--quick] [--json out.json]

Knees (FCFS, this profile; docs/performance.md): conversation x6.5 (31 req/s, FCFS median TTFT
0.19 s, the last load before the queue takes over); code x3 (9.1 req/s, the first load where the
bursts queue: FCFS median 0.79 s). Slices: 10 minutes of conv, 20 of code, as in `bench report`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from halffull.sim.profiles import get_profile
from halffull.sim.tune import ALPHAS, DEFAULTS, MAX_WAITS, Point, frontier_table, grid, sweep
from halffull.sim.workload import load_csv, prepare, resolve_trace

TRACES = next(
    (d / "shared" / "traces" for d in Path(__file__).resolve().parents if (d / "shared").is_dir()),
    None,
)
KNEES = {"conv": (600.0, 6.5), "code": (1200.0, 3.0)}
LOADS = (1.0, 1.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a small grid (for a smoke run)")
    ap.add_argument("--traces", nargs="+", default=list(KNEES))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    profile = get_profile("h100-llama3-8b")
    alphas, waits = (ALPHAS[1:3], MAX_WAITS[::2]) if args.quick else (ALPHAS, MAX_WAITS)
    pairs = grid(alphas, waits)
    checks, raw = [], []
    for name in args.traces:
        seconds, knee = KNEES[name]
        trace = load_csv(resolve_trace(name, TRACES))
        for load in LOADS:
            started = time.time()
            jobs = prepare(
                trace,
                rate_scale=knee * load,
                duration_s=seconds,
                max_model_len=profile.shape.max_model_len,
            )
            points = sweep(jobs, profile, pairs)
            label = f"{name} {load:g}x knee"
            fcfs = points[0].fcfs
            print(
                f"\n### {label} ({fcfs.offered_rps:.1f} req/s, {len(jobs)} requests; FCFS TTFT "
                f"p50 {fcfs.ttft_p50:.2f} s, p99 {fcfs.ttft_p99:.2f} s, TGT p99 "
                f"{fcfs.tgt_p99:.2f} s; {time.time() - started:.0f} s)\n",
                flush=True,
            )
            print(frontier_table(label, points), flush=True)
            shipped = next(
                p
                for p in points
                if (p.alpha, p.max_wait) == (DEFAULTS.alpha, DEFAULTS.max_wait_seconds)
            )
            checks.append((label, shipped))
            raw += [_record(label, p) for p in points]
    print(
        f"\n### Goals, shipped defaults (alpha {DEFAULTS.alpha:g}, maxWaitSeconds "
        f"{DEFAULTS.max_wait_seconds:g})\n"
    )
    print("| load | p50 gain (>= 2x) | p99 TTFT / FCFS (<= 1.1) | p99 TGT / FCFS (<= 1.1) |")
    print("|---|---|---|---|")
    for label, p in checks:
        ttft, tgt = p.ttft_p99_ratio, p.tgt_p99_ratio
        print(
            f"| {label} | {p.gain:.2f}x {_ok(p.gain >= 2)} | {ttft:.2f} {_ok(ttft <= 1.1)} "
            f"| {tgt:.2f} {_ok(tgt <= 1.1)} |"
        )
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))


def _ok(flag: bool) -> str:
    return "met" if flag else "**not met**"


def _record(label: str, p: Point) -> dict[str, object]:
    s, f = p.summary, p.fcfs
    return {
        "load": label,
        "alpha": p.alpha,
        "max_wait": p.max_wait,
        "ttft_p50": s.ttft_p50,
        "ttft_p99": s.ttft_p99,
        "tgt_p99": s.tgt_p99,
        "fcfs_ttft_p50": f.ttft_p50,
        "fcfs_ttft_p99": f.ttft_p99,
        "fcfs_tgt_p99": f.tgt_p99,
    }


if __name__ == "__main__":
    main()
