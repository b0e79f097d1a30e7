"""LARRY inside vLLM: `--scheduler-cls halffull.engine.scheduler.LarryScheduler`.

The plugin changes one thing in vLLM's scheduler: before each `schedule()` it puts the head of
the waiting queue in LARRY's order (the first requests up to the free sequence slots: vLLM admits
no more in one step). The waiting queue is vLLM's own queue class with LARRY's index mixed in
(`halffull.policy.larry_queue`), so each request's keys are computed once, when it enters.
Everything else (running requests first, token budget, chunked prefill, stopping at the first
waiting request that does not fit, preemption putting the victim back at the head of the queue)
is vLLM's own code. Under policy "fcfs" the queue is not touched at all, so
the engine behaves exactly like vanilla vLLM; the plugin stays loaded so that a policy change is
a file change, not a pod restart.

vLLM picks `AsyncScheduler` by itself when async scheduling is on (the GPU default) and uses the
configured class verbatim when one is given. `LarryScheduler` therefore resolves its base at
construction: it returns a `LarryAsyncScheduler` when the engine runs with async scheduling, so
one class path serves both modes (see docs/larry.md for the measurement behind this).

The interface is not public; it is written against vLLM 0.32.0 (pinned in pyproject.toml).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

from halffull.engine.config_watcher import ConfigWatcher
from halffull.engine.metrics import EngineMetrics
from halffull.policy.larry import KVCapacity
from halffull.policy.larry_queue import REFRESH_PER_STEP, IndexedDeque, Keys, WaitingIndex

logger = logging.getLogger("halffull.engine")

STATS_INTERVAL_S = 0.05
"""Seconds between updates of the gauges by the plugin's thread (the router polls about every
100 ms). The thread also checks the parameter file while the engine is idle, when vLLM does not
call `schedule()` at all."""


def _ensure_log_handler() -> None:
    # vLLM configures only its own logger tree; without a handler our INFO lines would vanish.
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s [%(name)s] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _vllm_config(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return kwargs["vllm_config"] if "vllm_config" in kwargs else args[0]


class LarryScheduler(Scheduler):
    """vLLM's scheduler with the waiting queue kept in LARRY's order."""

    def __new__(cls, *args: Any, **kwargs: Any) -> LarryScheduler:
        if cls is LarryScheduler and _vllm_config(args, kwargs).scheduler_config.async_scheduling:
            cls = LarryAsyncScheduler
        instance: LarryScheduler = super().__new__(cls)
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _ensure_log_handler()
        num_blocks = self.cache_config.num_gpu_blocks
        assert num_blocks, "vLLM sizes the KV cache before it builds the scheduler"
        self._larry_capacity = KVCapacity(block_size=self.block_size, num_blocks=num_blocks)
        self._larry_prefix = bool(self.cache_config.enable_prefix_caching)
        self._larry_groups = list(range(len(self.kv_cache_config.kv_cache_groups)))
        self.larry_reorders = 0
        """Steps at which the plugin changed the head of the queue (for tests and benchmarks)."""
        self.larry_prefix_hits = 0
        """Key computations that found some of a request's blocks in the prefix cache."""
        self._larry_watcher = ConfigWatcher.from_env()
        self._larry_metrics = EngineMetrics()
        self._larry_metrics.serve_from_env()
        if isinstance(self.waiting, deque):
            queue_cls = type("LarryRequestQueue", (IndexedDeque, type(self.waiting)), {})
            index: WaitingIndex[Request] = WaitingIndex(self._larry_keys)
            self.waiting = queue_cls(larry=index)
        else:
            logger.warning(
                "halffull scheduler: vLLM scheduling policy %r keeps its own queue order; "
                "LARRY stays off (use the default --scheduling-policy fcfs)",
                self.scheduler_config.policy,
            )
        self._larry_reordered = False
        self._larry_reloads_seen = 0
        self._larry_errors_seen = 0
        self.larry_clock: Callable[[], float] = time.time
        """Source of `now` for waiting times; the same clock as `Request.arrival_time`. A replay
        benchmark that runs the engine on its own clock substitutes it."""
        config = self._larry_watcher.current()
        self._sync_config_metrics()
        threading.Thread(target=self._larry_background, name="halffull-larry", daemon=True).start()
        self._larry_metrics.kv_capacity_tokens.set(
            self._larry_capacity.num_blocks * self._larry_capacity.block_size
        )
        self._larry_metrics.max_num_batched_tokens.set(self.scheduler_config.max_num_batched_tokens)
        logger.info(
            "halffull scheduler: %s loaded (base %s), KV %d blocks x %d tokens, %s",
            type(self).__name__,
            "AsyncScheduler" if isinstance(self, AsyncScheduler) else "Scheduler",
            self._larry_capacity.num_blocks,
            self._larry_capacity.block_size,
            config.describe(),
        )

    def _larry_keys(self, request: Request) -> Keys:
        """Arrival, KV blocks still needed (prompt and output to recompute, less what the prefix
        cache holds) and whether vLLM preempted it: computed when the request enters the queue."""
        tokens = request.num_tokens - self._larry_cached_tokens(request)
        blocks = -(-max(tokens, 0) // self._larry_capacity.block_size)
        return request.arrival_time, blocks, request.status == RequestStatus.PREEMPTED

    def _larry_cached_tokens(self, request: Request) -> int:
        """Tokens of `request`'s prompt whose KV blocks vLLM's prefix cache holds now: the
        longest run of its full-block hashes that the block pool finds, as vLLM's own lookup."""
        if not self._larry_prefix or not request.block_hashes:
            return 0
        pool, groups = self.kv_cache_manager.block_pool, self._larry_groups
        hit = 0
        for block_hash in request.block_hashes:
            if pool.get_cached_block(block_hash, groups) is None:
                break
            hit += 1
        if hit:
            self.larry_prefix_hits += 1
        return hit * self._larry_capacity.block_size

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        self._larry_reorder()
        return super().schedule(*args, **kwargs)

    def _larry_reorder(self) -> None:
        config = self._larry_watcher.current()
        waiting = self.waiting
        if not isinstance(waiting, IndexedDeque):
            return
        index = waiting.larry
        if config.policy == "fcfs":
            if self._larry_reordered:  # hand vLLM back its own order once
                self.waiting = type(waiting)(index.fcfs(), larry=index)
                self._larry_reordered = False
            return
        free_slots = self.max_num_active_reqs - len(self.running)
        if len(waiting) < 2 or free_slots <= 0:
            return  # nothing to order, or no request can be admitted in this step
        if self._larry_prefix:
            index.refresh(REFRESH_PER_STEP)
        # vLLM admits a request only if blocks for its whole uncached sequence are free (its
        # first chunk's, without scheduler_reserve_full_isl): if not even the smallest fits, the
        # order cannot matter in this step
        need = index.min_blocks() if self.scheduler_reserve_full_isl else 1
        if need > self.kv_cache_manager.block_pool.get_num_free_blocks():
            return
        head = index.select(
            policy=config.policy,
            now=self.larry_clock(),
            num_blocks=self._larry_capacity.num_blocks,
            alpha=config.alpha,
            max_wait=config.max_wait_seconds,
            k=free_slots,
        )
        if all(a is b for a, b in zip(head, waiting, strict=False)):
            return
        # A new queue object, swapped in whole: the plugin's thread may be reading the old one.
        self.waiting = type(waiting)(head + index.others(head), larry=index)
        self._larry_reordered = True
        self.larry_reorders += 1

    def _larry_background(self) -> None:
        while True:
            time.sleep(STATS_INTERVAL_S)
            try:
                self._larry_watcher.current()
                self._sync_config_metrics()
                self._update_engine_metrics()
            except Exception:  # never let a reporting bug take the engine down
                logger.exception("halffull scheduler: metrics update failed")
                time.sleep(10 * STATS_INTERVAL_S)

    def _sync_config_metrics(self) -> None:
        watcher, metrics = self._larry_watcher, self._larry_metrics
        metrics.set_config(watcher.config)
        if watcher.reloads > self._larry_reloads_seen:
            metrics.reloads.inc(watcher.reloads - self._larry_reloads_seen)
        if watcher.errors > self._larry_errors_seen:
            metrics.errors.inc(watcher.errors - self._larry_errors_seen)
        self._larry_reloads_seen, self._larry_errors_seen = watcher.reloads, watcher.errors

    def _update_engine_metrics(self) -> None:
        metrics = self._larry_metrics
        free_blocks = self.kv_cache_manager.block_pool.get_num_free_blocks()
        metrics.free_kv_tokens.set(free_blocks * self._larry_capacity.block_size)
        pending = 0
        # list() copies each container in one C call, safe against the scheduling thread.
        for queue in (self.waiting, self.kv_holding_waiting):
            for r in list(queue):  # a preempted request recomputes its output tokens too
                pending += max(r.num_tokens - r.num_computed_tokens, 0)
        for r in list(self.running):
            pending += max(r.num_prompt_tokens - r.num_computed_tokens, 0)
        metrics.waiting_prefill_tokens.set(pending)


class LarryAsyncScheduler(LarryScheduler, AsyncScheduler):
    """The same, over vLLM's async scheduler (chosen by `LarryScheduler` itself)."""
