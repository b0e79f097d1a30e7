"""Router overhead: the same load sent directly to a fake engine and through routers, side by side.

Starts (all on 127.0.0.1) one fake engine with zero service time, `halffull router` in front of
it, and, when installed, the Rust `vllm-router` from PyPI as an anchor; then, for each rate,
sends an open-loop Poisson stream of small non-streamed completions to each target in turn
(direct, halffull, vllm-router) and prints latency percentiles and the latency each router adds
(its percentile minus the direct one). Then a closed loop at fixed concurrency gives each
target's maximum requests/s. Everything shares this machine's cores: the load generator, the
engine and the router compete, which this table does not hide.

    .venv/bin/python bench/router_overhead.py                # rates 100,250,500 req/s, 6 s each
    .venv/bin/python bench/router_overhead.py --rates 500 --seconds 10 --concurrency 32

`halffull` is this checkout's router (its operator/ first on PYTHONPATH). `--also NAME=DIR` adds
another checkout's router as one more target, e.g. a baseline commit unpacked with
`git archive REV | tar -x -C /tmp/base`, so that a change is measured side by side with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from halffull_dev.cluster.controlplane import free_port
from halffull_dev.testing.rollout import wait_http_ok

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BODY = {"model": "fake-model", "prompt": list(range(1, 33)), "max_tokens": 4}


@dataclass
class Proc:
    name: str
    url: str
    popen: subprocess.Popen[bytes]


@contextlib.contextmanager
def started(
    name: str,
    cmd: list[str],
    url: str,
    health: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
) -> Iterator[Proc]:
    log = (log_dir / f"{name}.log").open("wb")
    popen = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
    )
    try:
        wait_http_ok(popen, health, f"{name} (log: {log.name})", interval_s=0.2)
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


def parse_also(value: str) -> tuple[str, Path]:
    name, sep, tree = value.partition("=")
    if not sep or not name or not (Path(tree) / "operator" / "halffull").is_dir():
        raise SystemExit(f"--also {value!r}: expected NAME=DIR with DIR/operator/halffull")
    return name, Path(tree).resolve()


def checkout_env(tree: Path) -> dict[str, str]:
    """The environment that makes `python -m halffull.cli` run `tree`'s code."""
    paths = [str(tree / "operator"), str(tree / "dev"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


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
) -> tuple[int, float]:
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
    return done, loop.time() - t0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Cell:
    latencies: list[float]
    errors: int = 0
    requests: int = 0
    cpu_s: float = 0.0  # CPU time of the target's own process (the router; the engine for direct)


async def measure(
    targets: list[Proc], rates: list[float], seconds: float, slice_s: float, concurrency: int
) -> tuple[dict[tuple[str, float], Cell], dict[str, float], dict[str, float]]:
    """Each rate runs for `seconds` per target, cut into `slice_s` slices that take turns across
    the targets, so that load from other processes on the machine falls on all of them alike."""
    cells = {(t.name, r): Cell([]) for t in targets for r in rates}
    rps: dict[str, float] = {}
    cpu_per_req: dict[str, float] = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for t in targets:  # warm connections and code paths
            await open_loop(session, t.url, 100, 1.0, seed=0)
        seed = 1
        for rate in rates:
            for _ in range(max(1, round(seconds / slice_s))):
                for t in targets:
                    cell = cells[(t.name, rate)]
                    c0 = cpu_seconds(t.popen.pid)
                    lat, errors = await open_loop(session, t.url, rate, slice_s, seed=seed)
                    cell.cpu_s += cpu_seconds(t.popen.pid) - c0
                    cell.latencies += lat
                    cell.errors += errors
                    cell.requests += len(lat) + errors
                    seed += 1
        done = dict.fromkeys((t.name for t in targets), 0.0)
        spent = dict.fromkeys((t.name for t in targets), 0.0)
        cpu = dict.fromkeys((t.name for t in targets), 0.0)
        for _ in range(max(1, round(seconds / slice_s))):
            for t in targets:
                c0 = cpu_seconds(t.popen.pid)
                n, elapsed = await closed_loop(session, t.url, concurrency, slice_s)
                cpu[t.name] += cpu_seconds(t.popen.pid) - c0
                done[t.name] += n
                spent[t.name] += elapsed
        for t in targets:
            rps[t.name] = done[t.name] / spent[t.name]
            cpu_per_req[t.name] = cpu[t.name] / max(1.0, done[t.name])
    return cells, rps, cpu_per_req


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="100,250,500")
    ap.add_argument("--seconds", type=float, default=6.0, help="per rate and target")
    ap.add_argument("--slice", type=float, default=1.0, help="seconds per turn")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--no-vllm-router", action="store_true")
    ap.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="another checkout's router as one more target (DIR holds its operator/)",
    )
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]

    engine_port, vr_port = free_port(), free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="router-overhead-"))
    engine_url = f"http://127.0.0.1:{engine_port}"
    with contextlib.ExitStack() as stack:
        engine = stack.enter_context(
            started(
                "engine",
                [PY, "-m", "halffull_dev.testing.fake_engine", "--port", str(engine_port)],
                engine_url,
                engine_url + "/health",
                log_dir,
                env=checkout_env(ROOT),
            )
        )
        engine.name = "direct"
        targets = [engine]
        routers = [("halffull", ROOT), *(parse_also(a) for a in args.also)]
        for name, tree in routers:
            port, admin = free_port(), free_port()
            targets.append(
                stack.enter_context(
                    started(
                        name,
                        [
                            *(PY, "-m", "halffull.cli", "router", "--endpoint", engine_url),
                            *("--host", "127.0.0.1", "--port", str(port)),
                            *("--admin-port", str(admin), "--log-level", "WARNING"),
                        ],
                        f"http://127.0.0.1:{port}",
                        f"http://127.0.0.1:{admin}/ready",
                        log_dir,
                        env=checkout_env(tree),
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
                            log_dir,
                        )
                    )
                )
                vr_note = ""
            except RuntimeError as exc:
                vr_note = f"failed to start: {exc}"
        load_before = os.getloadavg()[0]
        cells, rps, cpu = asyncio.run(
            measure(targets, rates, args.seconds, args.slice, args.concurrency)
        )
        load_after = os.getloadavg()[0]

    names = [t.name for t in targets]
    print(
        f"\n## Router overhead ({os.cpu_count()} cores shared by the load generator, the engine "
        f"and the router; {args.seconds:g} s per cell in {args.slice:g} s slices taking turns; "
        f"fake engine with zero service time; 1-minute load average {load_before:.1f} before, "
        f"{load_after:.1f} after)\n"
    )
    print(
        "| rate req/s | target | n | errors | p50 ms | p99 ms | added p50 ms | added p99 ms "
        "| process CPU ms/req |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for rate in rates:
        d = cells[("direct", rate)].latencies
        for name in names:
            c = cells[(name, rate)]
            p50, p99 = pct(c.latencies, 0.5) * 1e3, pct(c.latencies, 0.99) * 1e3
            if name == "direct":
                add = " | "
            else:
                add = f"{p50 - pct(d, 0.5) * 1e3:+.2f} | {p99 - pct(d, 0.99) * 1e3:+.2f}"
            per_req = c.cpu_s / max(1, c.requests) * 1e3
            print(
                f"| {rate:g} | {name} | {len(c.latencies)} | {c.errors} | {p50:.2f} | {p99:.2f} "
                f"| {add} | {per_req:.3f} |"
            )
    print(
        f"\n| target | max req/s (closed loop, concurrency {args.concurrency}) "
        "| process CPU ms/req at max |"
    )
    print("|---|---|---|")
    for name in names:
        print(f"| {name} | {rps[name]:.0f} | {cpu[name] * 1e3:.3f} |")
    print(
        "\n`direct` rows: the CPU column is the fake engine's; router rows: the router's own "
        "process (the engine's CPU is spent as well)."
    )
    if vr_note:
        print(f"\nvllm-router: {vr_note}")
    mean_direct = statistics.fmean(cells[("direct", rates[-1])].latencies or [float("nan")])
    print(f"\n(direct mean latency at {rates[-1]:g} req/s: {mean_direct * 1e3:.2f} ms)")
    if not vr_note.startswith("failed"):  # keep the logs of a failed start
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
