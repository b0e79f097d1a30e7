"""The simulator's results for docs/performance.md: every sweep as markdown tables and PNG plots.

    python bench/report.py --out docs/img                    # everything; 5-10 min on 2 cores
    python bench/report.py --out /tmp/b --quick              # short slices, fewer points
    python bench/report.py --out /tmp/b --only engine alpha  # some parts (results-<parts>.md)

Each sweep is data (`Sweep`): a workload, the value that varies along it (the trace's rate
scale, a synthetic arrival CV, or a `ClusterConfig` field such as alpha, beta or the poll
interval), the configurations compared at each value, and the columns and plots to show. One
function, `run_sweep`, runs and draws them all. The SCLS comparison (a different simulator, bar
chart) and the simulator's own speed have functions of their own.

Every run replays the Azure LLM inference trace 2023 (../shared/traces, read in place, or
--traces-dir) through `halffull.sim`, which drives the production LARRY and routing code.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from halffull import defaults as D
from halffull.policy.registry import ROUTING_POLICIES as ROUTERS
from halffull.sim.cluster import ClusterConfig, SimResult, simulate
from halffull.sim.profiles import Profile, get_profile, with_shape
from halffull.sim.report import Summary, summarize, table
from halffull.sim.slices import SliceConfig, simulate_slices
from halffull.sim.traces import load_trace, resolve_trace
from halffull.sim.workload import Job, fit, prepare, synthetic

TRACE_NOTE = "Trace: Azure LLM inference trace 2023 (CC-BY 4.0)."
PARTS = ["speed", "engine", "alpha", "router", "beta", "poll", "synthetic", "combined", "scls"]

COLUMNS = {
    "ttft_p50": "TTFT p50",
    "ttft_p90": "TTFT p90",
    "ttft_p99": "TTFT p99",
    "ttft_mean": "TTFT mean",
    "tgt_p50": "TGT p50",
    "tgt_p99": "TGT p99",
    "tgt_mean": "TGT mean",
    "preemptions": "preempt.",
}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass(frozen=True)
class Ratio:
    """A column comparing each row with the row labelled `ref` at the same point."""

    header: str
    metric: str
    ref: str
    ref_over_row: bool
    """True: ref / row (e.g. a speed-up in TTFT); False: row / ref."""


@dataclass(frozen=True)
class Sweep:
    part: str
    """The --only name that selects it."""
    title: str
    profile: Profile
    trace: str
    xs: Sequence[float]
    axis: str
    """What varies: "scale" (the trace's arrivals sped up), "cv" (synthetic arrivals with lengths
    fitted to the trace) or a ClusterConfig field (alpha, beta, poll_s)."""
    series: Sequence[tuple[str, Mapping[str, Any]]]
    """(label, ClusterConfig fields) compared at every point."""
    base: Mapping[str, Any] = field(default_factory=dict)
    """ClusterConfig fields common to all runs."""
    baselines: Sequence[tuple[str, Mapping[str, Any]]] = ()
    """Runs once (not along the axis): a row each, a horizontal line in the plots."""
    seconds: float = 600.0
    """Slice of the trace replayed."""
    scale: float = 1.0
    """The rate scale when the axis is not "scale"."""
    rate: float = 0.0
    """Requests/s of synthetic arrivals (axis "cv")."""
    quick: slice = field(default_factory=lambda: slice(None))
    """The points kept with --quick."""
    note: str = ""
    x_header: str = "scale"
    x_shown: Callable[[float], str] = "x{:g}".format
    columns: Sequence[str] = ("ttft_p50", "ttft_p99", "tgt_p50", "tgt_p99")
    ratio: Ratio | None = None
    plot: Sequence[str] = ()
    """Summary fields plotted against the axis (one panel each); none: no plot."""
    verdict: Callable[[Mapping[str, Summary]], str] | None = None
    """A line under the table for each point, from the summaries of its series."""
    log_x: bool = False
    log_y: bool = False
    x_label: str = ""

    @property
    def png(self) -> str:
        prefix = {"engine": "ttft_vs_load", "router": "tgt_vs_load"}.get(self.part, self.part)
        return f"{prefix}_{self.profile.name}_{self.trace}.png"


@dataclass
class Bench:
    out: Path
    quick: bool
    traces_dir: Path | None
    md: list[str]

    def trace(self, name: str) -> list[Job]:
        return load_trace(resolve_trace(name, self.traces_dir))

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
        fig.savefig(self.out / name, dpi=80, bbox_inches="tight")
        _plt().close(fig)
        self.md.append(f"\n![{name}]({name})\n")


def _jobs(b: Bench, sweep: Sweep, x: float) -> list[Job]:
    if sweep.axis == "scale":
        return b.slice(sweep.trace, sweep.seconds, x, sweep.profile)
    if sweep.axis == "cv":
        count = 600 if b.quick else 4000
        law = fit(b.trace(sweep.trace))
        arrivals = synthetic(law, count=count, rate=sweep.rate, cv=x, seed=0)
        return prepare(arrivals, max_model_len=sweep.profile.shape.max_model_len)
    return b.slice(sweep.trace, sweep.seconds, sweep.scale, sweep.profile)


def _run(jobs: list[Job], sweep: Sweep, fields: Mapping[str, Any], x: float) -> Summary:
    """One simulation at point `x` of the axis (NaN: a baseline, off the axis)."""
    if sweep.axis not in ("scale", "cv") and not np.isnan(x):
        fields = {sweep.axis: x, **fields}
    cfg = ClusterConfig(sweep.profile, **{**sweep.base, **fields})
    return summarize(jobs, simulate(jobs, cfg))


def run_sweep(b: Bench, sweep: Sweep) -> None:
    """Run every series at every point (and the baselines once); write the table and the plot."""
    b.write(f"\n## {sweep.title}\n")
    if sweep.note:
        b.write(sweep.note)
    if sweep.axis == "cv":
        law = fit(b.trace(sweep.trace))
        b.write(
            f"Fitted: prompt log-mean {law.prompt_mu:.2f} (sd {law.prompt_sigma:.2f}), output "
            f"log-mean {law.output_mu:.2f} (sd {law.output_sigma:.2f}); the trace's own "
            f"inter-arrival CV is {law.cv:.2f}."
        )
    verdicts: list[str] = []
    xs = list(sweep.xs)[sweep.quick] if b.quick else list(sweep.xs)
    points: dict[str, list[tuple[float, Summary]]] = {}
    rows: list[list[object]] = []
    fixed_jobs = sweep.axis not in ("scale", "cv")
    jobs = _jobs(b, sweep, 0.0) if fixed_jobs else []
    for label, fields in sweep.baselines:
        s = _run(jobs, sweep, fields, float("nan"))
        points[label] = [(float("nan"), s)]
        rows.append(_row(sweep, "-", label, s, None))
    for x in xs:
        if not fixed_jobs:
            jobs = _jobs(b, sweep, x)
        here = {label: _run(jobs, sweep, fields, x) for label, fields in sweep.series}
        for label, s in here.items():
            points.setdefault(label, []).append((x, s))
            ref = here[sweep.ratio.ref] if sweep.ratio else None
            rows.append(_row(sweep, sweep.x_shown(x), label, s, ref))
        if sweep.verdict:
            verdicts.append(f"{sweep.x_shown(x)}: {sweep.verdict(here)}")
    header = [sweep.x_header, "req/s", "run", *(COLUMNS[c] for c in sweep.columns)]
    if sweep.ratio:
        header.append(sweep.ratio.header)
    b.write(table(header, rows))
    if verdicts:
        b.write("\n" + "\n\n".join(verdicts) + "\n")
    if sweep.plot:
        _plot(b, sweep, points)


def _row(sweep: Sweep, x: str, label: str, s: Summary, ref: Summary | None) -> list[object]:
    row: list[object] = [x, s.offered_rps, label, *(getattr(s, c) for c in sweep.columns)]
    if sweep.ratio and ref is not None:
        mine, theirs = getattr(s, sweep.ratio.metric), getattr(ref, sweep.ratio.metric)
        num, den = (theirs, mine) if sweep.ratio.ref_over_row else (mine, theirs)
        row.append(f"{num / den:.2f}x" if den > 0 else "-")
    return row


def _plot(b: Bench, sweep: Sweep, points: Mapping[str, list[tuple[float, Summary]]]) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(sweep.plot), figsize=(5 * len(sweep.plot), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], sweep.plot, strict=True):
        for label, pts in points.items():
            ys = [getattr(s, metric) for _, s in pts]
            if len(pts) == 1 and np.isnan(pts[0][0]):  # a baseline
                ax.axhline(ys[0], color="k", lw=1, ls="--", label=label)
                continue
            if sweep.axis == "scale":
                xs = [s.offered_rps for _, s in pts]
            else:
                xs = [max(x, 0.05) if sweep.log_x else x for x, _ in pts]
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_xlabel(sweep.x_label or ("offered load (req/s)" if sweep.axis == "scale" else ""))
        ax.set_ylabel(COLUMNS[metric] + " (s)")
        if sweep.log_x:
            ax.set_xscale("log")
        if sweep.log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(sweep.title, fontsize=9)
    b.save(fig, sweep.png)


# -- the sweeps -----------------------------------------------------------------------------------

P8 = get_profile("h100-llama3-8b")
P70 = get_profile("h100x2-llama3-70b")

ENGINE_POLICIES: list[tuple[str, dict[str, Any]]] = [
    ("fcfs", {"admission": "fcfs"}),
    ("larry a=0.01", {"admission": "larry", "alpha": 0.01}),
    ("larry a=0.1", {"admission": "larry", "alpha": 0.1}),
    ("larry a=1", {"admission": "larry", "alpha": 1.0}),
    ("larry-literal a=0.1", {"admission": "larry-literal", "alpha": 0.1}),
    ("sjf-oracle", {"admission": "sjf-oracle"}),
]
ENGINE_NOTE = (
    "Each row replays a slice of the trace, arrivals sped up by the scale. TTFT and TGT in "
    "seconds. 'x FCFS' = FCFS's p50 TTFT / this policy's (above 1: faster). " + TRACE_NOTE
)
BETAS = [1.0, 16.0, 64.0, D.BETA]
"""SAL's betas in the router sweeps: the shipped value and smaller ones (docs/router.md)."""
SHIPPED_SAL = f"sal b={D.BETA:g}"
ROUTER_NOTE = (
    "Stats polled every 100 ms, with the router's dispatch accounting. "
    f"'/ {SHIPPED_SAL}' = this router's mean TGT divided by SAL's at the shipped beta. "
    + TRACE_NOTE
)
ROUTER_SERIES = [(f"sal b={x:g}", {"router": "sal", "beta": x}) for x in BETAS] + [
    (name, {"router": name}) for name in ROUTERS if name != "sal"
]


