"""Prefix-aware SAL (with and without its recompute charge) and the prefix baselines
(llm-d-like, Dynamo-like, cache affinity)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from halffull.policy.prefix_routing import CacheAffinityPolicy, DynamoCostPolicy, LlmdScorerPolicy
from halffull.policy.registry import ROUTING_POLICIES, make_policy
from halffull.policy.routing import (
    EngineStats,
    OwnLoad,
    ReplicaState,
    RouteRequest,
    SalClassicPolicy,
    SalGreedyPolicy,
    SalPolicy,
    estimate_replica,
)
from halffull.policy.sal import recompute_delay

PROMPT = 8000
REQ = RouteRequest(prompt_tokens=PROMPT)


def state(
    name: str,
    *,
    cached: int = 0,
    queued: float = 0.0,
    waiting: int = 0,
    unstarted: float = 0.0,
    **kw: float,
) -> ReplicaState:
    return ReplicaState(
        name=name,
        cached_tokens=cached,
        queued_tokens=queued,
        num_waiting=waiting,
        unstarted=unstarted,
        free_kv_tokens=kw.get("free", 100_000.0),
        kv_usage=kw.get("usage", 0.5),
        inflight=int(kw.get("inflight", 0)),
        draining=bool(kw.get("draining", 0)),
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
    for name in (
        "sal",
        "sal-greedy",
        "sal-classic",
        "llmd-scorer",
        "dynamo-cost",
        "cache-affinity",
    ):
        assert name in ROUTING_POLICIES
        assert make_policy(name, beta=4.0).name == name


# -- SAL's recompute charge (`sal.recompute_delay`) -----------------------------------------------


def delay(uncached: float, least: float, waiting: float, batch: int = 1000) -> float:
    return recompute_delay(
        uncached_tokens=uncached,
        least_uncached_tokens=least,
        waiting_requests=waiting,
        max_tokens_per_batch=batch,
    )


def test_recompute_delay() -> None:
    assert delay(8000, 2000, 0) == 0.0  # nobody waits: nothing to delay
    assert delay(8000, 8000, 5) == 0.0  # no replica saves anything: the same work anywhere
    assert delay(8000, 2000, 2) == 12.0  # 6,000 extra tokens = 6 batches, delaying 2 requests
    assert delay(3000, 2000, 0.5) == 0.5  # a mean of half a request waiting
    with pytest.raises(ValueError, match="max_tokens_per_batch"):
        delay(10, 0, 1, batch=0)
    with pytest.raises(ValueError, match="waiting_requests"):
        delay(10, 0, -1)


@given(
    st.floats(0, 1e6),
    st.floats(0, 1e6),
    st.floats(0, 1e3),
    st.floats(0, 1e3),
    st.integers(1, 1 << 16),
)
def test_recompute_delay_is_non_negative_and_grows_with_the_backlog(
    uncached: float, least: float, waiting: float, more: float, batch: int
) -> None:
    assert delay(uncached, least, waiting, batch) >= 0.0
    assert delay(uncached, least, waiting + more, batch) >= delay(uncached, least, waiting, batch)
    if uncached <= least:  # the replica that saves the most is never charged
        assert delay(uncached, least, waiting, batch) == 0.0


def test_greedy_sal_gives_the_prefix_up_and_sal_keeps_it_under_a_backlog() -> None:
    # r1 holds 6,000 of 8,000 tokens but has 7,000 tokens more queued than r0, and each replica
    # has 2 requests waiting for their first token. Greedy: 2,000 + 7,000 > 8,000 -> r0.
    # With the charge: r0 recomputes 6,000 tokens more than r1 must, delaying 2 requests:
    # 8,000 + 12,000 > 9,000 -> r1.
    replicas = [state("r0", unstarted=2), state("r1", cached=6000, queued=7000.0, unstarted=2)]
    assert SalGreedyPolicy(beta=256).rank(REQ, replicas)[0] == 0
    assert SalPolicy(beta=256).rank(REQ, replicas)[0] == 1
    # the charge is bounded: a queue longer than the delay it saves is left
    replicas[1] = state("r1", cached=6000, queued=20_000.0, unstarted=2)
    assert SalPolicy(beta=256).rank(REQ, replicas)[0] == 0
    # and on an idle cluster SAL is greedy
    replicas = [state("r0"), state("r1", cached=6000, queued=7000.0)]
    assert SalPolicy(beta=256).rank(REQ, replicas)[0] == 0


def test_the_backlog_is_the_mean_over_live_candidates() -> None:
    sal = SalPolicy(beta=256)
    replicas = [
        state("r0", unstarted=1),
        state("r1", cached=6000, unstarted=3),
        state("r2", unstarted=50, draining=1),
    ]
    loads = sal.loads(REQ, replicas)
    # r0 recomputes 6,000 tokens more, 2 requests waiting on average (the draining one left out)
    assert loads[0] - sal.load(REQ, replicas[0]) == pytest.approx(2 * 6000 / 2048)
    assert loads[1] == sal.load(REQ, replicas[1])


def replica_lists(*, cached: bool, unstarted: bool) -> st.SearchStrategy[list[ReplicaState]]:
    """Lists of up to 6 replicas with random queues and free memory, and, as asked, random
    cached prefixes of REQ and backlogs."""
    one = st.builds(
        state,
        st.sampled_from(["a", "b", "c", "d"]),
        cached=st.integers(0, PROMPT) if cached else st.just(0),
        queued=st.floats(0, 1e5),
        unstarted=st.integers(0, 40) if unstarted else st.just(0),
        free=st.floats(-1e4, 1e6),
    )
    return st.lists(one, min_size=1, max_size=6)


@given(replica_lists(cached=False, unstarted=True), st.integers(1, 130_000))
def test_without_cached_prefixes_all_three_sals_agree(
    replicas: list[ReplicaState], prompt: int
) -> None:
    request = RouteRequest(prompt_tokens=prompt)
    orders = [p(beta=256).rank(request, replicas) for p in (SalPolicy, SalGreedyPolicy)]
    orders.append(SalClassicPolicy(beta=256).rank(request, replicas))
    assert orders[0] == orders[1] == orders[2]


@given(replica_lists(cached=True, unstarted=False))
def test_with_nobody_waiting_sal_is_greedy(replicas: list[ReplicaState]) -> None:
    greedy = SalGreedyPolicy(beta=256).rank(REQ, replicas)
    assert SalPolicy(beta=256).rank(REQ, replicas) == greedy


@given(replica_lists(cached=True, unstarted=True))
def test_the_charge_only_moves_requests_towards_the_prefix(replicas: list[ReplicaState]) -> None:
    # where sal and sal-greedy disagree, sal's choice holds at least as much of the prompt
    sal = SalPolicy(beta=256).rank(REQ, replicas)[0]
    greedy = SalGreedyPolicy(beta=256).rank(REQ, replicas)[0]
    assert sal == greedy or replicas[sal].cached_tokens >= replicas[greedy].cached_tokens


def test_unstarted_counts_the_router_s_own_and_the_engine_s_other_waiting_requests() -> None:
    # 3 of ours without a first token, 1 of them sent after the poll
    own = OwnLoad(5, 5000, 3, 3000, 1, 1000)

    def unstarted(stats: EngineStats | None) -> float:
        return estimate_replica(
            name="r",
            weight=1.0,
            stats=stats,
            fresh=stats is not None,
            own=own,
            max_tokens_per_batch=2048,
            mean_prompt_tokens=1000.0,
        ).unstarted

    # the poll saw 6 waiting, 2 of them ours: 4 from elsewhere, plus our 3
    assert unstarted(EngineStats(num_running=2, num_waiting=6, kv_usage=0.5)) == 7
    # stale stats: only what the router knows for sure
    assert unstarted(None) == 3
