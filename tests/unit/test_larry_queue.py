"""The array-backed waiting queue selects the head of the reference LARRY order."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halffull.policy.larry import KVCapacity, LarryPolicy, WaitingRequest, order
from halffull.policy.larry_queue import IndexedDeque, Keys, WaitingIndex

CAPACITY = KVCapacity(block_size=16, num_blocks=256)
NOW = 1_000.0


@dataclass(eq=False)
class Item:
    """A queued request with identity (WaitingRequest compares by value)."""

    view: WaitingRequest


def keys(item: Item) -> Keys:
    v = item.view
    return v.arrival_time, -(-v.kv_tokens // CAPACITY.block_size), v.preempted


def queue_of(views: list[WaitingRequest]) -> IndexedDeque[Item]:
    q: IndexedDeque[Item] = IndexedDeque(larry=WaitingIndex(keys, capacity=4))
    for v in views:
        q.append(Item(v))
    return q


requests = st.builds(
    WaitingRequest,
    kv_tokens=st.integers(min_value=1, max_value=20_000),
    arrival_time=st.floats(min_value=0.0, max_value=NOW, allow_nan=False).map(lambda t: round(t)),
    preempted=st.booleans(),
)


@settings(deadline=None)  # numpy's first calls are slow on a busy machine
@given(
    views=st.lists(requests, max_size=60),
    policy=st.sampled_from(["larry", "larry-literal", "fcfs"]),
    alpha=st.sampled_from([0.0, 0.01, 0.1, 1.0, 10.0]),
    max_wait=st.sampled_from([0.0, 1.0, 100.0, 500.0]),
    k=st.integers(min_value=0, max_value=70),
)
def test_select_is_the_head_of_the_reference_order(
    views: list[WaitingRequest], policy: LarryPolicy, alpha: float, max_wait: float, k: int
) -> None:
    q = queue_of(views)
    items = list(q)
    ref = order(views, policy=policy, now=NOW, capacity=CAPACITY, alpha=alpha, max_wait=max_wait)
    # the reference keeps preempted requests in queue order; appended items share it
    got = q.larry.select(
        policy=policy, now=NOW, num_blocks=CAPACITY.num_blocks, alpha=alpha, max_wait=max_wait, k=k
    )
    assert got == [items[i] for i in ref[:k]]


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


def test_index_follows_every_mutation_of_the_deque() -> None:
    views = [WaitingRequest(kv_tokens=16 * (i + 1), arrival_time=float(i)) for i in range(10)]
    q = queue_of(views)
    a, b = q.popleft(), q.pop()
    q.appendleft(a)
    q.remove(q[3])
    del q[2]
    q.extendleft([b])
    q.extend([Item(WaitingRequest(kv_tokens=1, arrival_time=50.0))])
    q[1] = Item(WaitingRequest(kv_tokens=2, arrival_time=60.0))
    q += [Item(WaitingRequest(kv_tokens=3, arrival_time=70.0))]
    assert set(q.larry.fcfs()) == set(q) and len(q.larry) == len(q)
    assert q.larry.min_blocks() == 1
    rebuilt = IndexedDeque(q.larry.fcfs(), larry=q.larry)  # a new order over the same requests
    assert len(rebuilt.larry) == len(rebuilt)
    q.clear()
    assert len(q.larry) == 0 and q.larry.min_blocks() == 0 and q.larry.fcfs() == []


def test_refresh_rereads_changed_keys_within_the_bound() -> None:
    cached = {"n": 10}
    items = [Item(WaitingRequest(kv_tokens=160, arrival_time=float(i))) for i in range(6)]

    def uncached(item: Item) -> Keys:
        return item.view.arrival_time, cached["n"], False

    index: WaitingIndex[Item] = WaitingIndex(uncached)
    for it in items:
        index.add(it)
    cached["n"] = 3
    assert index.refresh(4) == 4 and index.min_blocks() == 3
    assert sorted(index.blocks[:6].tolist()) == [3, 3, 3, 3, 10, 10]
    index.refresh(4)  # round-robin: the remaining two come next
    assert index.blocks[:6].tolist() == [3] * 6


def test_bad_parameters_name_the_field() -> None:
    index: WaitingIndex[Item] = WaitingIndex(keys)
    with pytest.raises(ValueError, match="max_wait"):
        index.select(policy="larry", now=NOW, num_blocks=1, alpha=1.0, max_wait=-1.0, k=1)