def router_verdict(results: Mapping[str, Summary]) -> str:
    """The best non-SAL balancer and round-robin against SAL at the shipped beta, by mean TGT."""
    others = {k: v for k, v in results.items() if not k.startswith("sal")}
    best = min(others, key=lambda k: others[k].tgt_mean)
    sal = results[SHIPPED_SAL].tgt_mean
    return (
        f"mean TGT, best other ({best}) / {SHIPPED_SAL} = {others[best].tgt_mean / sal:.3f}; "
        f"round-robin / {SHIPPED_SAL} = {results['round-robin'].tgt_mean / sal:.3f}"
    )


TTFT_X_FCFS = Ratio("x FCFS", "ttft_p50", "fcfs", ref_over_row=True)


# Sweeps over the trace's load, declared once and placed on a profile and trace by `at`.
ENGINE_LOAD = Sweep(
    "engine",
    "LARRY vs FCFS: one replica, {description}, {trace} trace",
    P8,
    "conv",
    (),
    "scale",
    ENGINE_POLICIES,
    quick=slice(1, 3),
    note=ENGINE_NOTE,
    columns=("ttft_p50", "ttft_p90", "ttft_p99", "ttft_mean", "tgt_p50", "tgt_p99", "preemptions"),
    ratio=TTFT_X_FCFS,
    plot=("ttft_p50", "ttft_p99"),
    log_y=True,
)
ROUTER_LOAD = Sweep(
    "router",
    "SAL vs other balancers: 8 replicas, {description}, FCFS engines, {trace} trace",
    P8,
    "conv",
    (),
    "scale",
    ROUTER_SERIES,
    base={"replicas": 8, "seed": 1},
    quick=slice(1, 2),
    note=ROUTER_NOTE,
    columns=("ttft_p50", "ttft_p99", "tgt_mean", "tgt_p50", "tgt_p99", "preemptions"),
    ratio=Ratio(f"/ {SHIPPED_SAL}", "tgt_mean", SHIPPED_SAL, ref_over_row=False),
    verdict=router_verdict,
    plot=("tgt_mean", "tgt_p99"),
)


