"""The array-backed waiting queue selects the head of the reference LARRY order, and between
steps it is vLLM's FIFO."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from halffull.policy import larry_queue
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
    q: WaitingQueue[Item] = WaitingQueue(WaitingIndex(keys, capacity=4))
    for v in views:
        q.append(Item(v))
    return q


requests = st.builds(
    WaitingRequest,
    kv_tokens=st.integers(min_value=1, max_value=20_000),
    arrival_time=st.floats(min_value=0.0, max_value=NOW, allow_nan=False).map(lambda t: round(t)),
    preempted=st.booleans(),
)


@pytest.fixture(params=["python", "numpy"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Short queues are selected in Python, long ones over arrays: both must be the reference."""
    if request.param == "numpy":
        monkeypatch.setattr(larry_queue, "SMALL_QUEUE", 0)
    return str(request.param)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    views=st.lists(requests, max_size=60),
    policy=st.sampled_from(["larry", "larry-literal", "fcfs"]),
    alpha=st.sampled_from([0.0, 0.01, 0.1, 1.0, 10.0]),
    max_wait=st.sampled_from([0.0, 1.0, 100.0, 500.0]),
    k=st.integers(min_value=0, max_value=70),
)
def test_select_is_the_head_of_the_reference_order(
    path: str,
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
    # the next steps: the selected are admitted, time moves on, the partial selection starts
    # from its guess of the cut
    for step in range(1, 4):
        for item in got:
            q.remove(item)
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
    q: WaitingQueue[Item] = WaitingQueue(WaitingIndex(keys, capacity=2))
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
    assert index.blocks[:3].tolist() == [3, 4, 5]
    cache.update({"a2", "c0"})
    watch.stored("a2")
    watch.stored("c0")
    assert index.blocks[:3].tolist() == [3, 4, 5]  # not before the next step
    assert index.settle() == 2 and index.blocks[:3].tolist() == [2, 4, 4]
    cache.discard("a0")
    watch.removed("a0")
    assert index.settle() == 2 and index.blocks[:3].tolist() == [5, 5, 4]
    q.remove(next(iter(q)))
    assert len(watch) == 2 and index.min_blocks() == 4


def test_bad_parameters_name_the_field() -> None:
    index: WaitingIndex[Item] = WaitingIndex(keys)
    with pytest.raises(ValueError, match="max_wait"):
        index.select(policy="larry", now=NOW, num_blocks=1, alpha=1.0, max_wait=-1.0, k=1)
