"""SAL's recompute charge (`sal.recompute_delay`) and how `sal` ranks with it against
`sal-greedy` (prefix-aware, no charge) and `sal-classic` (whole prompts)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
    name: str, *, cached: int = 0, queued: float = 0.0, unstarted: float = 0.0, **kw: float
) -> ReplicaState:
    return ReplicaState(
        name=name,
        cached_tokens=cached,
        queued_tokens=queued,
        unstarted=unstarted,
        free_kv_tokens=kw.get("free", 1e6),
        max_tokens_per_batch=int(kw.get("batch", 2048)),
        draining=bool(kw.get("draining", 0)),
    )


@pytest.mark.parametrize(
    ("uncached", "least", "waiting", "batch", "expected"),
    [
        (8000, 2000, 0, 2048, 0.0),  # nobody waits: nothing to delay
        (8000, 8000, 5, 2048, 0.0),  # no replica saves anything: the same work anywhere
        (8000, 2000, 2, 1000, 12.0),  # 6,000 extra tokens = 6 batches, delaying 2 requests each
        (3000, 2000, 0.5, 1000, 0.5),  # a mean of half a request waiting
    ],
    ids=["idle", "no-saving", "backlog", "fractional"],
)
def test_recompute_delay(
    uncached: float, least: float, waiting: float, batch: int, expected: float
) -> None:
    got = recompute_delay(
        uncached_tokens=uncached,
        least_uncached_tokens=least,
        waiting_requests=waiting,
        max_tokens_per_batch=batch,
    )
    assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    ("field", "batch", "waiting"),
    [("max_tokens_per_batch", 0, 1.0), ("waiting_requests", 16, -1.0)],
)
def test_recompute_delay_names_the_bad_argument(field: str, batch: int, waiting: float) -> None:
    with pytest.raises(ValueError, match=field):
        recompute_delay(
            uncached_tokens=10,
            least_uncached_tokens=0,
            waiting_requests=waiting,
            max_tokens_per_batch=batch,
        )


@given(
    uncached=st.floats(0, 1e6),
    least=st.floats(0, 1e6),
    waiting=st.floats(0, 1e3),
    more=st.floats(0, 1e3),
    batch=st.integers(1, 1 << 16),
)
def test_recompute_delay_is_non_negative_and_grows_with_the_backlog(
    uncached: float, least: float, waiting: float, more: float, batch: int
) -> None:
    def delay(w: float) -> float:
        return recompute_delay(
            uncached_tokens=uncached,
            least_uncached_tokens=least,
            waiting_requests=w,
            max_tokens_per_batch=batch,
        )

    assert delay(waiting) >= 0.0
    assert delay(waiting + more) >= delay(waiting)
    if uncached <= least:  # the replica that saves the most is never charged
        assert delay(waiting) == 0.0


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


def test_on_an_idle_cluster_sal_is_greedy() -> None:
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


replica_states = st.builds(
    state,
    st.sampled_from(["a", "b", "c", "d"]),
    queued=st.floats(0, 1e5),
    unstarted=st.integers(0, 40),
    free=st.floats(-1e4, 1e6),
)


@given(st.lists(replica_states, min_size=1, max_size=6), st.integers(1, 130_000))
def test_without_cached_prefixes_all_three_sals_agree(
    replicas: list[ReplicaState], prompt: int
) -> None:
    request = RouteRequest(prompt_tokens=prompt)
    orders = [p(beta=256).rank(request, replicas) for p in (SalPolicy, SalGreedyPolicy)]
    orders.append(SalClassicPolicy(beta=256).rank(request, replicas))
    assert orders[0] == orders[1] == orders[2]


@given(
    st.lists(
        st.builds(
            state,
            st.sampled_from(["a", "b", "c"]),
            cached=st.integers(0, PROMPT),
            queued=st.floats(0, 1e5),
            free=st.floats(-1e4, 1e6),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_with_nobody_waiting_sal_is_greedy(replicas: list[ReplicaState]) -> None:
    assert SalPolicy(beta=256).rank(REQ, replicas) == SalGreedyPolicy(beta=256).rank(REQ, replicas)


@given(
    st.lists(
        st.builds(
            state,
            st.sampled_from(["a", "b", "c"]),
            cached=st.integers(0, PROMPT),
            queued=st.floats(0, 1e5),
            unstarted=st.integers(0, 40),
        ),
        min_size=2,
        max_size=6,
    )
)
def test_the_charge_only_moves_requests_towards_the_prefix(replicas: list[ReplicaState]) -> None:
    # where sal and sal-greedy disagree, sal's choice holds at least as much of the prompt
    sal = SalPolicy(beta=256).rank(REQ, replicas)[0]
    greedy = SalGreedyPolicy(beta=256).rank(REQ, replicas)[0]
    assert replicas[sal].cached_tokens >= replicas[greedy].cached_tokens or sal == greedy


def test_unstarted_counts_the_router_s_own_and_the_engine_s_other_waiting_requests() -> None:
    own = OwnLoad(
        inflight_requests=5,
        inflight_tokens=5000,
        prefill_requests=3,
        prefill_tokens=3000,
        since_poll_requests=1,
        since_poll_tokens=1000,
    )

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

    # the poll saw 6 waiting, 2 of them ours: 4 from elsewhere, plus our 3 without a first token
    assert unstarted(EngineStats(num_running=2, num_waiting=6, kv_usage=0.5)) == 7
    # stale stats: only what the router knows for sure
    assert unstarted(None) == 3