def at(sweep: Sweep, profile: Profile, trace: str, seconds: float, xs: list[float]) -> Sweep:
    title = sweep.title.format(description=profile.description, trace=trace)
    return replace(sweep, title=title, profile=profile, trace=trace, seconds=seconds, xs=xs)


def beta_sweep(profile: Profile, scale: float, seconds: float) -> Sweep:
    return Sweep(
        "beta",
        f"beta sensitivity: conv trace x{scale:g}, 8 replicas, {profile.name}",
        profile,
        "conv",
        [0.0, 1.0, 16.0, 64.0, D.BETA, 1024.0],
        "beta",
        [("sal", {"router": "sal"})],
        base={"replicas": 8},
        baselines=[("round-robin", {"router": "round-robin"})],
        seconds=seconds,
        scale=scale,
        quick=slice(None, None, 2),
        x_header="beta",
        x_shown="{:g}".format,
        columns=("ttft_p50", "ttft_p99", "tgt_mean", "tgt_p99"),
        plot=("tgt_mean", "tgt_p99"),
        log_x=True,
        x_label="beta (0 plotted at 0.05)",
    )


SWEEPS: list[Sweep] = [
    at(ENGINE_LOAD, P8, "conv", 600.0, [4.5, 6.5, 7.5, 9.0]),
    at(ENGINE_LOAD, P8, "code", 1200.0, [3.0, 5.0, 8.0, 12.0]),
    at(ENGINE_LOAD, P70, "conv", 600.0, [0.6, 1.0, 1.3, 1.6]),
    Sweep(
        "alpha",
        f"alpha sensitivity: conv trace x7.5, 1 replica, {P8.name}",
        P8,
        "conv",
        [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 10.0],
        "alpha",
        [("larry", {"admission": "larry"}), ("larry-literal", {"admission": "larry-literal"})],
        baselines=[("fcfs", {"admission": "fcfs"})],
        scale=7.5,
        quick=slice(2, None, 2),
        x_header="alpha",
        x_shown="{:g}".format,
        plot=("ttft_p50", "ttft_p99"),
        log_x=True,
        log_y=True,
        x_label="alpha",
    ),
    at(ROUTER_LOAD, P8, "conv", 900.0, [46.0, 58.0, 66.0]),
    at(ROUTER_LOAD, P8, "code", 1800.0, [45.0, 70.0, 90.0]),
    at(ROUTER_LOAD, P70, "conv", 600.0, [11.0, 14.0, 17.0]),
    beta_sweep(P8, 66.0, 900.0),
    beta_sweep(P70, 14.0, 600.0),
    Sweep(
        "poll",
        f"Poll interval: code trace x70, 8 replicas, {P8.name}",
        P8,
        "code",
        [0.01, 0.1, 1.0, 5.0],
        "poll_s",
        [(r, {"router": r}) for r in ("sal", "least-kv", "queue-kv")],
        base={"replicas": 8, "seed": 1},
        seconds=1800.0,
        scale=70.0,
        x_header="poll (ms)",
        x_shown=lambda s: f"{s * 1000:g}",
        columns=("ttft_p50", "ttft_p99", "tgt_mean", "tgt_p99"),
        plot=("tgt_mean",),
        log_x=True,
        x_label="poll interval (s)",
    ),
    Sweep(
        "synthetic",
        f"Synthetic workloads: 33 req/s, lengths fitted to the conv trace (log-normal), "
        f"1 replica, {P8.name}",
        P8,
        "conv",
        [1.0, 4.0],
        "cv",
        ENGINE_POLICIES[:3],
        rate=33.0,
        note="Gamma-distributed gaps with the given CV (1: Poisson); 4,000 requests (600 with "
        "--quick), seed 0.",
        x_header="arrival CV",
        x_shown="{:g}".format,
        columns=("ttft_p50", "ttft_mean", "ttft_p99", "tgt_p50", "tgt_p99"),
        ratio=TTFT_X_FCFS,
    ),
    Sweep(
        "combined",
        f"LARRY and SAL together: code trace x90, 8 replicas, {P8.name}",
        P8,
        "code",
        [90.0],
        "scale",
        [
            (f"{engine} / {router}", {"admission": adm, "alpha": a, "router": router})
            for engine, adm, a in (
                ("fcfs", "fcfs", 1.0),
                ("larry a=0.1", "larry", 0.1),
                ("larry a=0.01", "larry", 0.01),
            )
            for router in ("round-robin", "sal")
        ],
        base={"replicas": 8, "seed": 1},
        seconds=1800.0,
        columns=("ttft_p50", "ttft_mean", "ttft_p99", "tgt_mean", "tgt_p99"),
    ),
]


