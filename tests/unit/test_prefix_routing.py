"""Prefix-aware SAL and the prefix baselines (llm-d-like, Dynamo-like, cache affinity)."""

from __future__ import annotations

from halffull.policy.prefix_routing import CacheAffinityPolicy, DynamoCostPolicy, LlmdScorerPolicy
from halffull.policy.registry import ROUTING_POLICIES, make_policy
from halffull.policy.routing import ReplicaState, RouteRequest, SalClassicPolicy, SalPolicy

REQ = RouteRequest(prompt_tokens=8000)


def state(
    name: str, *, cached: int = 0, queued: float = 0.0, waiting: int = 0, **kw: float
) -> ReplicaState:
    return ReplicaState(
        name=name,
        cached_tokens=cached,
        queued_tokens=queued,
        num_waiting=waiting,
        free_kv_tokens=kw.get("free", 100_000.0),
        kv_usage=kw.get("usage", 0.5),
        inflight=int(kw.get("inflight", 0)),
    )


def test_sal_counts_only_uncached_prefill() -> None:
    # r1 holds 6,000 of the 8,000 prompt tokens and has 3,000 more queued than r0:
    # prefix-aware load 5,000 vs 8,000 tokens -> r1; the classic formula -> r0
    replicas = [state("r0", queued=0.0), state("r1", cached=6000, queued=3000.0)]
    assert SalPolicy(beta=256).rank(REQ, replicas)[0] == 1
    assert SalClassicPolicy(beta=256).rank(REQ, replicas)[0] == 0
    assert SalPolicy.uses_prefix and not SalClassicPolicy.uses_prefix


def test_sal_memory_term_counts_only_blocks_the_replica_lacks() -> None:
    # neither fits the whole prompt; r1 holds most of it, so it lacks only 1,000 tokens
    replicas = [state("r0", free=2000.0), state("r1", cached=7000, free=500.0)]
    sal = SalPolicy(beta=256)
    assert sal.load(REQ, replicas[1]) < sal.load(REQ, replicas[0])


def test_llmd_scorer_weights_prefix_3_queue_2_kv_2() -> None:
    # full prefix match (3) beats an empty queue (2) plus free KV (2 x 0.5)
    replicas = [
        state("r0", cached=0, waiting=0, usage=0.5),
        state("r1", cached=8000, waiting=4, usage=0.5),
    ]
    assert LlmdScorerPolicy().rank(REQ, replicas)[0] == 1
    # half a match (1.5) does not beat the queue (2)
    replicas[1] = state("r1", cached=4000, waiting=4, usage=0.5)
    assert LlmdScorerPolicy().rank(REQ, replicas)[0] == 0


def test_dynamo_cost_credits_overlap_against_prefill_and_decode_blocks() -> None:
    policy = DynamoCostPolicy()
    idle_cold = state("r0", usage=0.0, free=100_000.0)
    busy_warm = state("r1", cached=8000, usage=0.1, free=90_000.0)
    # cold: 8000/16 prefill + 8000/16 decode = 1000 blocks; warm: 0 + (10000 + 8000)/16 = 1125
    assert policy.cost(REQ, idle_cold) == 1000.0
    assert policy.cost(REQ, busy_warm) == 1125.0
    assert policy.rank(REQ, [idle_cold, busy_warm])[0] == 0


def test_cache_affinity_follows_the_prefix_until_the_load_is_imbalanced() -> None:
    policy = CacheAffinityPolicy()
    replicas = [state("r0", inflight=3), state("r1", cached=6000, inflight=10)]
    assert policy.rank(REQ, replicas)[0] == 1
    replicas = [state("r0", inflight=3), state("r1", cached=6000, inflight=40)]
    assert policy.rank(REQ, replicas)[0] == 0  # 37 more than the least loaded: balance
    replicas = [state("r0", inflight=3), state("r1", cached=2000, inflight=10)]
    assert policy.rank(REQ, replicas)[0] == 0  # a 25% match is under the 50% threshold


def test_registry_builds_every_prefix_policy() -> None:
    for name in ("sal", "sal-classic", "llmd-scorer", "dynamo-cost", "cache-affinity"):
        assert name in ROUTING_POLICIES
        assert make_policy(name, beta=4.0).name == name
