"""Prefix-aware routing in the simulator: without prefix hashes SAL is exactly the classic SAL;
with them, the router's index steers repeats to the replica that holds their prefix."""

from __future__ import annotations

import random

import numpy as np

from halffull.sim.cluster import ClusterConfig, simulate
from halffull.sim.profiles import EngineShape, Profile, StepModel
from halffull.sim.workload import Job, LengthFit, prepare, synthetic

PROFILE = Profile(
    "test",
    "test",
    EngineShape(
        num_blocks=2000,
        block_size=16,
        max_num_batched_tokens=512,
        max_num_seqs=64,
        max_model_len=8192,
    ),
    StepModel(0.005, 1e-5, 2e-5, 0.0, 0.0, 2e-7, overlap=False),
)


def conversations(count: int = 240, seed: int = 3) -> list[Job]:
    """Multi-turn conversations: each turn's prompt is the previous prompt plus 1-3 blocks of
    512 tokens (chained ids shared with the earlier turn)."""
    rng = random.Random(seed)
    chats: list[tuple[int, ...]] = []
    next_id = 0
    jobs = []
    t = 0.0
    for _ in range(count):
        t += rng.expovariate(8.0)
        if chats and rng.random() < 0.7:
            i = rng.randrange(len(chats))
            base = chats[i]
        else:
            base, i = (), len(chats)
            chats.append(())
        added = tuple(range(next_id, next_id + rng.randint(1, 3)))
        next_id += len(added)
        prefix = base + added
        chats[i] = prefix
        if len(prefix) * 512 + 20 > 8192:
            chats[i] = ()
            continue
        jobs.append(Job(t, len(prefix) * 512, 20, prefix, 512))
    return jobs


def test_without_prefixes_sal_is_the_classic_sal() -> None:
    law = LengthFit(6.0, 0.8, 4.0, 0.8, 3000, 400, 1.0, 1.0)
    work = synthetic(law, count=200, rate=30.0, seed=2)
    a = simulate(work, ClusterConfig(PROFILE, replicas=3, router="sal", beta=256.0))
    for other in ("sal-classic", "sal-greedy"):
        b = simulate(work, ClusterConfig(PROFILE, replicas=3, router=other, beta=256.0))
        assert np.array_equal(a.ttft, b.ttft) and np.array_equal(a.replica, b.replica)
    assert a.hit_rate() == 0.0


def test_prefix_aware_sal_finds_more_cache_hits_than_round_robin() -> None:
    work = conversations()
    rr = simulate(work, ClusterConfig(PROFILE, replicas=4, router="round-robin"))
    sal = simulate(work, ClusterConfig(PROFILE, replicas=4, router="sal", beta=256.0))
    exact = simulate(
        work, ClusterConfig(PROFILE, replicas=4, router="sal", beta=256.0, prefix_source="engine")
    )
    assert sal.hit_rate() > 1.5 * rr.hit_rate() > 0
    assert exact.hit_rate() > 1.5 * rr.hit_rate()
    assert sal.ttft.mean() < rr.ttft.mean()
    for res in (rr, sal, exact):
        assert res.completed == len(work)


def test_the_recompute_charge_keeps_more_prefixes_under_a_backlog() -> None:
    # the conversations three times as fast: queues form, and the greedy SAL gives a held
    # prefix up for a shorter queue elsewhere more often than the charge allows
    work = prepare(conversations(), rate_scale=3.0)
    greedy = simulate(work, ClusterConfig(PROFILE, replicas=4, router="sal-greedy", beta=256.0))
    sal = simulate(work, ClusterConfig(PROFILE, replicas=4, router="sal", beta=256.0))
    assert sal.hit_rate() > greedy.hit_rate()
    assert sal.ttft.mean() < greedy.ttft.mean()