# -- SCLS and its baselines: another simulator, compared by saturation throughput -----------------


def scls_part(b: Bench, profiles: Sequence[Profile], traces: Sequence[str], instances: int) -> None:
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
                ("SLS", partial(simulate_slices, jobs, SliceConfig(
                    profile, instances=instances, mode="sls", max_gen=max_gen))),
            ]  # fmt: skip
            for slice_len in (64, 128, 256, 512):
                cfg = SliceConfig(
                    profile, instances=instances, mode="scls", slice_len=slice_len, max_gen=max_gen
                )
                runs.append((f"SCLS S={slice_len}", partial(simulate_slices, jobs, cfg)))
            key = f"{profile.name}\n{name}"
            summaries = [(label, summarize(jobs, fn())) for label, fn in runs]
            sls_rps = dict(summaries)["SLS"].completed_rps
            for label, s in summaries:
                bars.setdefault(label.split(" (")[0], {})[key] = s.completed_rps
                vs_sls = f"{s.completed_rps / sls_rps:.2f}x" if sls_rps else "-"
                rows.append(
                    [
                        profile.name,
                        name,
                        label,
                        s.completed_rps,
                        s.output_tps,
                        s.ttft_p50,
                        s.tgt_p50,
                        vs_sls,
                    ]
                )
    header = ["profile", "trace", "scheduler", "served req/s", "output tok/s", "TTFT p50",
              "TGT p50", "vs SLS"]  # fmt: skip
    b.write(table(header, rows))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 3.8))
    labels = list(bars)
    keys = list(next(iter(bars.values())))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        heights = [bars[label].get(k, 0.0) for k in keys]
        ax.bar(np.arange(len(keys)) + i * width, heights, width, label=label)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, keys, fontsize=8)
    ax.set_ylabel("served req/s at saturation")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"SCLS vs baselines, {instances} instances")
    b.save(fig, "scls_throughput.png")


