"""LARRY inside vLLM: `--scheduler-cls halffull.engine.scheduler.LarryScheduler`.

The plugin changes one thing in vLLM's scheduler: before each `schedule()` it points the head of
the waiting queue at LARRY's first requests (up to the free sequence slots: vLLM admits no more
in one step), which the queue serves first during that `schedule()`. The waiting queue is an
implementation of vLLM's `RequestQueue` interface over `halffull.policy.larry_queue` (FIFO
between steps, as vLLM's `FCFSRequestQueue`), so each request's keys are computed once, when it
enters; its uncached blocks follow vLLM's prefix cache through `halffull.engine.prefix_events`.
Everything else (running requests first, token budget, chunked prefill, stopping at the first
waiting request that does not fit, preemption putting the victim back at the head of the queue)
is vLLM's own code. Under policy "fcfs" no head is set, so the engine behaves exactly like
vanilla vLLM; the plugin stays loaded so that a policy change is a file change, not a pod
restart.

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
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from vllm.v1.core.kv_cache_utils import BlockHash
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.request_queue import FCFSRequestQueue, RequestQueue
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

from halffull.engine.config_watcher import ConfigWatcher
from halffull.engine.metrics import EngineMetrics
from halffull.engine.prefix_events import BlockPoolEvents, GroupKeys
from halffull.policy.larry import KVCapacity
from halffull.policy.larry_fifo import WaitingQueue
from halffull.policy.larry_prefix import PrefixWatch
from halffull.policy.larry_queue import Keys, WaitingIndex

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
        # the block hashes are per block only when the hash block is the KV block (a model
        # whose KV cache groups have other block sizes is keyed without its cached prefix)
        self._larry_prefix = bool(self.cache_config.enable_prefix_caching)
        if self._larry_prefix and getattr(self, "hash_block_size", self.block_size) != (
            self.block_size
        ):
            self._larry_prefix = False
            logger.warning(
                "halffull scheduler: hash blocks differ from KV blocks; mem(r) ignores the "
                "prefix cache on this engine"
            )
        self._larry_groups = list(range(len(self.kv_cache_config.kv_cache_groups)))
        self._larry_group_keys = len(self._larry_groups) == 1
        """One KV cache group: the watch is keyed by the prefix-cache map's own keys (see
        `halffull.engine.prefix_events.GroupKeys`), which its hook tests as they come."""
        self.larry_reorders = 0
        """Steps at which LARRY's first request was not vLLM's (for tests and benchmarks)."""
        self.larry_prefix_rekeys = 0
        """Steps at which prefix-cache changes re-keyed some waiting request."""
        self._larry_watcher = ConfigWatcher.from_env()
        self._larry_metrics = EngineMetrics()
        self._larry_metrics.serve_from_env()
        self._larry_queue: LarryRequestQueue | None = None
        self._larry_events: BlockPoolEvents | None = None
        if isinstance(self.waiting, FCFSRequestQueue):
            prefix = None
            if self._larry_prefix:
                watch: PrefixWatch[bytes] = PrefixWatch(self._larry_cached)
                pool = self.kv_cache_manager.block_pool
                self._larry_events = BlockPoolEvents(pool, watch, group_keys=self._larry_group_keys)
                prefix = (watch, self._larry_hashes)
            index: WaitingIndex[Request] = WaitingIndex(self._larry_keys, prefix=prefix)
            self._larry_queue = LarryRequestQueue(index)
            self.waiting = self._larry_queue
        else:
            logger.warning(
                "halffull scheduler: vLLM scheduling policy %r keeps its own queue order; "
                "LARRY stays off (use the default --scheduling-policy fcfs)",
                self.scheduler_config.policy,
            )
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

    @property
    def larry_prefix_hits(self) -> int:
        """Key computations that found some of a request's blocks in the prefix cache."""
        return self._larry_events.watch.hits if self._larry_events is not None else 0

    def _larry_keys(self, request: Request) -> Keys:
        """Arrival, KV blocks its tokens fill (prompt and output to recompute; the index
        subtracts the cached prefix) and whether vLLM preempted it: computed when it enters."""
        blocks = -(-request.num_tokens // self._larry_capacity.block_size)
        return request.arrival_time, blocks, request.status == RequestStatus.PREEMPTED

    def _larry_hashes(self, request: Request) -> Sequence[bytes]:
        """The block hashes a prefix-cache hit can cover: vLLM looks up at most
        `num_tokens - 1` tokens (it recomputes the last one for its logits). With one KV cache
        group, as the map's keys of that group."""
        n = (request.num_tokens - 1) // self._larry_capacity.block_size
        if self._larry_group_keys:
            return GroupKeys(request.block_hashes, n)
        return request.block_hashes[:n]

    def _larry_cached(self, block_hash: bytes) -> bool:
        """Whether vLLM's prefix cache holds this block, in every KV cache group (with one
        group, `block_hash` is already that group's key: `BlockPool.get_cached_block`'s own
        lookup, without making the key)."""
        pool = self.kv_cache_manager.block_pool
        if self._larry_group_keys:
            key: Any = block_hash  # a BlockHashWithGroupId already
            return pool.cached_block_hash_to_block.get_one_block(key) is not None
        return pool.get_cached_block(BlockHash(block_hash), self._larry_groups) is not None

    def larry_fresh_blocks(self, request: Request) -> int:
        """The blocks `request` needs, looked up now (what the index keeps current by events;
        for tests and `bench/larry_staleness.py`)."""
        hit = 0
        if self._larry_prefix:
            for block_hash in self._larry_hashes(request):
                if not self._larry_cached(block_hash):
                    break
                hit += 1
        return self._larry_keys(request)[1] - hit

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        queue = self._larry_queue
        if queue is None:
            return super().schedule(*args, **kwargs)
        self._larry_reorder(queue)
        try:
            return super().schedule(*args, **kwargs)
        finally:
            queue.clear_head()  # between steps the queue is vLLM's FIFO

    def _larry_reorder(self, queue: LarryRequestQueue) -> None:
        """Point the queue's head at LARRY's first requests for this step, unless nothing
        could be admitted."""
        watcher = self._larry_watcher
        watch = watcher.watch  # the file is checked once per interval: between, a clock read
        if watch is not None and watcher.clock() >= watch.next_check:
            watcher.current()
        config = watcher.config
        if config.policy == "fcfs":
            return
        free_slots = self.max_num_active_reqs - len(self.running)
        index = queue.larry
        if len(index) < 2 or free_slots <= 0:
            return  # nothing to order, or no request can be admitted in this step
        events = self._larry_events
        if events is not None:
            events.sync()
            if index.settle():
                self.larry_prefix_rekeys += 1
        # vLLM admits a request only if blocks for its whole uncached sequence are free (its
        # first chunk's, without scheduler_reserve_full_isl): if not even the smallest fits, the
        # order cannot matter in this step
        free_blocks = self.kv_cache_manager.block_pool.get_num_free_blocks()
        if free_blocks < (index.min_blocks() if self.scheduler_reserve_full_isl else 1):
            return
        head = index.select(
            policy=config.policy,
            now=self.larry_clock(),
            num_blocks=self._larry_capacity.num_blocks,
            alpha=config.alpha,
            max_wait=config.max_wait_seconds,
            k=free_slots,
        )
        queue.set_head(head)
        if head and queue.fifo_first() is not head[0]:
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


class LarryRequestQueue(WaitingQueue[Request], RequestQueue):
    """LARRY's waiting queue behind vLLM's `RequestQueue` interface (what vLLM's scheduler
    calls on `self.waiting`). FIFO between steps, exactly as vLLM's `FCFSRequestQueue`."""

    def add_request(self, request: Request) -> None:
        self.append(request)

    def pop_request(self) -> Request:
        return self.popleft()

    def peek_request(self) -> Request:
        return self.peek()

    def prepend_request(self, request: Request) -> None:
        self.appendleft(request)

    def prepend_requests(self, requests: Iterable[Request]) -> None:
        self.extendleft(requests)

    def remove_request(self, request: Request) -> None:
        self.remove(request)

    def remove_requests(self, requests: Iterable[Request]) -> None:
        for request in requests:
            self.discard(request)

    def __bool__(self) -> bool:
        return len(self.larry) > 0

    def __len__(self) -> int:
        return len(self.larry)

    def __iter__(self) -> Iterator[Request]:
        return WaitingQueue.__iter__(self)


class LarryAsyncScheduler(LarryScheduler, AsyncScheduler):
    """The same, over vLLM's async scheduler (chosen by `LarryScheduler` itself)."""
