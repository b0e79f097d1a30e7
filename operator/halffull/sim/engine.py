"""One modelled vLLM replica: continuous batching over a paged KV cache, in simulated time.

What is modelled, after vLLM 0.32's v1 scheduler (see docs/simulator.md for what is not):

- A step serves the running requests first, in order, each with the tokens it still needs
  (a prompt chunk, a recomputation, or one decode token), within `max_num_batched_tokens`
  (chunked prefill). KV blocks are allocated for the step's tokens before it runs; when they
  run out, the last running request is preempted (its blocks freed, its progress dropped: it is
  recomputed later) and put back at the head of the waiting queue, until the request fits or
  is itself the victim.
- Then, only if nothing was preempted in this step, waiting requests are admitted in queue
  order while the token budget, `max_num_seqs` and the free blocks allow; a request is admitted
  only when blocks for its whole sequence so far (prompt, plus output to recompute) are free
  (vLLM 0.32's `scheduler_reserve_full_isl`), though only its first chunk is allocated;
  admission stops at the first request that does not fit (head-of-line blocking, as in vLLM).
- The queue order comes from the admission policy: `fcfs` (vLLM's deque, untouched), `larry` and
  `larry-literal` (the production `halffull.policy.larry_queue` index and head selection, exactly
  as the engine plugin uses them before every step), or `sjf-oracle` (shortest output first,
  knowing output lengths: a reference bound, not a product feature).
- A request produces its first token in the step that completes its prompt, then one token per
  step; it finishes after its `output` tokens.
- Automatic prefix caching (on by default in vLLM 0.32) for requests that carry prefix hashes
  (`SimRequest.keys`; see `halffull.sim.kvcache`): at admission the longest cached run of the
  prompt's full blocks, at most `prompt - 1` tokens (vLLM recomputes the last token for its
  logits), counts as computed; those blocks are shared, not allocated, and the admission check
  counts only the rest, plus the cached blocks it takes back from the free queue. Requests
  without hashes (the Azure traces) share nothing, and the model is then exactly the one without
  a cache.

Driving it: a caller owns the clock. `add(req, now)` queues a request, `plan(now)` forms the next
step and says when it ends, `complete()` applies it then and reports which requests got tokens,
first tokens and finishes; `abort(req)` drops a request (between steps, as vLLM does). The
simulator (`cluster.py`) runs it on a simulated clock; the fake engine of the dev tools
(`halffull_dev.testing.fake_engine`) runs it on the event loop's clock with `fast=False`, one step
at a time, so that a stream gets one token per step. The counters (`prompt_tokens_total`,
`generation_tokens_total`, `num_preemptions`, `prefix_queries_total`, `prefix_hits_total`) and
each request's `scheduled_at` are what its /metrics report.

Speed: a decode-only step whose queue cannot admit anything repeats itself until a request
finishes, the KV cache would run out, or something arrives. The replica then plans that run of
identical steps at once (a "stretch"), computes its step times with numpy, and cuts it short
when a request arrives. The result is the same as stepping one by one (tests check this).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from halffull.policy.larry import KVCapacity
from halffull.policy.larry_fifo import WaitingQueue
from halffull.policy.larry_prefix import PrefixWatch
from halffull.policy.larry_queue import Keys, WaitingIndex
from halffull.sim.kvcache import BlockPool
from halffull.sim.profiles import EngineShape, FloatArray, StepModel, attended_pairs

AdmissionPolicy = Literal["fcfs", "larry", "larry-literal", "sjf-oracle"]
ADMISSION_POLICIES: tuple[AdmissionPolicy, ...] = ("fcfs", "larry", "larry-literal", "sjf-oracle")

MAX_STRETCH = 4096
"""Most steps planned at once."""


@dataclass(slots=True, eq=False)
class SimRequest:
    rid: int
    arrival: float
    prompt: int
    output: int
    computed: int = 0
    """Tokens whose KV entries are computed."""
    generated: int = 0
    blocks: int = 0
    first_token_at: float = -1.0
    finished_at: float = -1.0
    scheduled_at: float = -1.0
    """When it was first admitted (its queue time ends there)."""
    aborted: bool = False
    preemptions: int = 0
    replica: int = -1
    keys: list[int] | None = None
    """Keys of the prompt's full blocks (chained prefix hashes), None: nothing to share."""
    held: list[int] = field(default_factory=list)
    """Keys of the leading blocks this request holds (ANONYMOUS: not registered); its other
    `blocks - len(held)` blocks are anonymous."""
    cached_tokens: int = 0
    """Prompt tokens found in the prefix cache at its first admission."""
    hit_memo: tuple[int, int, int] = (-1, -1, 0)
    """(pool evictions, pool version, hit blocks) of the last cache lookup."""

    @property
    def to_compute(self) -> int:
        return self.prompt + self.generated - self.computed


