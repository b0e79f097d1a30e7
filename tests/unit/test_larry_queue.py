"""The array-backed waiting queue selects the head of the reference LARRY order, and between
steps it is vLLM's FIFO."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halffull.policy.larry import KVCapacity, LarryPolicy, WaitingRequest, order
from halffull.policy.larry_fifo import WaitingQueue
from halffull.policy.larry_prefix import PrefixWatch
from halffull.policy.larry_queue import Keys, WaitingIndex

CAPACITY = KVCapacity(block_size=16, num_blocks=256)
NOW = 1_000.0


@dataclass(eq=False)
class Item:
    """A queued request with identity (WaitingRequest compares by value)."""

    view: WaitingRequest


def keys(item: Item) -> Keys:
    v = item.view
    return v.arrival_time, -(-v.kv_tokens // CAPACITY.block_size), v.preempted


def queue_of(views: list[WaitingRequest]) -> WaitingQueue[Item]:
    q: WaitingQueue[Item] = WaitingQueue(WaitingIndex(keys))
    for v in views:
        q.append(Item(v))
    return q


requests = st.builds(
    WaitingRequest,
    kv_tokens=st.integers(min_value=1, max_value=20_000),
    arrival_time=st.floats(min_value=0.0, max_value=NOW, allow_nan=False).map(lambda t: round(t)),
    preempted=st.booleans(),
)


@settings(deadline=None)
@given(
    views=st.lists(requests, max_size=60),
    policy=st.sampled_from(["larry", "larry-literal", "fcfs"]),
    alpha=st.sampled_from([0.0, 0.01, 0.1, 1.0, 10.0]),
    max_wait=st.sampled_from([0.0, 1.0, 100.0, 500.0]),
    k=st.integers(min_value=0, max_value=70),
)
def test_select_is_the_head_of_the_reference_order(
    views: list[WaitingRequest],
    policy: LarryPolicy,
    alpha: float,
    max_wait: float,
    k: int,
) -> None:
    q = queue_of(views)
    items = list(q)
    ref = order(views, policy=policy, now=NOW, capacity=CAPACITY, alpha=alpha, max_wait=max_wait)
    # the reference keeps preempted requests in queue order; appended items share it
    got = q.larry.select(
        policy=policy, now=NOW, num_blocks=CAPACITY.num_blocks, alpha=alpha, max_wait=max_wait, k=k
    )
    assert got == [items[i] for i in ref[:k]]
    # the next steps: the selected are admitted, time moves on
    for step in range(1, 4):
        for item in got:
            q.remove(item)
        q.larry.check()
        rest = [it for it in items if it in q]
        now = NOW + 7.0 * step
        views_now = [it.view for it in rest]
        ref = order(views_now, policy=policy, now=now, capacity=CAPACITY, alpha=alpha,
                    max_wait=max_wait)  # fmt: skip
        got = q.larry.select(
            policy=policy, now=now, num_blocks=CAPACITY.num_blocks, alpha=alpha,
            max_wait=max_wait, k=k,
        )  # fmt: skip
        assert got == [rest[i] for i in ref[:k]]


@dataclass(eq=False)
class Cached:
    """A queued request whose leading blocks have hashes ("a", "ab", "aba", ...) that a prefix
    cache may hold: its blocks are its prompt's less its cached run."""

    view: WaitingRequest
    hashes: list[str]


def cached_run(hashes: list[str], cache: set[str]) -> int:
    hit = 0
    while hit < len(hashes) and hashes[hit] in cache:
        hit += 1
    return hit


def cached_keys(item: Cached) -> Keys:
    return keys(Item(item.view))


prefixes = st.lists(st.sampled_from("ab"), max_size=5).map(
    lambda path: ["".join(path[: i + 1]) for i in range(len(path))]
)
arrivals = st.integers(min_value=0, max_value=int(NOW) + 40).map(float)
step_ops = st.lists(
    st.one_of(
        # a new request at the back; a preempted one back at the front (vLLM's re-queue)
        st.tuples(st.just("arrive"), st.integers(1, 3000), arrivals, prefixes),
        st.tuples(st.just("preempted"), st.integers(1, 3000), arrivals, prefixes),
        # removal from anywhere (an abort), by position in the queue
        st.tuples(st.just("remove"), st.integers(0, 10_000)),
        # the prefix cache stores or evicts a block: the requests it concerns are re-keyed
        st.tuples(st.just("store"), prefixes),
        st.tuples(st.just("evict"), prefixes),
    ),
    max_size=12,
)


