"""Sustained load while an engine dies and the router is rolled, on processes (loopback).

Three fake engines, routers behind a kube-proxy stand-in (`halffull_dev.testing.rollout`),
open-loop Poisson load (half streamed). During the run one engine is killed (SIGKILL) and the
router is rolled twice (new router ready, then SIGTERM to the old one). Prints each outcome's
count and checks the goal: no failed request that had not started, no stream cut without
`[DONE]` or an in-band error event.

    .venv/bin/python bench/router_rollout.py                    # 200 req/s for 60 s
    .venv/bin/python bench/router_rollout.py --rate 50 --seconds 12
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path

from halffull_dev.testing.rollout import (
    Balancer,
    LoadReport,
    Proc,
    cleanup,
    open_loop,
    start_engine,
    start_router,
)


async def scenario(
    rate: float, seconds: float, log_dir: Path, router_args: tuple[str, ...], engines_n: int = 3
) -> LoadReport:
    procs: list[Proc] = []
    with cleanup(procs):
        engines = [
            start_engine(
                f"engine-{i}",
                log_dir,
                "--time-scale",
                "1",
                "--step-ms",
                "10",
                "--seq-ms",
                "0.05",
            )
            for i in range(engines_n)
        ]
        procs += engines
        old = start_router("router-0", engines, log_dir, *router_args)
        procs.append(old)
        lb = Balancer()
        lb.add(old)
        await lb.start()
        await lb.wait_ready(old)
        try:
            t0 = time.monotonic()
            load = asyncio.create_task(open_loop(lb.url, rate, seconds))
            await asyncio.sleep(seconds * 0.25)
            engines[-1].signal(signal.SIGKILL)
            print(f"t={time.monotonic() - t0:.1f}s: killed {engines[-1].name}", flush=True)
            for n, at in ((1, 0.5), (2, 0.75)):
                await asyncio.sleep(max(0.0, t0 + seconds * (at - 0.05) - time.monotonic()))
                new = await asyncio.to_thread(
                    start_router, f"router-{n}", engines, log_dir, *router_args
                )
                procs.append(new)
                lb.add(new)
                await lb.wait_ready(new)
                old.signal(signal.SIGTERM)
                print(
                    f"t={time.monotonic() - t0:.1f}s: rolled {old.name} -> {new.name}", flush=True
                )
                retiring = old
                old = new
                asyncio.get_running_loop().call_later(5, lb.remove, retiring)
            report = await load
        finally:
            await lb.stop()
        print(f"balancer refused {lb.refused} connections (no ready router)")
        return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--logs", type=Path, help="keep the processes' logs here")
    ap.add_argument(
        "--router-args",
        default="--shutdown-delay 1 --drain-grace 30",
        help="extra flags of every router (the default shortens the drain delay to 1 s)",
    )
    args = ap.parse_args()
    log_dir = args.logs or Path(tempfile.mkdtemp(prefix="router-rollout-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    report = asyncio.run(
        scenario(args.rate, args.seconds, log_dir, tuple(args.router_args.split()))
    )
    print(f"\n{len(report.outcomes)} requests at {args.rate:g} req/s for {args.seconds:g} s")
    for kind, n in sorted(report.counts().items()):
        print(f"  {kind:<20} {n}")
    bad = report.failed_not_started()
    cut = report.cut_streams()
    print(f"failed before reaching an engine: {len(bad)}; streams cut silently: {len(cut)}")
    start = min((o.sent_at for o in report.outcomes), default=0.0)
    by_second = Counter(int(o.sent_at - start) for o in bad + cut)
    if by_second:
        print("failures by the second they were sent in: "
              + ", ".join(f"t={t}s: {n}" for t, n in sorted(by_second.items())))  # fmt: skip
    for o in (bad + cut)[:10]:
        print(f"  {o.kind}: {o.detail[:160]}")
    print(f"logs: {log_dir}")
    return 0 if not bad and not cut else 1


if __name__ == "__main__":
    raise SystemExit(main())
