"""The cluster loop runs the production dispatcher (policy, accounting), deterministically."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from halffull.policy import endpoints, routing
from halffull.policy.endpoints import Endpoint
from halffull.policy.larry_queue import WaitingIndex
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


def test_engine_uses_the_policy_module_head_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = WaitingIndex.select

    def spy(self: WaitingIndex[Any], **kw: Any) -> list[Any]:
        calls.append(len(self))
        return real(self, **kw)

    monkeypatch.setattr(WaitingIndex, "select", spy)
    simulate(jobs(), ClusterConfig(PROFILE, admission="larry", alpha=0.1))
    assert calls and max(calls) >= 2
    calls.clear()
    simulate(jobs(), ClusterConfig(PROFILE, admission="fcfs"))
    assert calls == []  # FCFS leaves vLLM's queue alone, like the plugin


def test_tail_bound_caps_the_wait_larry_adds() -> None:
    # overloaded: FCFS's median TTFT is about 6.5 s here, its worst about 13.6 s
    work = jobs(count=400, rate=40.0)
    fcfs = simulate(work, ClusterConfig(PROFILE, admission="fcfs"))
    unbounded = simulate(work, ClusterConfig(PROFILE, admission="larry", alpha=0.0))
    bounded = simulate(work, ClusterConfig(PROFILE, admission="larry", alpha=0.0, max_wait=10.0))

    worst = {name: r.ttft.max() for name, r in (("f", fcfs), ("u", unbounded), ("b", bounded))}
    assert worst["u"] > worst["f"]  # plain LARRY at alpha 0 starves large prompts
    assert worst["b"] < worst["u"] and worst["b"] < 1.1 * worst["f"]
    assert 2 * np.median(bounded.ttft) < np.median(fcfs.ttft)


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
    # A long prompt and eleven short ones at the same instant, polls far apart: only the router's
    # own accounting tells SAL that a replica already got work. With it, the short ones fill the
    # other three replicas and none queues behind the long one; without it every replica looks
    # idle and tied, and the tie-breaking rotation gives each three (so equal requests, as this
    # test used, could not tell the two apart).
    burst = [Job(0.0, 3000, 20)] + [Job(0.0, 500, 20) for _ in range(11)]
    res = simulate(burst, ClusterConfig(PROFILE, replicas=4, router="sal", poll_s=10.0))
    counts = np.bincount(res.replica, minlength=4).tolist()
    long_one = int(res.replica[0])
    assert counts[long_one] == 1
    assert sorted(c for i, c in enumerate(counts) if i != long_one) == [3, 4, 4]


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


def test_plugin_gauges_reach_the_router_estimate_and_change_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # gauges="plugin": every fresh poll carries the exact gauges into the router's own
    # estimate_replica, and the queued tokens it gives differ from what the same poll without
    # them (vLLM's /metrics alone) gives; gauges="vllm": no poll carries them.
    seen: dict[str, list[tuple[routing.EngineStats, float, float]]] = {"vllm": [], "plugin": []}
    real = routing.estimate_replica
    view = "vllm"

    def spy(**kw: Any) -> routing.ReplicaState:
        state = real(**kw)
        stats = kw["stats"]
        if stats is not None and kw["fresh"]:
            bare = dataclasses.replace(stats, waiting_prefill_tokens=None, free_kv_tokens=None)
            vllm_view = real(**{**kw, "stats": bare})
            seen[view].append((stats, state.queued_tokens, vllm_view.queued_tokens))
        return state

    monkeypatch.setattr(endpoints, "estimate_replica", spy)
    work = jobs(count=200, rate=60.0)
    results = {}
    for view in ("vllm", "plugin"):
        config = ClusterConfig(PROFILE, replicas=3, router="sal", gauges=view)  # type: ignore[arg-type]
        results[view] = simulate(work, config)
    assert seen["vllm"] and seen["plugin"]
    assert all(s.waiting_prefill_tokens is None for s, _, _ in seen["vllm"])
    assert all(s.free_kv_tokens is None for s, _, _ in seen["vllm"])
    assert all(s.waiting_prefill_tokens is not None for s, _, _ in seen["plugin"])
    assert all(s.free_kv_tokens is not None for s, _, _ in seen["plugin"])
    differ = [(exact, est) for _, exact, est in seen["plugin"] if abs(exact - est) > 0.5]
    assert len(differ) > len(seen["plugin"]) // 10
    # ... and so SAL routes differently
    assert not np.array_equal(results["vllm"].replica, results["plugin"].replica)
