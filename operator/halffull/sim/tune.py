"""`halffull bench tune`: pick LARRY's alpha and SAL's beta for your own traffic.

Replays a CSV of your requests (arrival, prompt_tokens, output_tokens) through the simulator at
a few multiples of today's rate, on the profile of your hardware, and prints one table for alpha
(one replica's share of the traffic) and one for beta (all replicas behind the router).
docs/performance.md says how to read them.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from halffull.sim.cluster import ClusterConfig, simulate
from halffull.sim.profiles import get_profile
from halffull.sim.report import summarize, table
from halffull.sim.workload import load_csv, prepare, resolve_trace


def tune(args: argparse.Namespace) -> int:
    """Sweep alpha and beta at a few multiples of the user's traffic on `--replicas` replicas.

    alpha: one replica given every N-th request (its share under an even split); beta: all N
    replicas behind the router with the whole trace. A rate scale of 2 means twice today's
    traffic."""
    profile = get_profile(args.profile)
    jobs0 = prepare(
        load_csv(resolve_trace(args.trace, args.traces_dir)),
        max_model_len=profile.shape.max_model_len,
    )
    scales = args.rate_scales
    print(f"# Tuning on {args.trace}: {len(jobs0)} requests, {profile.description}\n")
    print(
        f"## alpha (one replica with every {args.replicas}th request; lower TTFT p50 is better, "
        "watch p99)\n"
    )
    rows: list[list[object]] = []
    share = jobs0[:: args.replicas]
    for scale in scales:
        jobs = [replace(j, arrival=j.arrival / scale) for j in share]
        for label, pol, alpha in [("fcfs", "fcfs", 1.0)] + [
            (f"larry a={a:g}", "larry", a) for a in args.alphas
        ]:
            cfg = ClusterConfig(profile, admission=pol, alpha=alpha)
            s = summarize(jobs, simulate(jobs, cfg))
            rows.append(
                [f"x{scale:g}", s.offered_rps, label, s.ttft_p50, s.ttft_p99, s.tgt_p50, s.tgt_p99]
            )
    print(table(["scale", "req/s", "policy", "TTFT p50", "TTFT p99", "TGT p50", "TGT p99"], rows))
    print(f"\n## beta ({args.replicas} replicas, FCFS engines; lower TGT is better)\n")
    rows = []
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
    return 0
