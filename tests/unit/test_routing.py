"""The non-SAL routing policies: each is one class with the same signature."""

from __future__ import annotations

from collections import Counter

import pytest

from halffull.policy.registry import ROUTING_POLICIES, make_policy
from halffull.policy.routing import (
    LeastKvPolicy,
    LeastRequestsPolicy,
    PowerOfTwoPolicy,
    QueueKvPolicy,
    RandomPolicy,
    ReplicaState,
    RoundRobinPolicy,
    RouteRequest,
)

REQ = RouteRequest(prompt_tokens=100)


@pytest.mark.parametrize("name", sorted(ROUTING_POLICIES))
def test_every_policy_returns_a_permutation(name: str) -> None:
    policy = make_policy(name, seed=1)
    replicas = [
        ReplicaState(
            name=f"r{i}",
            inflight=i % 3,
            kv_usage=i / 10,
            num_waiting=i,
            free_kv_tokens=1000.0 * i,
            queued_tokens=10.0 * i,
            weight=float(i % 2),
        )
        for i in range(5)
    ]
    for _ in range(20):
        order = policy.rank(REQ, replicas)
        assert sorted(order) == list(range(5))
        assert replicas[order[0]].weight > 0  # drained ones never first while others exist


def test_unknown_policy_name() -> None:
    with pytest.raises(ValueError, match="unknown routing policy"):
        make_policy("fastest")


def test_round_robin_rotates_and_follows_weights() -> None:
    rr = RoundRobinPolicy()
    replicas = [ReplicaState(name=n) for n in "abc"]
    assert [rr.rank(REQ, replicas)[0] for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    weighted = [ReplicaState(name="a", weight=3), ReplicaState(name="b", weight=1)]
    rr2 = RoundRobinPolicy()
    counts = Counter(rr2.rank(REQ, weighted)[0] for _ in range(400))
    assert counts == {0: 300, 1: 100}


def test_random_follows_weights_roughly_and_is_seeded() -> None:
    replicas = [ReplicaState(name="a", weight=1), ReplicaState(name="b", weight=3)]
    picks = [RandomPolicy(seed=7).rank(REQ, replicas) for _ in range(3)]
    assert picks[0] == picks[1] == picks[2]
    policy = RandomPolicy(seed=3)
    counts = Counter(policy.rank(REQ, replicas)[0] for _ in range(4000))
    assert 2700 < counts[1] < 3300  # expected 3000; the bound is 10 standard deviations wide


def test_least_requests() -> None:
    replicas = [ReplicaState(name=n, inflight=k) for n, k in (("a", 4), ("b", 1), ("c", 2))]
    assert LeastRequestsPolicy().rank(REQ, replicas) == [1, 2, 0]


def test_power_of_two_prefers_less_loaded_of_the_sample() -> None:
    replicas = [ReplicaState(name="a", inflight=10), ReplicaState(name="b", inflight=0)]
    policy = PowerOfTwoPolicy(seed=0)
    assert all(policy.rank(REQ, replicas)[0] == 1 for _ in range(20))
    four = [ReplicaState(name=n, inflight=k) for n, k in zip("abcd", (0, 5, 6, 7), strict=True)]
    firsts = Counter(policy.rank(REQ, four)[0] for _ in range(600))
    # a wins whenever it is sampled (half the pairs); the most loaded never wins
    assert 3 not in firsts and firsts[0] > firsts[1]


def test_least_kv_with_unknown_usage_last() -> None:
    replicas = [
        ReplicaState(name="a", kv_usage=0.7),
        ReplicaState(name="b", kv_usage=None),
        ReplicaState(name="c", kv_usage=0.2),
    ]
    assert LeastKvPolicy().rank(REQ, replicas) == [2, 0, 1]


def test_queue_kv_scores_both() -> None:
    # a: no queue, full KV (score 1 + 0.1); b: long queue, empty KV (0 + 1); c: mid (0.5 + 0.5)
    replicas = [
        ReplicaState(name="a", num_waiting=0, kv_usage=0.9),
        ReplicaState(name="b", num_waiting=10, kv_usage=0.0),
        ReplicaState(name="c", num_waiting=5, kv_usage=0.4),
    ]
    assert QueueKvPolicy().rank(REQ, replicas) == [0, 2, 1]
    assert QueueKvPolicy(queue_weight=0.1).rank(REQ, replicas)[0] == 1
