"""Routing-policy quality: replay the Azure LLM traces through 4 modelled replicas, all policies.

Each replica is the simulator's `halffull.sim.engine.Replica` (continuous batching, chunked
prefill with a per-step token budget, paged KV cache, preemption; step time grows with the
step's tokens, sequences and KV tokens read), run by `halffull.sim.cluster`. The
router side is the production code: the policy classes from `halffull.policy.routing`, the
replica estimate and the dispatch accounting from `halffull.router.endpoints` (tokens added at
dispatch, released at the first token; stats polled every `--poll-ms` of simulated time).
Requests are streamed, so TTFT = first token - arrival and TGT (total generation time) =
last token - arrival.

The replica profile is an assumption, not a measurement: a mid-range GPU serving an 8B model
(8 ms per step + 0.05 ms per prefill token + 0.05 ms per decoding sequence + 40 ns per KV token
read; 131,072 KV tokens, or fewer with --kv-blocks; 2,048 tokens per step; 256 sequences). Load
is swept by replaying the trace's arrivals `speedup` times faster. SAL runs once per --betas value.

    .venv/bin/python bench/router_policies.py                      # both traces, default loads
    .venv/bin/python bench/router_policies.py --kv-blocks 2048 --trace conv --speedups 3,4,5

Reads ../shared/traces (or --traces DIR); never copies them.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from halffull.policy.routing import POLICIES
from halffull.policy.sal import DEFAULT_MAX_TOKENS_PER_BATCH
from halffull.sim.cluster import ClusterConfig
from halffull.sim.cluster import simulate as cluster_simulate
from halffull.sim.profiles import EngineShape, Profile, StepModel
from halffull.sim.workload import Job

DEFAULT_TRACES = Path(__file__).resolve().parent.parent.parent / "shared" / "traces"
TRACE_FILES = {"conv": "azure_llm_2023_conv.csv", "code": "azure_llm_2023_code.csv"}
DEFAULT_SPEEDUPS = {"conv": "6,7.5,9", "code": "4,8,12"}
SHAPE = EngineShape(
    num_blocks=8192,
    block_size=16,
    max_num_batched_tokens=DEFAULT_MAX_TOKENS_PER_BATCH,
    max_num_seqs=256,
    max_model_len=16384,
)
COSTS = StepModel(
    overhead_s=0.008, seq_s=0.0, token_s=5e-5, attn_s=0.0, weights_s=0.0, kv_s=4e-8, overlap=False
)


@dataclass(frozen=True, slots=True)
class TraceRequest:
    arrival: float
    prompt: int
    output: int


def load_trace(path: Path, start: int, count: int) -> list[TraceRequest]:
    rows: list[TraceRequest] = []
    t0: datetime | None = None
    with path.open() as f:
        for i, row in enumerate(csv.DictReader(f)):
            if i < start:
                continue
            if len(rows) >= count:
                break
            ts = datetime.fromisoformat(row["TIMESTAMP"][:26])
            t0 = t0 or ts
            prompt = max(1, int(row["ContextTokens"]))
            output = max(1, int(row["GeneratedTokens"]))
            prompt = min(prompt, SHAPE.max_model_len - output)
            rows.append(TraceRequest((ts - t0).total_seconds(), prompt, output))
    return rows


@dataclass
class Result:
    ttft: list[float] = field(default_factory=list)
    tgt: list[float] = field(default_factory=list)
    preemptions: int = 0
    per_replica: list[int] = field(default_factory=list)


def simulate(
    trace: list[TraceRequest],
    policy_name: str,
    *,
    shape: EngineShape = SHAPE,
    speedup: float,
    replicas: int,
    poll_s: float,
    beta: float,
    seed: int,
) -> Result:
    """The trace through `halffull.sim.cluster` (the simulator's replicas and router loop)."""
    jobs = [Job(r.arrival / speedup, r.prompt, r.output) for r in trace]
    profile = Profile("assumed-8b", "a mid-range GPU serving an 8B model", shape, COSTS)
    config = ClusterConfig(
        profile, replicas=replicas, router=policy_name, beta=beta, poll_s=poll_s, seed=seed
    )
    res = cluster_simulate(jobs, config)
    return Result(
        ttft=[float(x) for x in res.ttft],
        tgt=[float(x) for x in res.tgt],
        preemptions=int(res.preemptions.sum()),
        per_replica=[int((res.replica == k).sum()) for k in range(replicas)],
    )


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    ap.add_argument("--trace", choices=[*TRACE_FILES, "both"], default="both")
    ap.add_argument("--speedups", help="comma-separated; default per trace")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--start", type=int, default=0, help="first trace row used")
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--poll-ms", type=float, default=100.0)
    ap.add_argument(
        "--betas", default="1,16,256", help="SAL is run once per beta (comma-separated)"
    )
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--kv-blocks",
        type=int,
        default=SHAPE.num_blocks,
        help=f"KV blocks of {SHAPE.block_size} tokens per replica (memory pressure)",
    )
    args = ap.parse_args()
    betas = [float(b) for b in args.betas.split(",")]
    runs: list[tuple[str, str, float]] = []  # (label, policy, beta)
    for pol in args.policies.split(","):
        if pol == "sal":
            runs += [(f"sal β={b:g}", "sal", b) for b in betas]
        else:
            runs.append((pol, pol, 1.0))
    traces = list(TRACE_FILES) if args.trace == "both" else [args.trace]
    shape = replace(SHAPE, num_blocks=args.kv_blocks)

    print(
        f"## Routing policies: {args.replicas} modelled replicas, {args.requests} requests per "
        f"run from row {args.start}, poll every {args.poll_ms:g} ms, "
        f"{shape.kv_tokens:,} KV tokens per replica\n"
    )
    print(
        "Times in seconds. TGT = total generation time (arrival to last token). "
        "Trace: Azure LLM inference trace 2023.\n"
    )
    for name in traces:
        trace = load_trace(args.traces / TRACE_FILES[name], args.start, args.requests)
        span = trace[-1].arrival
        speedups = [float(s) for s in (args.speedups or DEFAULT_SPEEDUPS[name]).split(",")]
        for speedup in speedups:
            rate = len(trace) / (span / speedup)
            print(f"### {name} trace, speedup {speedup:g}x ({rate:.1f} req/s offered)\n")
            print(
                "| policy | TTFT mean | TTFT p50 | TTFT p99 | TGT mean | TGT p50 | TGT p99 "
                "| preemptions | requests per replica |"
            )
            print("|---|---|---|---|---|---|---|---|---|")
            means: dict[str, float] = {}
            for label, pol, beta in runs:
                res = simulate(
                    trace,
                    pol,
                    shape=shape,
                    speedup=speedup,
                    replicas=args.replicas,
                    poll_s=args.poll_ms / 1000,
                    beta=beta,
                    seed=args.seed,
                )
                means[label] = statistics.fmean(res.tgt)
                print(
                    f"| {label} | {statistics.fmean(res.ttft):.2f} | {pct(res.ttft, 0.5):.2f} | "
                    f"{pct(res.ttft, 0.99):.2f} | {means[label]:.2f} | {pct(res.tgt, 0.5):.2f} | "
                    f"{pct(res.tgt, 0.99):.2f} | {res.preemptions} | "
                    f"{'/'.join(map(str, res.per_replica))} |",
                    flush=True,
                )
            sals = {k: m for k, m in means.items() if k.startswith("sal")}
            others = {k: m for k, m in means.items() if not k.startswith("sal")}
            if sals and others:
                best_other = min(others, key=lambda k: others[k])
                parts = []
                for k, m in sals.items():
                    part = f"{k}: "
                    if "round-robin" in others:
                        part += f"round-robin/SAL {others['round-robin'] / m:.2f}x, "
                    part += f"best other ({best_other})/SAL {others[best_other] / m:.2f}x"
                    parts.append(part)
                print("\nMean TGT ratios: " + "; ".join(parts) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