@settings(deadline=None, max_examples=200)
@given(
    views=st.lists(st.tuples(requests, prefixes), max_size=40),
    steps=st.lists(
        st.tuples(step_ops, st.integers(0, 12), st.integers(0, 8), st.floats(0.0, 30.0)),
        min_size=1,
        max_size=6,
    ),
    policy=st.sampled_from(["larry", "larry-literal", "fcfs"]),
    alpha=st.sampled_from([0.0, 0.01, 0.1, 1.0, 10.0]),
    max_wait=st.sampled_from([0.0, 1.0, 20.0, 500.0]),
)
def test_select_follows_the_reference_over_steps_with_rekeying(
    views: list[tuple[WaitingRequest, list[str]]],
    steps: list[tuple[list[tuple[Any, ...]], int, int, float]],
    policy: LarryPolicy,
    alpha: float,
    max_wait: float,
) -> None:
    """Consecutive steps as the engine makes them: between two selections requests arrive,
    preempted ones come back at the front, some are removed from the middle, the prefix cache
    stores and evicts blocks (re-keying the requests it concerns), the step admits some of
    its head, and time moves on (so requests become overdue). At every step the head must be
    the reference order's over the queue as it is, with every request's uncached blocks
    looked up fresh."""
    cache: set[str] = set()
    watch: PrefixWatch[str] = PrefixWatch(cache.__contains__)
    index: WaitingIndex[Cached] = WaitingIndex(cached_keys, prefix=(watch, _hashes))
    q: WaitingQueue[Cached] = WaitingQueue(index)
    for view, hashes in views:
        q.append(Cached(view, hashes))
    now = NOW
    for ops, k, admit, dt in steps:
        for op in ops:
            if op[0] in ("arrive", "preempted"):
                _, tokens, arrival, hashes = op
                view = WaitingRequest(tokens, arrival, preempted=op[0] == "preempted")
                if op[0] == "arrive":
                    q.append(Cached(view, hashes))
                else:
                    q.appendleft(Cached(view, hashes))
            elif op[0] == "remove" and q:
                queued = list(q)
                q.remove(queued[op[1] % len(queued)])
            elif op[0] == "store" and op[1]:
                cache.add(op[1][-1])
                watch.stored(op[1][-1])
            elif op[0] == "evict" and op[1] and op[1][-1] in cache:
                cache.discard(op[1][-1])
                watch.removed(op[1][-1])
        index.settle()
        index.check()
        queued = list(q)
        fresh = fresh_views(queued, cache)
        assert [index.blocks_of(it) for it in queued] == [
            -(-v.kv_tokens // CAPACITY.block_size) for v in fresh
        ]
        ref = order(fresh, policy=policy, now=now, capacity=CAPACITY, alpha=alpha,
                    max_wait=max_wait)  # fmt: skip
        got = index.select(
            policy=policy, now=now, num_blocks=CAPACITY.num_blocks, alpha=alpha,
            max_wait=max_wait, k=k,
        )  # fmt: skip
        assert got == [queued[i] for i in ref[:k]]
        q.set_head(got)
        for _ in range(min(admit, len(got))):
            q.popleft()
        q.clear_head()
        now += dt


def _hashes(item: Cached) -> list[str]:
    """The hashes a hit can cover: no more than the request's blocks."""
    return item.hashes[: cached_keys(item)[1]]


def fresh_views(queued: list[Cached], cache: set[str]) -> list[WaitingRequest]:
    """What the reference order sees of each queued request when its uncached blocks are looked
    up afresh in `cache` (not kept up to date by events, as the index's are)."""
    return [
        WaitingRequest(
            kv_tokens=CAPACITY.block_size * (cached_keys(it)[1] - cached_run(_hashes(it), cache)),
            arrival_time=it.view.arrival_time,
            preempted=it.view.preempted,
        )
        for it in queued
    ]


def test_long_queue_follows_the_reference_over_steps() -> None:
    """Thousands of waiting requests over many block counts (the case the pruning of groups
    is for), with arrivals, admissions, removals and re-keying between steps."""
    rng = random.Random(7)
    cache: set[str] = set()
    watch: PrefixWatch[str] = PrefixWatch(cache.__contains__)
    index: WaitingIndex[Cached] = WaitingIndex(cached_keys, prefix=(watch, _hashes))
    q: WaitingQueue[Cached] = WaitingQueue(index)
    chains = [[f"s{c}/{i}" for i in range(12)] for c in range(8)]

    def new(now: float, preempted: bool = False) -> Cached:
        view = WaitingRequest(rng.randint(1, 4000), now - 60 * rng.random(), preempted)
        return Cached(view, chains[rng.randrange(8)][: rng.randint(0, 12)])

    for _ in range(3000):
        q.append(new(NOW))
    for policy, alpha, max_wait in [
        ("larry", 0.1, 3.0),
        ("larry", 0.1, 0.0),
        ("larry", 10.0, 45.0),
        ("larry-literal", 0.1, 30.0),
        ("larry", 0.0, 0.0),
    ]:
        now = NOW
        for step in range(6):
            for _ in range(5):
                q.append(new(now))
            if step % 3 == 1:
                q.appendleft(new(now, preempted=True))
            queued = list(q)
            q.remove(queued[rng.randrange(len(queued))])
            chain = chains[rng.randrange(8)]
            h = chain[rng.randrange(12)]
            if h in cache and rng.random() < 0.5:
                cache.discard(h)
                watch.removed(h)
            else:
                cache.add(h)
                watch.stored(h)
            index.settle()
            queued = list(q)
            fresh = fresh_views(queued, cache)
            ref = order(fresh, policy=policy, now=now, capacity=CAPACITY, alpha=alpha,
                        max_wait=max_wait)  # fmt: skip
            got = index.select(
                policy=policy, now=now, num_blocks=CAPACITY.num_blocks, alpha=alpha,
                max_wait=max_wait, k=16,
            )  # fmt: skip
            assert got == [queued[i] for i in ref[:16]], (policy, alpha, max_wait, step)
            for item in got[:8]:
                q.remove(item)
            now += 0.5
        index.check()
    # most requests leave (admitted oldest first, as overdue ones are, and from anywhere): the
    # list by arrival drops its stale entries in bulk and still gives the reference's head
    queued = list(q)
    for item in sorted(queued, key=lambda it: it.view.arrival_time)[:1500] + queued[-1400:]:
        if item in q:
            q.remove(item)
    index.check()
    assert len(index._by_arrival) - index._lo < 3 * len(q) + 64
    queued = list(q)
    fresh = fresh_views(queued, cache)
    for max_wait in (0.0, 30.0, 200.0):
        ref = order(fresh, policy="larry", now=NOW + 60, capacity=CAPACITY, alpha=0.1,
                    max_wait=max_wait)  # fmt: skip
        got = index.select(policy="larry", now=NOW + 60, num_blocks=CAPACITY.num_blocks,
                           alpha=0.1, max_wait=max_wait, k=16)  # fmt: skip
        assert got == [queued[i] for i in ref[:16]]


def test_a_later_group_that_ties_the_cut_is_still_visited() -> None:
    """The selection stops visiting block counts once the best a group could score is worse
    than the k-th found; a group whose best merely ties it must still be visited, since the tie
    goes to the earlier arrival."""
    views = [
        WaitingRequest(kv_tokens=16 * 1, arrival_time=NOW - 1),  # -score 1 - 4/256
        WaitingRequest(kv_tokens=16 * 65, arrival_time=NOW - 2),  # -score 2 - 4*65/256: equal
        WaitingRequest(kv_tokens=16 * 200, arrival_time=NOW),
        WaitingRequest(kv_tokens=16 * 200, arrival_time=NOW),
    ]
    q = queue_of(views)
    items = list(q)
    ref = order(views, policy="larry", now=NOW, capacity=CAPACITY, alpha=1.0)
    assert ref[:2] == [1, 0]
    got = q.larry.select(policy="larry", now=NOW, num_blocks=256, alpha=1.0, max_wait=0.0, k=1)
    assert got == [items[1]]
    # the same for the literal reading, which visits the largest block counts first
    views = [
        WaitingRequest(kv_tokens=16 * 65, arrival_time=NOW - 1),  # -score -(1 + 4*65/256)
        WaitingRequest(kv_tokens=16 * 1, arrival_time=NOW - 2),  # -score -(2 + 4/256): equal
        WaitingRequest(kv_tokens=16 * 200, arrival_time=NOW),
        WaitingRequest(kv_tokens=16 * 200, arrival_time=NOW),
    ]
    q = queue_of(views)
    items = list(q)
    ref = order(views, policy="larry-literal", now=NOW, capacity=CAPACITY, alpha=1.0)
    assert ref[:3] == [2, 3, 1]
    got = q.larry.select(
        policy="larry-literal", now=NOW, num_blocks=256, alpha=1.0, max_wait=0.0, k=3
    )
    assert got == [items[2], items[3], items[1]]


def test_overdue_requests_go_first_in_arrival_order_after_preempted_ones() -> None:
    views = [
        WaitingRequest(kv_tokens=4000, arrival_time=NOW - 30),  # large, overdue
        WaitingRequest(kv_tokens=16, arrival_time=NOW - 1),
        WaitingRequest(kv_tokens=3000, arrival_time=NOW - 40),  # large, more overdue
        WaitingRequest(kv_tokens=500, arrival_time=NOW - 2, preempted=True),
    ]
    q = queue_of(views)
    items = list(q)
    got = q.larry.select(policy="larry", now=NOW, num_blocks=256, alpha=0.0, max_wait=10.0, k=4)
    assert got == [items[3], items[2], items[0], items[1]]
    unbounded = q.larry.select(policy="larry", now=NOW, num_blocks=256, alpha=0.0, max_wait=0, k=4)
    assert unbounded == [items[3], items[1], items[2], items[0]]


@settings(deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["append", "appendleft", "popleft", "remove", "head"]),
            st.integers(0, 1000),
        ),
        max_size=120,
    )
)
def test_queue_is_vllms_fifo_between_steps(ops: list[tuple[str, int]]) -> None:
    """append / appendleft / popleft / remove from anywhere behave as on a deque (what vLLM's
    FCFSRequestQueue is), also when a step's head served some requests out of FIFO order."""
    q: WaitingQueue[Item] = WaitingQueue(WaitingIndex(keys))
    ref: deque[Item] = deque()
    gone: list[Item] = []  # requests that left, re-entering later (vLLM re-queues preempted ones)
    for op, n in ops:
        if op in ("append", "appendleft"):
            item = gone.pop() if gone and n % 2 else Item(WaitingRequest(n + 1, float(n)))
            getattr(q, op)(item)
            getattr(ref, op)(item)
        elif op == "popleft" and ref:
            assert q.peek() is ref[0]
            gone.append(q.popleft())
            ref.popleft()
        elif op == "remove" and ref:
            item = ref[n % len(ref)]
            q.remove(item)
            ref.remove(item)
            gone.append(item)
        elif op == "head" and ref:
            # a step serves a selection first, then the FIFO resumes without it
            chosen = [ref[i] for i in sorted({n % len(ref), (n // 7) % len(ref)}, reverse=True)]
            q.set_head(chosen)
            for item in chosen:
                assert q.popleft() is item
                ref.remove(item)
            q.clear_head()
        assert list(q) == list(ref) and len(q) == len(ref) == len(q.larry)
        q.larry.check()
    with pytest.raises(ValueError, match="not in the queue"):
        q.remove(Item(WaitingRequest(1, 0.0)))
    q.clear()
    assert not q and q.larry.min_blocks() == 0 and list(q) == []
    with pytest.raises(IndexError):
        q.peek()


def test_head_is_served_first_then_the_fifo() -> None:
    views = [WaitingRequest(kv_tokens=16 * (10 - i), arrival_time=float(i)) for i in range(10)]
    q = queue_of(views)
    items = list(q)
    head = q.larry.select(policy="larry", now=100.0, num_blocks=16, alpha=0.0, max_wait=0.0, k=3)
    assert head == items[-1:-4:-1] and q.fifo_first() is items[0]  # smallest prompts: the last
    q.set_head(head)
    assert [q.popleft() for _ in range(5)] == head + items[:2]
    q.clear_head()
    assert list(q) == items[2:7] and q.fifo_first() is items[2]
    assert q.larry.min_blocks() == 4  # the smallest left: 64 tokens


def test_keys_subtract_the_cached_prefix_and_follow_its_events() -> None:
    """With a PrefixWatch, `blocks` is the blocks a request needs less its cached run of
    leading blocks, and `settle` applies what the cache reported since the last step."""
    cache: set[str] = {"a0", "a1"}
    watch: PrefixWatch[str] = PrefixWatch(cache.__contains__)
    hashes = {0: ["a0", "a1", "a2", "a3"], 1: ["a0", "b1"], 2: ["c0"]}

    def hashed(item: Item) -> list[str]:
        return hashes[int(item.view.arrival_time)]

    index: WaitingIndex[Item] = WaitingIndex(keys, prefix=(watch, hashed))
    q: WaitingQueue[Item] = WaitingQueue(index)
    for i in range(3):
        q.append(Item(WaitingRequest(kv_tokens=16 * 5, arrival_time=float(i))))
    items = list(q)
    assert [index.blocks_of(it) for it in items] == [3, 4, 5]
    cache.update({"a2", "c0"})
    watch.stored("a2")
    watch.stored("c0")
    assert [index.blocks_of(it) for it in items] == [3, 4, 5]  # not before the next step
    assert index.settle() == 2 and [index.blocks_of(it) for it in items] == [2, 4, 4]
    assert index.min_blocks() == 2
    cache.discard("a0")
    watch.removed("a0")
    assert index.settle() == 2 and [index.blocks_of(it) for it in items] == [5, 5, 4]
    index.check()
    q.remove(next(iter(q)))
    assert len(watch) == 2 and index.min_blocks() == 4


def test_bad_parameters_name_the_field() -> None:
    index: WaitingIndex[Item] = WaitingIndex(keys)
    with pytest.raises(ValueError, match="max_wait"):
        index.select(policy="larry", now=NOW, num_blocks=1, alpha=1.0, max_wait=-1.0, k=1)
