"""`halffull sim`: replay a trace (or a synthetic workload) through modelled vLLM replicas.

    halffull sim --trace conv --rate-scale 80 --replicas 8 --router sal:256
    halffull sim --trace my.csv --profile h100-llama3-70b --admission larry:0.1
    halffull sim --synthetic bursty --fit-from code --count 5000 --rate 40 --cv 4

Prints one summary line per run as a markdown table; --json writes per-request results.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from halffull import defaults as D
from halffull.policy.registry import ROUTING_POLICIES as ROUTERS
from halffull.sim.cluster import ClusterConfig, SimResult, simulate
from halffull.sim.engine import ADMISSION_POLICIES
from halffull.sim.gpu_fit import load_profile
from halffull.sim.profiles import PROFILES, Profile, get_profile, with_shape
from halffull.sim.report import summarize, table
from halffull.sim.slices import SliceConfig, simulate_slices
from halffull.sim.traces import drop_too_long, load_trace, resolve_trace
from halffull.sim.workload import Job, fit, prepare, synthetic


def add_workload_arguments(p: argparse.ArgumentParser) -> None:
    w = p.add_argument_group("workload")
    w.add_argument(
        "--trace",
        default="conv",
        help="conv, code (the shared Azure traces), mooncake (the shared prefix trace), a CSV "
        "path (arrival, prompt_tokens, output_tokens) or a Mooncake-format .jsonl path",
    )
    w.add_argument(
        "--traces-dir", type=Path, help="where conv/code live (default ../shared/traces)"
    )
    w.add_argument("--rate-scale", type=float, default=1.0, help="replay arrivals this much faster")
    w.add_argument("--start", type=float, default=0.0, help="slice start on the trace's clock (s)")
    w.add_argument("--duration", type=float, help="slice length on the trace's clock (s)")
    w.add_argument("--limit", type=int, help="at most this many requests")
    w.add_argument("--length-scale", type=float, default=1.0, help="multiply token counts")
    w.add_argument(
        "--synthetic",
        choices=["poisson", "bursty"],
        help="generate arrivals instead of replaying: lengths fitted to --trace (log-normal)",
    )
    w.add_argument("--count", type=int, default=5000, help="synthetic: number of requests")
    w.add_argument("--rate", type=float, help="synthetic: mean requests/s (default: fitted)")
    w.add_argument("--cv", type=float, help="synthetic bursty: inter-arrival CV (default: fitted)")
    w.add_argument("--seed", type=int, default=0)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_workload_arguments(p)
    e = p.add_argument_group("replicas")
    e.add_argument(
        "--profile",
        default="h100-llama3-8b",
        help=f"{', '.join(sorted(PROFILES))}, or a profile JSON (bench/gpu_steps.py writes one)",
    )
    e.add_argument(
        "--max-model-len",
        type=int,
        help="override the profile's max_model_len (e.g. 131072 for the long-context shape); "
        "requests with prefix hashes that do not fit are dropped and counted, never clipped",
    )
    e.add_argument("--replicas", type=int, default=1)
    e.add_argument("--kv-blocks", type=int, help="override the profile's number of KV blocks")
    e.add_argument("--max-num-seqs", type=int, help="override the profile's max_num_seqs")
    e.add_argument("--max-num-batched-tokens", type=int, help="override the token budget")
    e.add_argument(
        "--admission",
        nargs="+",
        default=["fcfs"],
        help=f"engine policies, each NAME[:ALPHA] (alpha {D.ALPHA:g} by default); "
        f"NAME in {', '.join(ADMISSION_POLICIES)}, "
        "or sls / scls[:SLICE] for the static-batching baselines",
    )
    r = p.add_argument_group("router")
    r.add_argument(
        "--router",
        nargs="+",
        default=["sal"],
        help=f"routing policies, each NAME[:BETA] (beta {D.BETA:g} by default); "
        f"NAME in {', '.join(ROUTERS)}",
    )
    r.add_argument("--poll-ms", type=float, default=float(D.POLL_INTERVAL_MS))
    r.add_argument(
        "--prefix-source",
        choices=["router", "engine"],
        default="router",
        help="what prefix-aware policies match against: the router's approximate index "
        "(production) or the replicas' true caches (a precise index)",
    )
    r.add_argument(
        "--gauges",
        choices=["vllm", "plugin"],
        default="vllm",
        help="what each poll reads: vLLM's /metrics alone (waiting count, KV usage) or also the "
        "LARRY plugin's exact waiting prefill and free KV tokens",
    )
    p.add_argument("--json", type=Path, help="write per-request results here")


def workload(args: argparse.Namespace, max_model_len: int) -> list[Job]:
    jobs = load_trace(resolve_trace(args.trace, args.traces_dir))
    jobs, dropped = drop_too_long(jobs, max_model_len)
    if dropped:
        print(f"dropped {dropped} requests longer than max_model_len {max_model_len}")
    if args.synthetic:
        law = fit(jobs)
        cv = 1.0 if args.synthetic == "poisson" else args.cv
        jobs = synthetic(law, count=args.count, rate=args.rate, cv=cv, seed=args.seed)
    return prepare(
        jobs,
        rate_scale=args.rate_scale,
        start_s=args.start,
        duration_s=args.duration,
        limit=args.limit,
        length_scale=args.length_scale,
        max_model_len=max_model_len,
    )


def profile_of(args: argparse.Namespace) -> Profile:
    """The profile by name or JSON file, with the shape overrides applied."""
    if args.profile in PROFILES:
        profile = get_profile(args.profile)
    elif args.profile.endswith(".json"):
        profile = load_profile(Path(args.profile))
    else:
        raise SystemExit(f"unknown profile {args.profile!r}; known: {', '.join(PROFILES)}")
    changes = {
        "num_blocks": args.kv_blocks,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "max_model_len": args.max_model_len,
    }
    return with_shape(profile, **{k: v for k, v in changes.items() if v})


def run_one(
    jobs: list[Job], args: argparse.Namespace, admission: str, router: str
) -> tuple[str, SimResult]:
    profile = profile_of(args)
    name, _, param = admission.partition(":")
    if name in ("sls", "scls"):
        cfg = SliceConfig(
            profile,
            instances=args.replicas,
            mode=name,  # type: ignore[arg-type]
            slice_len=int(param or 128),
            max_gen=max(j.output for j in jobs),
        )
        return admission, simulate_slices(jobs, cfg)
    if name not in ADMISSION_POLICIES:
        raise SystemExit(f"unknown admission policy {name!r}")
    rname, _, beta = router.partition(":")
    if rname not in ROUTERS:
        raise SystemExit(f"unknown router {rname!r}")
    config = ClusterConfig(
        profile,
        replicas=args.replicas,
        admission=name,
        alpha=float(param or D.ALPHA),
        router=rname,
        beta=float(beta or D.BETA),
        poll_s=args.poll_ms / 1000,
        seed=args.seed,
        prefix_source=args.prefix_source,
        gauges=args.gauges,
    )
    label = admission if args.replicas == 1 else f"{admission} / {router}"
    return label, simulate(jobs, config)


def run(args: argparse.Namespace) -> int:
    profile = profile_of(args)
    jobs = workload(args, profile.shape.max_model_len)
    if not jobs:
        raise SystemExit("the workload is empty (check --start/--duration/--limit)")
    rows = []
    dump = []
    for admission in args.admission:
        routers = args.router if args.replicas > 1 else args.router[:1]
        for router in routers:
            label, res = run_one(jobs, args, admission, router)
            s = summarize(jobs, res)
            rows.append(
                [
                    label,
                    s.requests,
                    s.offered_rps,
                    s.ttft_p50,
                    s.ttft_p99,
                    s.ttft_mean,
                    s.tgt_p50,
                    s.tgt_p99,
                    s.tgt_mean,
                    s.preemptions,
                    f"{res.hit_rate():.1%}",
                    s.completed_rps,
                    s.wall_s,
                ]
            )
            dump.append(
                {
                    "policy": label,
                    "ttft": res.ttft.tolist(),
                    "tgt": res.tgt.tolist(),
                    "replica": res.replica.tolist(),
                }
            )
    print(f"{args.profile}, {args.replicas} replica(s), trace {args.trace} x{args.rate_scale:g}\n")
    print(
        table(
            [
                "policy",
                "requests",
                "offered req/s",
                "TTFT p50 (s)",
                "TTFT p99",
                "TTFT mean",
                "TGT p50 (s)",
                "TGT p99",
                "TGT mean",
                "preemptions",
                "prefix hits",
                "served req/s",
                "sim wall (s)",
            ],
            rows,
        )
    )
    if args.json:
        args.json.write_text(json.dumps(dump))
    return 0
