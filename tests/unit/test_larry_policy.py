"""Properties of the pure LARRY policy (halffull.policy.larry)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from halffull.policy.larry import (
    POLICIES,
    KVCapacity,
    LarryPolicy,
    WaitingRequest,
    kv_fraction,
    order,
    score,
)

CAPACITY = KVCapacity(block_size=16, num_blocks=256)
NOW = 1_000.0

capacities = st.builds(
    KVCapacity,
    block_size=st.sampled_from([1, 8, 16, 32]),
    num_blocks=st.integers(min_value=1, max_value=10_000),
)
requests = st.builds(
    WaitingRequest,
    kv_tokens=st.integers(min_value=1, max_value=20_000),
    arrival_time=st.floats(min_value=0.0, max_value=NOW, allow_nan=False),
    preempted=st.booleans(),
)
queues = st.lists(requests, max_size=40)
LARRY_VARIANTS: tuple[LarryPolicy, ...] = ("larry", "larry-literal")
larry_policies = st.sampled_from(LARRY_VARIANTS)


def fresh(kv_tokens: int, arrival_time: float) -> WaitingRequest:
    return WaitingRequest(kv_tokens=kv_tokens, arrival_time=arrival_time)


def fcfs(queue: list[WaitingRequest], capacity: KVCapacity = CAPACITY) -> list[int]:
    return order(queue, policy="fcfs", now=NOW, capacity=capacity, alpha=1.0)


def test_kv_fraction_counts_whole_blocks() -> None:
    cap = KVCapacity(block_size=16, num_blocks=10)
    assert kv_fraction(1, cap) == pytest.approx(0.1)
    assert kv_fraction(16, cap) == pytest.approx(0.1)
    assert kv_fraction(17, cap) == pytest.approx(0.2)
    assert kv_fraction(0, cap) == 0.0


def test_default_reading_admits_small_prompts_first_under_load() -> None:
    # Arrival order: big, small, medium, all waiting about the same time.
    queue = [fresh(3000, NOW - 1.02), fresh(40, NOW - 1.01), fresh(900, NOW - 1.0)]
    assert order(queue, policy="larry", now=NOW, capacity=CAPACITY, alpha=0.01) == [1, 2, 0]
    assert order(queue, policy="larry-literal", now=NOW, capacity=CAPACITY, alpha=0.01) == [
        0,
        2,
        1,
    ]
    assert fcfs(queue) == [0, 1, 2]


def test_long_wait_beats_small_prompt() -> None:
    # With alpha = 1 the big request's 60 s lead outweighs its memory penalty (3 * 0.75).
    queue = [fresh(3072, NOW - 60.0), fresh(16, NOW - 0.5), fresh(16, NOW - 0.1)]
    assert order(queue, policy="larry", now=NOW, capacity=CAPACITY, alpha=1.0)[0] == 0


def test_score_signs() -> None:
    r = fresh(16 * 128, NOW - 2.0)  # half the cache
    assert score(r, now=NOW, queue_len=4, capacity=CAPACITY, alpha=0.5) == pytest.approx(-1.0)
    assert score(
        r, now=NOW, queue_len=4, capacity=CAPACITY, alpha=0.5, literal=True
    ) == pytest.approx(3.0)


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        order([], policy="sjf", now=NOW, capacity=CAPACITY, alpha=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        order([], policy="larry", now=NOW, capacity=CAPACITY, alpha=-1.0)
    with pytest.raises(ValueError):
        order([], policy="larry", now=NOW, capacity=CAPACITY, alpha=float("inf"))
    with pytest.raises(ValueError):
        KVCapacity(block_size=0, num_blocks=1)


@given(queue=queues, policy=st.sampled_from(POLICIES), capacity=capacities, alpha=st.floats(0, 1e3))
def test_order_is_a_permutation(
    queue: list[WaitingRequest], policy: LarryPolicy, capacity: KVCapacity, alpha: float
) -> None:
    result = order(queue, policy=policy, now=NOW, capacity=capacity, alpha=alpha)
    assert sorted(result) == list(range(len(queue)))


@given(queue=queues, policy=st.sampled_from(POLICIES), capacity=capacities, alpha=st.floats(0, 1e3))
def test_preempted_requests_stay_first_in_their_order(
    queue: list[WaitingRequest], policy: LarryPolicy, capacity: KVCapacity, alpha: float
) -> None:
    result = order(queue, policy=policy, now=NOW, capacity=capacity, alpha=alpha)
    preempted = [i for i, r in enumerate(queue) if r.preempted]
    assert result[: len(preempted)] == preempted


@given(
    request=requests,
    policy=st.sampled_from(POLICIES),
    capacity=capacities,
    alpha=st.floats(0, 1e3),
)
def test_one_waiting_request_is_admitted_as_is(
    request: WaitingRequest, policy: LarryPolicy, capacity: KVCapacity, alpha: float
) -> None:
    assert order([request], policy=policy, now=NOW, capacity=capacity, alpha=alpha) == [0]


@given(
    arrivals=st.lists(
        st.integers(min_value=0, max_value=100_000), min_size=2, max_size=30, unique=True
    ),
    sizes=st.lists(st.integers(min_value=1, max_value=20_000), min_size=30, max_size=30),
    policy=larry_policies,
    capacity=capacities,
)
def test_large_alpha_is_fcfs(
    arrivals: list[int], sizes: list[int], policy: LarryPolicy, capacity: KVCapacity
) -> None:
    # Arrivals on a 1 ms grid. The memory term is at most queue_len * max fraction; an alpha that
    # makes 1 ms of waiting worth more than twice that bound leaves only the waiting time.
    queue = [fresh(size, t / 1000.0) for t, size in zip(arrivals, sizes, strict=False)]
    bound = len(queue) * max(kv_fraction(r.kv_tokens, capacity) for r in queue)
    alpha = 2_000.0 * bound + 1.0
    now = max(r.arrival_time for r in queue) + 1.0
    larry = order(queue, policy=policy, now=now, capacity=capacity, alpha=alpha)
    assert larry == order(queue, policy="fcfs", now=now, capacity=capacity, alpha=alpha)
    assert [queue[i].arrival_time for i in larry] == sorted(r.arrival_time for r in queue)


@given(queue=queues, policy=st.sampled_from(POLICIES), capacity=capacities, alpha=st.floats(0, 10))
def test_order_is_deterministic_and_ties_go_to_the_earlier(
    queue: list[WaitingRequest], policy: LarryPolicy, capacity: KVCapacity, alpha: float
) -> None:
    first = order(queue, policy=policy, now=NOW, capacity=capacity, alpha=alpha)
    assert first == order(list(queue), policy=policy, now=NOW, capacity=capacity, alpha=alpha)
    if policy == "fcfs":
        return
    scores = [
        score(
            r,
            now=NOW,
            queue_len=len(queue),
            capacity=capacity,
            alpha=alpha,
            literal=policy == "larry-literal",
        )
        for r in queue
    ]
    fresh_part = [i for i in first if not queue[i].preempted]
    for a, b in itertools.pairwise(fresh_part):
        assert scores[a] >= scores[b]
        if scores[a] == scores[b]:
            assert (queue[a].arrival_time, a) < (queue[b].arrival_time, b)


@given(size=st.integers(1, 4096), copies=st.integers(2, 20), policy=larry_policies)
def test_identical_requests_keep_their_queue_order(
    size: int, copies: int, policy: LarryPolicy
) -> None:
    queue = [fresh(size, 5.0) for _ in range(copies)]
    assert order(queue, policy=policy, now=NOW, capacity=CAPACITY, alpha=0.3) == list(range(copies))


@given(
    small_sizes=st.lists(st.integers(1, 64), min_size=1, max_size=8),
    backlog=st.integers(0, 30),
    big=st.integers(2048, 4096),
    alpha=st.floats(0.05, 5.0),
    policy=larry_policies,
)
def test_aging_admits_every_request_under_a_bounded_stream(
    small_sizes: list[int], backlog: int, big: int, alpha: float, policy: LarryPolicy
) -> None:
    """A discrete engine admits one request per second while one small request arrives per
    second, behind a backlog of small ones: the queue stays at `backlog + 2` and small requests
    keep coming. A request that arrived more than `window = queue_len * mem(big) / alpha` seconds
    after the big one can never outscore it, so at most `backlog + window + 1` requests go before
    it: the big one is admitted within that many steps."""
    dt = 1.0
    big_req = fresh(big, 0.0)
    queue = [fresh(small_sizes[i % len(small_sizes)], 0.0) for i in range(backlog)]
    queue.append(big_req)
    window = (len(queue) + 1) * kv_fraction(big, CAPACITY) / alpha
    horizon = backlog + int(window / dt) + 2
    t = 0.0
    admitted = False
    for step in range(horizon):
        t += dt
        queue.append(fresh(small_sizes[step % len(small_sizes)], t))
        chosen = order(queue, policy=policy, now=t, capacity=CAPACITY, alpha=alpha)[0]
        if queue.pop(chosen) is big_req:
            admitted = True
            break
    assert admitted, f"big request not admitted within {horizon} steps"


def test_without_aging_a_big_request_starves() -> None:
    """The counterpart of the aging property: with alpha = 0 the same stream never admits it."""
    big_req = fresh(4096, 0.0)
    queue = [fresh(16, 0.0) for _ in range(5)] + [big_req]
    for step in range(1, 500):
        queue.append(fresh(16, float(step)))
        chosen = order(queue, policy="larry", now=float(step), capacity=CAPACITY, alpha=0.0)[0]
        assert queue.pop(chosen) is not big_req


@given(queue=st.lists(requests, min_size=2, max_size=20), capacity=capacities)
def test_alpha_zero_default_reading_is_smallest_first(
    queue: list[WaitingRequest], capacity: KVCapacity
) -> None:
    assume(not any(r.preempted for r in queue))
    result = order(queue, policy="larry", now=NOW, capacity=capacity, alpha=0.0)
    fractions = [kv_fraction(queue[i].kv_tokens, capacity) for i in result]
    assert fractions == sorted(fractions)