OrderFn = Callable[[list[SimRequest], float], list[int]]


def make_order(policy: AdmissionPolicy) -> OrderFn | None:
    """The full-queue ordering function of `sjf-oracle` (None for the others: `fcfs` keeps
    vLLM's deque; the LARRY policies order the head through the queue's index)."""
    if policy in ("fcfs", "larry", "larry-literal"):
        return None
    if policy == "sjf-oracle":

        def sjf(waiting: list[SimRequest], now: float) -> list[int]:
            return sorted(
                range(len(waiting)),
                key=lambda i: (waiting[i].preemptions == 0, waiting[i].output, i),
            )

        return sjf
    raise ValueError(f"unknown admission policy {policy!r}; known: {ADMISSION_POLICIES}")


@dataclass(slots=True)
class StepResult:
    produced: list[SimRequest]
    """Requests that got tokens: `steps` each (1, or the length of a stretch)."""
    first_tokens: list[SimRequest]
    finished: list[SimRequest]
    steps: int = 1


class Replica:
    """One engine. `plan(now)` forms the next step (or stretch of steps) and returns when it
    ends (None when idle); `complete()` applies it at that time. `add` queues a request and, if
    a stretch is running, returns its new (earlier) end time."""

    def __init__(
        self,
        shape: EngineShape,
        model: StepModel,
        *,
        policy: AdmissionPolicy = "fcfs",
        alpha: float = 1.0,
        max_wait: float = 0.0,
        index: int = 0,
        fast: bool = True,
    ) -> None:
        self.shape = shape
        self.model = model
        self.index = index
        self.fast = fast
        self.capacity = KVCapacity(block_size=shape.block_size, num_blocks=shape.num_blocks)
        self.policy = policy
        self._order = make_order(policy)
        self.prefix_caching = False
        """True when `cached_prefix_blocks` models a prefix cache (see there)."""
        self._larry = policy if policy in ("larry", "larry-literal") else None
        self._alpha = alpha
        self._max_wait = max_wait
        self.running: list[SimRequest] = []
        self.pool = BlockPool(shape.num_blocks)
        self.waiting: deque[SimRequest] | WaitingQueue[SimRequest] = deque()
        if self._larry:
            # the plugin's index and event-driven uncached blocks, fed by this cache model
            watch: PrefixWatch[int] = PrefixWatch(self.pool.holds)
            self.pool.listener = watch
            keys = WaitingIndex(self._larry_keys, prefix=(watch, self._larry_hashes))
            self.waiting = WaitingQueue(keys)
        self.num_preemptions = 0
        self.steps = 0
        self.busy_s = 0.0
        self.max_used_blocks = 0
        self.max_step_tokens = 0
        self.prompt_tokens_total = 0
        """Prompt tokens computed (recomputation after a preemption included)."""
        self.generation_tokens_total = 0
        self.prefix_queries_total = 0
        """Tokens looked up in the prefix cache at admission (vLLM's prefix_cache_queries)."""
        self.prefix_hits_total = 0
        """Of those, tokens found cached (vLLM's prefix_cache_hits)."""
        self.aborted_total = 0
        self._aborting: list[SimRequest] = []
        # the planned step or stretch
        self._sched: list[tuple[SimRequest, int]] = []
        self._start = 0.0
        self._ends: FloatArray | None = None
        self._k = 0
        self.end_at: float | None = None

    # -- what a poll of /metrics would read --------------------------------------------------

    @property
    def used_blocks(self) -> int:
        """Blocks held by requests (shared prefix blocks once; cached free blocks not)."""
        return self.pool.used

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def used_blocks_at(self, now: float) -> int:
        """Blocks in use at `now`, counting the growth of a stretch in progress."""
        if self._ends is None or self._k <= 1:
            return self.used_blocks
        started = min(self._k, int(np.searchsorted(self._ends, now, side="right")) + 1)
        bs = self.shape.block_size
        # blocks were allocated for the stretch's first step; each later step started adds more
        extra = 0
        for req, _ in self._sched:
            extra += -(-(req.computed + started) // bs) - req.blocks
        return self.used_blocks + extra

    def kv_usage_at(self, now: float) -> float:
        return self.used_blocks_at(now) / self.shape.num_blocks

    # -- what the LARRY plugin's gauges would read (`halffull.engine.metrics`) ----------------

    def free_kv_tokens_at(self, now: float) -> int:
        """`halffull_engine_free_kv_tokens`: free blocks (cached-but-unused ones included, as
        in vLLM's block pool) times the block size."""
        return (self.shape.num_blocks - self.used_blocks_at(now)) * self.shape.block_size

    @property
    def waiting_prefill_tokens(self) -> int:
        """`halffull_engine_waiting_prefill_tokens`, counted as the plugin counts vLLM's
        requests: every waiting request's tokens not yet computed (a preempted one recomputes
        its output too) plus the running requests' prompt tokens not yet computed. vLLM counts
        a step's tokens as computed when it schedules the step, so the step in progress is
        already done here."""
        pending = sum(r.prompt + r.generated - r.computed for r in self.waiting)
        for req in self.running:
            left = req.prompt - req.computed
            if left > 0:
                pending += left
        for req, tokens in self._sched:  # every scheduled request is a running one
            left = req.prompt - req.computed
            if left > 0:
                pending -= min(tokens, left)
        return pending

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- the prefix cache ----------------------------------------------------------------------

    def cached_prefix_blocks(self, req: SimRequest) -> int:
        """How many of a waiting request's prompt blocks this replica's prefix cache holds now:
        the hit vLLM would take if it admitted the request at this instant (the longest cached
        run of its full prompt blocks, at most `prompt + generated - 1` tokens). 0 for requests
        without prefix hashes. Cheap to call every step: it resumes from the last lookup when
        nothing was evicted since."""
        keys = req.keys
        if not keys:
            return 0
        pool = self.pool
        evictions, version, hit = req.hit_memo
        if evictions == pool.evictions and version == pool.version:
            return hit
        limit = min(len(keys), (req.prompt + req.generated - 1) // self.shape.block_size)
        if evictions == pool.evictions:  # only registrations since: the hit can only grow
            hit += pool.lookup(keys[hit:limit], limit - hit)
        else:
            hit = pool.lookup(keys, limit)
        req.hit_memo = (pool.evictions, pool.version, hit)
        return hit

    def blocks_to_admit(self, req: SimRequest) -> int:
        """Free blocks a waiting request needs to be admitted (vLLM 0.32's full-sequence check,
        `full_sequence_must_fit`): its whole sequence so far, less its cached prefix, plus the
        cached blocks it would take back from the free queue."""
        total = -(-(req.prompt + req.generated) // self.shape.block_size)
        hit = self.cached_prefix_blocks(req)
        if hit == 0:
            return total
        assert req.keys is not None
        return total - hit + self.pool.evictable(req.keys[:hit])

    # -- arrivals ----------------------------------------------------------------------------

    def add(self, req: SimRequest, now: float) -> float | None:
        """Queue a request. Returns the new end of the planned work when a stretch was cut
        short (the caller reschedules), else None."""
        if req.prompt + req.output > self.shape.max_model_len:
            raise ValueError(
                f"request {req.rid}: prompt {req.prompt} + output {req.output} exceeds "
                f"max_model_len {self.shape.max_model_len}"
            )
        req.replica = self.index
        if req.keys:  # prefix hashes: LARRY's mem(r) must follow what the cache holds
            self.prefix_caching = True
        self.waiting.append(req)
        if self._ends is not None and self._k > 1:
            done = int(np.searchsorted(self._ends, now, side="right"))
            k = min(self._k, done + 1)
            if k < self._k:
                self._k = k
                self.end_at = float(self._ends[k - 1])
                return self.end_at
        return None

    def abort(self, req: SimRequest) -> bool:
        """Drop a request that has not finished; False if it finished or was already aborted.

        A request in the step being computed leaves when that step completes (vLLM, too, handles
        aborts between steps): it gets no more tokens, and its blocks are freed then."""
        if req.finished_at >= 0 or req.aborted or req.replica != self.index:
            return False
        req.aborted = True
        self.aborted_total += 1
        if any(r is req for r, _ in self._sched):
            self._aborting.append(req)
            return True
        if req in self.running:
            self.running.remove(req)
        else:
            self.waiting.remove(req)
        self._release(req)
        return True

    def _drop_aborted(self, result: StepResult) -> None:
        gone = set(map(id, self._aborting))
        self.running = [r for r in self.running if id(r) not in gone]
        for req in self._aborting:
            if req.finished_at < 0:  # a finished one was released by complete()
                self._release(req)
            req.finished_at = -1.0  # it did not finish, even if this step gave its last token
        for kept in (result.produced, result.first_tokens, result.finished):
            kept[:] = [r for r in kept if id(r) not in gone]
        self._aborting = []

    # -- one step ----------------------------------------------------------------------------

    def _grow(self, req: SimRequest, tokens: int) -> bool:
        bs = self.shape.block_size
        need = -(-(req.computed + tokens) // bs) - req.blocks
        if need > 0:
            if need > self.pool.free:
                return False
            self.pool.allocate(need)
            req.blocks += need
        keys = req.keys
        if keys:
            # blocks this step fills are cached now, as vLLM's cache_blocks does at scheduling
            held = req.held
            full = min(len(keys), (req.computed + tokens) // bs)
            if full > len(held):
                self.pool.register_all(keys[len(held) : full], held)
        return True

    def _release(self, req: SimRequest) -> None:
        self.pool.release(req.held, req.blocks - len(req.held))
        req.held = []
        req.blocks = 0

    def _admit_cached(self, req: SimRequest) -> None:
        """Take the prefix cache hit of a request being admitted."""
        hit = self.cached_prefix_blocks(req)
        self.prefix_queries_total += req.prompt + req.generated
        if hit == 0:
            return
        assert req.keys is not None and req.blocks == 0
        keys = req.keys[:hit]
        self.pool.touch(keys)
        req.held = keys
        req.blocks = hit
        req.computed = hit * self.shape.block_size
        self.prefix_hits_total += req.computed
        if req.preemptions == 0:
            req.cached_tokens = req.computed

    def _preempt(self, victim: SimRequest) -> None:
        self._release(victim)
        victim.computed = 0
        victim.preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(victim)

    def plan(self, now: float) -> float | None:
        """Form the next step at `now`; returns when it (or the stretch) ends, None if idle."""
        shape = self.shape
        budget = shape.max_num_batched_tokens
        sched: list[tuple[SimRequest, int]] = []
        preempted = False
        all_decode = True
        running = self.running
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            tokens = min(req.to_compute, budget)
            scheduled = True
            while not self._grow(req, tokens):
                victim = running.pop()
                self._preempt(victim)
                preempted = True
                if victim is req:
                    scheduled = False
                    break
            if not scheduled:
                break
            if not (tokens == 1 and req.generated > 0):
                all_decode = False
            sched.append((req, tokens))
            budget -= tokens
            i += 1
        admitted = False
        if not preempted and self.waiting and budget > 0 and len(running) < shape.max_num_seqs:
            if len(self.waiting) >= 2 and self._may_admit(budget):
                self._reorder(now)
            waiting = self.waiting
            while waiting and budget > 0 and len(running) < shape.max_num_seqs:
                req = waiting.peek() if isinstance(waiting, WaitingQueue) else waiting[0]
                # vLLM 0.32 admits only when the whole sequence so far fits
                # (scheduler_reserve_full_isl, on by default), then allocates the chunk
                if self.blocks_to_admit(req) > self.pool.free:
                    break
                self._admit_cached(req)
                tokens = min(req.to_compute, budget)
                if not self._grow(req, tokens):
                    raise AssertionError("a chunk did not fit after the full-sequence check")
                waiting.popleft()
                running.append(req)
                if req.scheduled_at < 0:
                    req.scheduled_at = now
                sched.append((req, tokens))
                budget -= tokens
                admitted = True
            if isinstance(waiting, WaitingQueue):
                waiting.clear_head()  # between steps the queue is the FIFO, as in the plugin
        self._sched = sched
        if not sched:
            self._ends = None
            self.end_at = None
            return None
        self.max_used_blocks = max(self.max_used_blocks, self.used_blocks)
        self.max_step_tokens = max(self.max_step_tokens, shape.max_num_batched_tokens - budget)
        self._start = now
        if (
            self.fast
            and all_decode
            and not admitted
            and not preempted
            and len(sched) == len(running)
        ):
            return self._plan_stretch(now)
        prefill = decode = ctx = 0
        attended = 0.0
        for req, tokens in sched:
            ctx += req.computed + tokens
            if tokens == 1 and req.generated > 0:
                decode += 1
                attended += req.computed + 1
            else:
                prefill += tokens
                attended += attended_pairs(req.computed, tokens)
        duration = self.model.step(prefill, decode, ctx, attended, len(sched))
        self._ends = None
        self._k = 1
        self.end_at = now + duration
        return self.end_at

    def _larry_keys(self, req: SimRequest) -> Keys:
        """Arrival, blocks of the whole sequence so far (the index subtracts the cached
        prefix, `_larry_hashes`), preempted: as the engine plugin keys vLLM's requests."""
        return (
            req.arrival,
            -(-(req.prompt + req.generated) // self.shape.block_size),
            (req.preemptions > 0),
        )

    def _larry_hashes(self, req: SimRequest) -> list[int]:
        """The prompt blocks a hit can cover (at most `prompt + generated - 1` tokens)."""
        keys = req.keys
        if not keys:
            return []
        return keys[: (req.prompt + req.generated - 1) // self.shape.block_size]

    def _reorder(self, now: float) -> None:
        waiting = self.waiting
        if isinstance(waiting, WaitingQueue) and self._larry is not None:
            index = waiting.larry
            index.settle()
            head = index.select(
                policy=self._larry,
                now=now,
                num_blocks=self.shape.num_blocks,
                alpha=self._alpha,
                max_wait=self._max_wait,
                k=self.shape.max_num_seqs - len(self.running),
            )
            waiting.set_head(head)
        elif self._order is not None:
            items = list(waiting)
            self.waiting = deque(items[j] for j in self._order(items, now))

    def _may_admit(self, budget: int) -> bool:
        """False when no waiting request could be admitted whatever the order: then ordering
        the queue changes nothing this step and is skipped."""
        free = self.pool.free
        return any(self.blocks_to_admit(r) <= free for r in self.waiting)

    def _plan_stretch(self, now: float) -> float:
        """The current decode-only step repeats: plan up to the next finish or KV shortage."""
        sched = self._sched
        n = len(sched)
        bs = self.shape.block_size
        k = min(min(req.output - req.generated for req, _ in sched), MAX_STRETCH)
        computed = np.fromiter((req.computed for req, _ in sched), dtype=np.int64, count=n)
        held = np.fromiter((req.blocks for req, _ in sched), dtype=np.int64, count=n)
        free = self.pool.free

        def extra(steps: int) -> int:
            return int((-(-(computed + steps) // bs) - held).sum())

        if k > 1 and extra(k) > free:
            lo, hi = 1, k  # extra(lo) == 0 <= free < extra(hi)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if extra(mid) <= free:
                    lo = mid
                else:
                    hi = mid
            k = lo
        ctx0 = int(computed.sum())
        ctx = ctx0 + n * np.arange(1, k + 1, dtype=np.float64)
        ends: FloatArray = now + np.cumsum(self.model.decode_steps(n, ctx))
        self._ends = ends
        self._k = k
        self.end_at = float(ends[k - 1])
        return self.end_at

    def complete(self) -> StepResult:
        """Apply the planned step (or stretch) at its end time."""
        assert self.end_at is not None, "complete() without a planned step"
        now = self.end_at
        produced: list[SimRequest] = []
        first: list[SimRequest] = []
        finished: list[SimRequest] = []
        k = self._k
        self.steps += k
        self.busy_s += now - self._start
        bs = self.shape.block_size
        for req, tokens in self._sched:
            if k > 1:  # a stretch: k decode tokens each
                req.computed += k
                req.generated += k
                blocks = -(-req.computed // bs)
                self.pool.allocate(blocks - req.blocks)
                req.blocks = blocks
            else:
                if req.generated == 0 or tokens > 1:
                    self.prompt_tokens_total += tokens
                req.computed += tokens
                if req.computed < req.prompt + req.generated:
                    continue  # a prompt chunk: no token yet
                req.generated += 1
            produced.append(req)
            if req.first_token_at < 0:
                req.first_token_at = now
                first.append(req)
            if req.generated >= req.output:
                req.finished_at = now
                finished.append(req)
        self.generation_tokens_total += k * len(produced)
        if k > 1:
            self.max_used_blocks = max(self.max_used_blocks, self.used_blocks)
        if finished:
            done = set(map(id, finished))
            self.running = [r for r in self.running if id(r) not in done]
            for req in finished:
                self._release(req)
                req.keys = None
        self._sched = []
        self._ends = None
        self._k = 0
        self.end_at = None
        result = StepResult(produced, first, finished, k)
        if self._aborting:
            self._drop_aborted(result)
        return result