def speed_part(b: Bench) -> None:
    """Wall time of the simulator itself on the whole conv trace, 8 replicas behind SAL."""
    jobs = prepare(b.trace("conv"), max_model_len=P8.shape.max_model_len)
    if b.quick:
        jobs = jobs[:2000]
    b.write("\n## Simulator speed\n")
    rows: list[list[object]] = []
    for scale, admission, alpha in [(1.0, "fcfs", 1.0), (1.0, "larry", 0.1), (30.0, "fcfs", 1.0)]:
        scaled = [replace(j, arrival=j.arrival / scale) for j in jobs]
        cfg = ClusterConfig(P8, replicas=8, router="sal", admission=admission, alpha=alpha)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        res = simulate(scaled, cfg)
        wall = time.perf_counter() - t0
        rows.append(
            [f"conv, {len(jobs)} requests, x{scale:g}", admission, f"{wall:.1f}", sum(res.steps)]
        )
    b.write(table(["workload (8 replicas, SAL)", "engine", "wall (s)", "engine steps"], rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="short slices and fewer points")
    ap.add_argument("--only", nargs="+", choices=PARTS)
    ap.add_argument("--traces-dir", type=Path)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    b = Bench(args.out, args.quick, args.traces_dir, [])
    started = time.perf_counter()
    b.md.append(
        "# Simulator results\n\nGenerated by `python bench/report.py"
        + (" --quick" if args.quick else "")
        + "`. Models: see docs/simulator.md.\n"
    )
    parts = set(args.only or PARTS)
    if "speed" in parts:
        speed_part(b)
    for sweep in SWEEPS:
        if sweep.part in parts:
            run_sweep(b, sweep)
    if "scls" in parts:
        small_kv = replace(with_shape(P8, num_blocks=2048), name="h100-llama3-8b-kv32k")
        scls_part(b, [P8, P70, small_kv], ["conv", "code"], 4)
    b.md.append(f"\nTotal bench time: {time.perf_counter() - started:.0f} s.\n")
    name = "results.md" if not args.only else f"results-{'-'.join(sorted(parts))}.md"
    (args.out / name).write_text("\n".join(b.md) + "\n")
    print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
