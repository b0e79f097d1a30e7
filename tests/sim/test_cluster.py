"""The cluster loop runs the production dispatcher (policy, accounting), deterministically."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

import halffull.policy.larry
import halffull.sim.engine
from halffull.policy import routing
from halffull.policy.endpoints import Endpoint
from halffull.policy.registry import ROUTING_POLICIES
from halffull.sim.cluster import ClusterConfig, simulate
from halffull.sim.profiles import EngineShape, Profile, StepModel
from halffull.sim.workload import Job, LengthFit, synthetic

COSTS = StepModel(
    overhead_s=0.005, seq_s=1e-5, token_s=2e-5, attn_s=0.0, weights_s=0.0, kv_s=2e-7, overlap=False
)
PROFILE = Profile(
    "test",
    "test",
    EngineShape(
        num_blocks=600,
        block_size=16,
        max_num_batched_tokens=512,
        max_num_seqs=64,
        max_model_len=9600,
    ),
    COSTS,
)
LAW = LengthFit(5.5, 0.9, 4.5, 0.8, 3000, 600, 1.0, 1.0)


def jobs(count: int = 300, rate: float = 40.0, seed: int = 5) -> list[Job]:
    return synthetic(LAW, count=count, rate=rate, seed=seed)


def test_engine_uses_the_policy_module_order_function(monkeypatch: pytest.MonkeyPatch) -> None:
    assert halffull.sim.engine.order is halffull.policy.larry.order
    calls: list[int] = []
    real = halffull.policy.larry.order

    def spy(requests: Sequence[Any], **kw: Any) -> list[int]:
        calls.append(len(requests))
        return real(requests, **kw)

    monkeypatch.setattr(halffull.sim.engine, "order", spy)
    simulate(jobs(), ClusterConfig(PROFILE, admission="larry", alpha=0.1))
    assert calls and max(calls) >= 2
    calls.clear()
    simulate(jobs(), ClusterConfig(PROFILE, admission="fcfs"))
    assert calls == []  # FCFS leaves vLLM's queue alone, like the plugin


def test_router_calls_the_policy_class_and_endpoint_accounting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ranked: list[int] = []
    dispatched: list[int] = []
    real_rank, real_dispatch = routing.SalPolicy.rank, Endpoint.dispatch

    def rank(self: routing.SalPolicy, request: routing.RouteRequest, replicas: Any) -> list[int]:
        ranked.append(len(replicas))
        return real_rank(self, request, replicas)

    def dispatch(self: Endpoint, tokens: int, stream: bool) -> Any:
        dispatched.append(tokens)
        return real_dispatch(self, tokens, stream)

    monkeypatch.setattr(routing.SalPolicy, "rank", rank)
    monkeypatch.setattr(Endpoint, "dispatch", dispatch)
    work = jobs(count=120)
    simulate(work, ClusterConfig(PROFILE, replicas=3, router="sal", beta=2.0))
    assert ranked == [3] * len(work)
    assert dispatched == [j.prompt for j in work]


def test_every_routing_policy_runs_and_completes() -> None:
    work = jobs(count=150)
    for name in ROUTING_POLICIES:
        res = simulate(work, ClusterConfig(PROFILE, replicas=3, router=name, seed=1))
        assert res.completed == len(work), name
        assert set(res.replica.tolist()) == {0, 1, 2}, name


def test_dispatch_accounting_spreads_a_burst_between_polls() -> None:
    # 12 equal requests at the same instant, polls far apart: only the router's own accounting
    # tells SAL that a replica already got work. Without it they would all go to one replica.
    burst = [Job(0.0, 500, 20) for _ in range(12)]
    res = simulate(burst, ClusterConfig(PROFILE, replicas=4, router="sal", poll_s=10.0))
    assert np.bincount(res.replica, minlength=4).tolist() == [3, 3, 3, 3]


def test_same_seed_same_result_and_seed_matters_for_random_routing() -> None:
    work = jobs()
    config = ClusterConfig(PROFILE, replicas=4, router="random", seed=7, admission="larry")
    a, b = simulate(work, config), simulate(work, config)
    np.testing.assert_array_equal(a.replica, b.replica)
    np.testing.assert_array_equal(a.ttft, b.ttft)
    np.testing.assert_array_equal(a.tgt, b.tgt)
    c = simulate(work, ClusterConfig(PROFILE, replicas=4, router="random", seed=8))
    assert not np.array_equal(a.replica, c.replica)


def test_larry_lowers_median_ttft_under_a_long_queue() -> None:
    # Overload a single replica: with a small alpha LARRY serves small prompts first.
    work = synthetic(LAW, count=400, rate=60.0, seed=11)
    fcfs = simulate(work, ClusterConfig(PROFILE, admission="fcfs"))
    larry = simulate(work, ClusterConfig(PROFILE, admission="larry", alpha=0.01))
    assert np.median(larry.ttft) < np.median(fcfs.ttft)
