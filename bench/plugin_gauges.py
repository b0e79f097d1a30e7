"""What the LARRY plugin's exact gauges change for SAL: SAL on vLLM's /metrics alone, SAL with the
plugin's gauges too, and round-robin, on the same windows of the Azure traces.

    python bench/plugin_gauges.py --out /tmp/gauges.jsonl      # 36 runs, about 1 min on 2 cores

Eight replicas of `h100-llama3-8b` with FCFS engines, SAL at the shipped defaults
(`halffull.defaults`: beta, poll interval), as in the cluster-level sweeps of
docs/performance.md. Each trace is cut into consecutive windows on its own clock (the conv trace
into four of 15 minutes, the code trace into two of 30: the slice lengths of those sweeps), and
each window is replayed at the knee and at 1.2x the knee. The knee is where round-robin's mean
TTFT starts to climb on the first window (conv x66: 324 req/s, code x70: 225 req/s); every window
is sped up to that many requests per second (the trace's own rate drifts over the hour). The
replays are deterministic (SAL and round-robin draw no random numbers): the windows stand in for
seeds. `sal` reads what vLLM's /metrics give
(`ClusterConfig.gauges="vllm"`), `sal+plugin` also the plugin's exact waiting prefill and free KV
tokens at the same poll (`"plugin"`); both go through the router's own `estimate_replica`.

Prints one markdown table per trace and load: each router's mean, p50 and p99 TTFT and mean TGT
over all requests of all windows, and round-robin's value divided by each SAL view's (above 1:
SAL is better): the geometric mean over the windows of the per-window ratio, and its range;
then how often the exact queue differed from the estimate. --out appends one JSON line per run
(one window, one router).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from halffull import defaults as D
from halffull.policy import endpoints, routing
from halffull.sim.cluster import ClusterConfig, simulate
from halffull.sim.profiles import get_profile
from halffull.sim.report import fmt, offered_rate, table
from halffull.sim.traces import load_trace, resolve_trace
from halffull.sim.workload import prepare

PROFILE = get_profile("h100-llama3-8b")
REPLICAS = 8
TRACE_SECONDS = 3600.0
SETUPS = {"conv": (900.0, 324.0), "code": (1800.0, 225.0)}
"""trace -> (window length on the trace's clock, the knee in requests per second)."""
RUNS = [
    ("round-robin", {"router": "round-robin"}),
    ("sal", {"router": "sal", "gauges": "vllm"}),
    ("sal+plugin", {"router": "sal", "gauges": "plugin"}),
]
METRICS = {
    "ttft_mean": ("TTFT mean", lambda ttft, tgt: float(np.mean(ttft))),
    "ttft_p50": ("TTFT p50", lambda ttft, tgt: float(np.percentile(ttft, 50))),
    "ttft_p99": ("TTFT p99", lambda ttft, tgt: float(np.percentile(ttft, 99))),
    "tgt_mean": ("TGT mean", lambda ttft, tgt: float(np.mean(tgt))),
}


@contextmanager
def queue_differences() -> Iterator[list[float]]:
    """While open, every fresh state the router builds from a poll with the plugin's gauges
    also records (exact queued tokens - what the same poll without them gives)."""
    diffs: list[float] = []
    real = routing.estimate_replica

    def both(**kw: Any) -> routing.ReplicaState:
        state = real(**kw)
        stats = kw["stats"]
        if kw["fresh"] and stats is not None and stats.waiting_prefill_tokens is not None:
            bare = dataclasses.replace(stats, waiting_prefill_tokens=None, free_kv_tokens=None)
            diffs.append(state.queued_tokens - real(**{**kw, "stats": bare}).queued_tokens)
        return state

    endpoints.estimate_replica = both  # the name Endpoint.state calls
    try:
        yield diffs
    finally:
        endpoints.estimate_replica = real


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--loads", nargs="+", type=float, default=[1.0, 1.2], help="x the knee")
    ap.add_argument("--windows", type=int, help="at most this many windows per trace")
    ap.add_argument("--out", type=Path, help="append one JSON line per run here")
    args = ap.parse_args(argv)
    started = time.process_time()
    for trace in args.traces:
        seconds, knee = SETUPS[trace]
        every = load_trace(resolve_trace(trace))
        starts = [k * seconds for k in range(int(TRACE_SECONDS // seconds))][: args.windows]
        for load in args.loads:
            rate = knee * load
            pooled: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {
                name: ([], []) for name, _ in RUNS
            }
            per_window: dict[str, list[dict[str, float]]] = {name: [] for name, _ in RUNS}
            scales = []
            diffs: list[float] = []
            for start in starts:
                window = prepare(every, start_s=start, duration_s=seconds)
                scale = rate / offered_rate(window)
                scales.append(scale)
                jobs = prepare(window, rate_scale=scale, max_model_len=PROFILE.shape.max_model_len)
                for name, fields in RUNS:
                    cpu = time.process_time()
                    config = ClusterConfig(PROFILE, replicas=REPLICAS, **fields)  # type: ignore[arg-type]
                    with queue_differences() as d:
                        res = simulate(jobs, config)
                    diffs += d
                    pooled[name][0].append(res.ttft)
                    pooled[name][1].append(res.tgt)
                    row = {key: f(res.ttft, res.tgt) for key, (_, f) in METRICS.items()}
                    per_window[name].append(row)
                    record = {
                        "trace": trace,
                        "scale": scale,
                        "rate": rate,
                        "start_s": start,
                        "seconds": seconds,
                        "requests": len(jobs),
                        "run": name,
                        "beta": config.beta,
                        "poll_s": config.poll_s,
                        "preemptions": int(res.preemptions.sum()),
                        "cpu_s": round(time.process_time() - cpu, 2),
                        **row,
                    }
                    if args.out:
                        with args.out.open("a") as f:
                            f.write(json.dumps(record) + "\n")
            print(
                f"\n{trace}, {rate:g} req/s ({load:g}x the knee), {len(starts)} windows of "
                f"{seconds:g} s (x{min(scales):.0f}-x{max(scales):.0f}):\n"
            )
            rows: list[list[object]] = []
            totals = {}
            for name, _ in RUNS:
                ttft, tgt = (np.concatenate(a) for a in pooled[name])
                totals[name] = {key: f(ttft, tgt) for key, (_, f) in METRICS.items()}
                rows.append([name, *(fmt(totals[name][k]) for k in METRICS)])
            for name, _ in RUNS[1:]:
                cells: list[object] = [f"round-robin / {name}"]
                for key in METRICS:
                    ratios = [
                        rr[key] / mine[key]
                        for rr, mine in zip(
                            per_window["round-robin"], per_window[name], strict=True
                        )
                    ]
                    mean = float(np.exp(np.mean(np.log(ratios))))
                    cells.append(f"{mean:.3f} ({min(ratios):.2f}-{max(ratios):.2f})")
                rows.append(cells)
            print(table(["run", *(label for label, _ in METRICS.values())], rows))
            d = np.array(diffs)
            print(
                f"\nsal+plugin: the exact queue differed from the vLLM-view estimate in "
                f"{np.mean(np.abs(d) > 0.5):.0%} of the {len(d)} states ranked; exact - estimate: "
                f"mean {d.mean():.0f} tokens, p1 {np.percentile(d, 1):.0f}, "
                f"p99 {np.percentile(d, 99):.0f}"
            )
    print(
        f"\nbeta {D.BETA:g}, poll {D.POLL_INTERVAL_MS:g} ms; "
        f"CPU {time.process_time() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
