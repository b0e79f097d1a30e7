"""Prefix-aware routing on the Mooncake trace: SAL against round-robin and the prefix baselines.

    python bench/prefix_routing.py --profile h100-llama3-8b --replicas 4 --rates 3 4 \\
        --routers round-robin sal llmd-scorer dynamo-cost --out /tmp/prefix.jsonl

Replays `mooncake_synthetic_trace.jsonl` (../shared/traces, read in place) through the
simulator with vLLM's prefix cache on every replica, the long-context shape (max_model_len
131,072: Llama-3.1-class) and the router's own approximate prefix index. Requests that do not fit
131,072 tokens are dropped (never clipped: that would break their hash chain) and counted.
Each (rate, router) run appends one JSON line to --out and prints a markdown row; `--table`
turns a results file into the tables of docs/performance.md with the goal ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from halffull.sim.cluster import ClusterConfig, simulate
from halffull.sim.profiles import get_profile, with_shape
from halffull.sim.traces import drop_too_long, load_trace, resolve_trace
from halffull.sim.workload import prepare

LONG_CONTEXT = 131072


def run(args: argparse.Namespace) -> None:
    profile = with_shape(get_profile(args.profile), max_model_len=LONG_CONTEXT)
    jobs, dropped = drop_too_long(load_trace(resolve_trace(args.trace)), LONG_CONTEXT)
    print(f"{args.trace}: {len(jobs)} requests kept, {dropped} dropped (> {LONG_CONTEXT} tokens)")
    for rate in args.rates:
        workload = prepare(jobs, rate_scale=rate, limit=args.limit)
        for router in args.routers:
            res = simulate(
                workload,
                ClusterConfig(
                    profile,
                    replicas=args.replicas,
                    router=router,
                    beta=args.beta,
                    poll_s=0.1,
                    prefix_source=args.prefix_source,
                ),
            )
            row = {
                "trace": args.trace,
                "profile": args.profile,
                "replicas": args.replicas,
                "rate": rate,
                "router": router,
                "prefix_source": args.prefix_source,
                "requests": len(workload),
                "limit": args.limit,
                "dropped": dropped,
                "ttft_mean": float(np.mean(res.ttft)),
                "ttft_p90": float(np.percentile(res.ttft, 90)),
                "ttft_p99": float(np.percentile(res.ttft, 99)),
                "tgt_mean": float(np.mean(res.tgt)),
                "tgt_p99": float(np.percentile(res.tgt, 99)),
                "hit_rate": res.hit_rate(),
                "preemptions": int(res.preemptions.sum()),
                "wall_s": res.wall_s,
            }
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(
                f"| {args.profile} | {args.replicas} | x{rate:g} | {router} | "
                f"{row['ttft_mean']:.2f} | {row['ttft_p90']:.2f} | {row['ttft_p99']:.2f} | "
                f"{row['tgt_mean']:.2f} | {row['hit_rate']:.1%} | {row['preemptions']} |",
                flush=True,
            )


def table(path: Path) -> None:
    """Markdown tables per (profile, replicas, rate), with SAL's goal ratios."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict[tuple[str, str, int, float], dict[str, dict[str, float]]] = {}
    for r in rows:
        key = (r.get("trace", "mooncake"), r["profile"], r["replicas"], r["rate"])
        exact = r.get("prefix_source") == "engine"
        groups.setdefault(key, {})[r["router"] + (" (true caches)" if exact else "")] = r
    for (trace, profile, n, rate), by in sorted(groups.items()):
        print(f"\n**{profile}, {n} replicas, {trace} x{rate:g}**\n")
        print("| router | TTFT mean (s) | TTFT p90 | TTFT p99 | TGT mean (s) | prefix hits |")
        print("|---|---|---|---|---|---|")
        for name, r in by.items():
            print(
                f"| {name} | {r['ttft_mean']:.2f} | {r['ttft_p90']:.2f} | {r['ttft_p99']:.2f} | "
                f"{r['tgt_mean']:.2f} | {r['hit_rate']:.1%} |"
            )
        sal = by.get("sal")
        rr = by.get("round-robin")
        if sal and rr:
            print(
                f"\nround-robin / SAL: mean TTFT {rr['ttft_mean'] / sal['ttft_mean']:.2f}x, "
                f"p90 TTFT {rr['ttft_p90'] / sal['ttft_p90']:.2f}x, "
                f"mean TGT {rr['tgt_mean'] / sal['tgt_mean']:.2f}x"
            )
        greedy = by.get("sal-greedy")
        if sal and greedy:
            print(
                f"sal-greedy (SAL without the recompute charge) / SAL: mean TTFT "
                f"{greedy['ttft_mean'] / sal['ttft_mean']:.3f}x, mean TGT "
                f"{greedy['tgt_mean'] / sal['tgt_mean']:.3f}x"
            )
        peers = [by[p] for p in ("llmd-scorer", "dynamo-cost") if p in by]
        if sal and peers:
            best = min(peers, key=lambda r: r["ttft_mean"])
            print(
                f"best peer ({best['router']}) / SAL: mean TTFT "
                f"{best['ttft_mean'] / sal['ttft_mean']:.2f}x, p99 TTFT "
                f"{best['ttft_p99'] / sal['ttft_p99']:.2f}x"
            )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trace", default="mooncake")
    ap.add_argument("--profile", default="h100-llama3-8b")
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--rates", type=float, nargs="+", default=[3.0, 4.0])
    ap.add_argument(
        "--routers", nargs="+", default=["round-robin", "sal", "llmd-scorer", "dynamo-cost"]
    )
    ap.add_argument("--beta", type=float, default=256.0)
    ap.add_argument(
        "--limit",
        type=int,
        help="replay only the trace's first LIMIT requests (quick sweeps; the docs' tables "
        "are whole-trace runs)",
    )
    ap.add_argument("--prefix-source", choices=["router", "engine"], default="router")
    ap.add_argument("--out", type=Path, default=Path("prefix_routing.jsonl"))
    ap.add_argument("--table", type=Path, help="print the tables of a results file and exit")
    args = ap.parse_args()
    if args.table:
        table(args.table)
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
