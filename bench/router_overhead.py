"""Router overhead: the same load sent directly to a fake engine and through routers, side by side.

Starts (all on 127.0.0.1) one fake engine with zero service time, `halffull router` in front of
it, and, when installed, the Rust `vllm-router` from PyPI as an anchor; then, for each rate,
sends an open-loop Poisson stream of small non-streamed completions to each target in turn
(direct, halffull, vllm-router) and prints latency percentiles and the latency each router adds
(its percentile minus the direct one). Then a closed loop at fixed concurrency gives each
target's maximum requests/s. Everything shares this machine's cores: the load generator, the
engine and the router compete, which this table does not hide.

    .venv/bin/python bench/router_overhead.py                # rates 100,250,500 req/s, 5 s each
    .venv/bin/python bench/router_overhead.py --rates 500 --seconds 10 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BODY = {"model": "fake-model", "prompt": list(range(1, 33)), "max_tokens": 4}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    url: str
    popen: subprocess.Popen[bytes]


@contextlib.contextmanager
def started(name: str, cmd: list[str], url: str, health: str) -> Iterator[Proc]:
    log = Path(f"/tmp/bench-{name}-{os.getpid()}.log").open("wb")  # noqa: SIM115
    popen = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        import urllib.request

        while True:
            if popen.poll() is not None:
                raise RuntimeError(f"{name} exited with {popen.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(health, timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not become healthy; see {log.name}")
            time.sleep(0.2)
        yield Proc(name, url, popen)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
        log.close()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def open_loop(
    session: aiohttp.ClientSession, url: str, rate: float, seconds: float, seed: int
) -> tuple[list[float], int]:
    """Poisson arrivals at `rate`; latency measured from each request's scheduled time."""
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    lat: list[float] = []
    errors = 0

    async def one(at: float) -> None:
        nonlocal errors
        try:
            async with session.post(url + "/v1/completions", json=BODY) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
                    return
        except aiohttp.ClientError:
            errors += 1
            return
        lat.append(loop.time() - at)

    tasks = []
    start = loop.time() + 0.05
    t = start
    while t < start + seconds:
        delay = t - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(t)))
        t += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    return lat, errors


async def closed_loop(
    session: aiohttp.ClientSession, url: str, concurrency: int, seconds: float
) -> float:
    loop = asyncio.get_running_loop()
    done = 0
    end = loop.time() + seconds

    async def worker() -> None:
        nonlocal done
        while loop.time() < end:
            async with session.post(url + "/v1/completions", json=BODY) as r:
                await r.read()
                if r.status == 200:
                    done += 1

    t0 = loop.time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (loop.time() - t0)


async def measure(
    targets: list[Proc], rates: list[float], seconds: float, concurrency: int
) -> tuple[dict[tuple[str, float], tuple[list[float], int]], dict[str, float]]:
    results: dict[tuple[str, float], tuple[list[float], int]] = {}
    rps: dict[str, float] = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for t in targets:  # warm connections and code paths
            await open_loop(session, t.url, 100, 1.0, seed=0)
        for rate in rates:
            for i, t in enumerate(targets):
                results[(t.name, rate)] = await open_loop(session, t.url, rate, seconds, seed=i)
        for t in targets:
            rps[t.name] = await closed_loop(session, t.url, concurrency, seconds)
    return results, rps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="100,250,500")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--no-vllm-router", action="store_true")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]

    engine_port, router_port, admin_port, vr_port = (free_port() for _ in range(4))
    engine_url = f"http://127.0.0.1:{engine_port}"
    with contextlib.ExitStack() as stack:
        engine = stack.enter_context(
            started(
                "engine",
                [PY, "-m", "halffull.testing.fake_engine", "--port", str(engine_port)],
                engine_url,
                engine_url + "/health",
            )
        )
        engine.name = "direct"
        targets = [engine]
        halffull_bin = str(Path(PY).parent / "halffull")
        targets.append(
            stack.enter_context(
                started(
                    "halffull",
                    [
                        halffull_bin,
                        "router",
                        "--endpoint",
                        engine_url,
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(router_port),
                        "--admin-port",
                        str(admin_port),
                        "--log-level",
                        "WARNING",
                    ],
                    f"http://127.0.0.1:{router_port}",
                    f"http://127.0.0.1:{admin_port}/ready",
                )
            )
        )
        vr_bin = shutil.which("vllm-router", path=str(Path(PY).parent))
        vr_note = "not installed (pip install vllm-router)"
        if vr_bin and not args.no_vllm_router:
            try:
                targets.append(
                    stack.enter_context(
                        started(
                            "vllm-router",
                            [
                                vr_bin,
                                "--worker-urls",
                                engine_url,
                                "--host",
                                "127.0.0.1",
                                "--port",
                                str(vr_port),
                                "--policy",
                                "round_robin",
                                "--log-level",
                                "warning",
                                "--prometheus-port",
                                str(free_port()),
                            ],
                            f"http://127.0.0.1:{vr_port}",
                            f"http://127.0.0.1:{vr_port}/health",
                        )
                    )
                )
                vr_note = ""
            except RuntimeError as exc:
                vr_note = f"failed to start: {exc}"
        results, rps = asyncio.run(measure(targets, rates, args.seconds, args.concurrency))

    names = [t.name for t in targets]
    print(
        f"\n## Router overhead ({os.cpu_count()} cores shared by load generator, engine and "
        f"router; {args.seconds:g} s per cell; fake engine with zero service time)\n"
    )
    print("| rate req/s | target | n | errors | p50 ms | p99 ms | added p50 ms | added p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for rate in rates:
        d = results[("direct", rate)][0]
        for name in names:
            lat, errors = results[(name, rate)]
            p50, p99 = pct(lat, 0.5) * 1e3, pct(lat, 0.99) * 1e3
            add = (
                ""
                if name == "direct"
                else (f"{p50 - pct(d, 0.5) * 1e3:+.2f} | {p99 - pct(d, 0.99) * 1e3:+.2f}")
            )
            print(
                f"| {rate:g} | {name} | {len(lat)} | {errors} | {p50:.2f} | {p99:.2f} | "
                f"{add or ' | '} |"
            )
    print(f"\n| target | max req/s (closed loop, concurrency {args.concurrency}) |")
    print("|---|---|")
    for name in names:
        print(f"| {name} | {rps[name]:.0f} |")
    if vr_note:
        print(f"\nvllm-router: {vr_note}")
    mean_direct = statistics.fmean(results[("direct", rates[-1])][0] or [float("nan")])
    print(f"\n(direct mean latency at {rates[-1]:g} req/s: {mean_direct * 1e3:.2f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
