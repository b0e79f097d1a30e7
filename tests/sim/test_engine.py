"""The modelled replica: vLLM's admission and preemption rules, KV and budget invariants."""

from __future__ import annotations

import numpy as np
import pytest

from halffull.sim.cluster import ClusterConfig, simulate
from halffull.sim.engine import AdmissionPolicy, Replica, SimRequest
from halffull.sim.profiles import EngineShape, Profile, StepModel
from halffull.sim.workload import Job, LengthFit, synthetic

ONE_SECOND = StepModel(
    overhead_s=1.0, seq_s=0.0, token_s=0.0, attn_s=0.0, weights_s=0.0, kv_s=0.0, overlap=False
)
# a realistic-looking cost so that load matters: 5 ms + per token + per KV token read
COSTS = StepModel(
    overhead_s=0.005, seq_s=1e-5, token_s=2e-5, attn_s=0.0, weights_s=0.0, kv_s=2e-7, overlap=False
)


def tiny(num_blocks: int = 100, **kw: int) -> EngineShape:
    args = {"block_size": 4, "max_num_batched_tokens": 8, "max_num_seqs": 4, "max_model_len": 64}
    args.update(kw)
    return EngineShape(num_blocks=num_blocks, **args)


def run_alone(replica: Replica, requests: list[SimRequest]) -> list[tuple[float, str]]:
    """Drive one replica by hand; returns (time, event) in order."""
    log: list[tuple[float, str]] = []
    pending = sorted(requests, key=lambda r: r.arrival)
    now = 0.0
    while pending or replica.has_work:
        end = replica.end_at
        if pending and (end is None or pending[0].arrival < end):
            req = pending.pop(0)
            now = req.arrival
            replica.add(req, now)
            if replica.end_at is None:
                replica.plan(now)
            continue
        assert end is not None
        now = end
        result = replica.complete()
        log += [(now, f"first {r.rid}") for r in result.first_tokens]
        log += [(now, f"done {r.rid}") for r in result.finished]
        replica.plan(now)
    return log


def test_fcfs_timeline_matches_hand_computation() -> None:
    # budget 8 tokens/step, 1 s per step. Request 0: prompt 6, 3 outputs, at t=0.
    # Request 1: prompt 4, 2 outputs, at t=0.5. Request 2: prompt 10 (two chunks), 1 output, t=0.6.
    # t=0-1: r0 prefill 6                      -> r0 first token at 1
    # t=1-2: r0 decode 1, r1 prefill 4, r2 chunk 3 (budget 8 - 1 - 4)  -> r1 first token at 2
    # t=2-3: r0 decode, r1 decode, r2 chunk 6   -> r0 done (3 tokens), r1 done (2 tokens)
    # t=3-4: r2 last prompt token (10 - 9 = 1)  -> r2 first token = its only token: done at 4
    replica = Replica(tiny(), ONE_SECOND)
    reqs = [SimRequest(0, 0.0, 6, 3), SimRequest(1, 0.5, 4, 2), SimRequest(2, 0.6, 10, 1)]
    log = run_alone(replica, reqs)
    assert log == [
        (1.0, "first 0"),
        (2.0, "first 1"),
        (3.0, "done 0"),
        (3.0, "done 1"),
        (4.0, "first 2"),
        (4.0, "done 2"),
    ]
    assert [r.first_token_at - r.arrival for r in reqs] == [1.0, 1.5, 3.4]
    assert replica.steps == 4


@pytest.mark.parametrize(
    ("policy", "running", "waiting"),
    [
        # vLLM's head-of-line blocking: r2 would fit but stays behind r1
        ("fcfs", [0], [1, 2]),
        # LARRY with a small alpha: the memory term puts r2 first, and it fits
        ("larry", [0, 2], [1]),
    ],
)
def test_admission_when_the_head_does_not_fit(
    policy: AdmissionPolicy, running: list[int], waiting: list[int]
) -> None:
    # 6 blocks of 4 tokens. r0 (20 tokens = 5 blocks) runs; r1 (8 tokens) waits at the head and
    # does not fit; r2 (2 tokens) would fit.
    shape = tiny(num_blocks=6, max_num_batched_tokens=64, max_model_len=24)
    replica = Replica(shape, ONE_SECOND, policy=policy, alpha=0.01)
    r0, r1, r2 = SimRequest(0, 0.0, 19, 4), SimRequest(1, 0.1, 8, 1), SimRequest(2, 0.2, 2, 1)
    replica.add(r0, 0.0)
    replica.plan(0.0)
    replica.complete()
    replica.add(r1, 1.0)
    replica.add(r2, 1.0)
    replica.plan(1.0)
    assert [r.rid for r in replica.running] == running
    assert [r.rid for r in replica.waiting] == waiting


def test_preemption_recomputes_the_newest_request_when_decode_runs_out_of_blocks() -> None:
    # 4 blocks of 4 tokens: two requests of 7 prompt tokens take 2 blocks each; the first decode
    # needing an 3rd block preempts the newest (last running), which starts over later.
    replica = Replica(tiny(num_blocks=4, max_num_batched_tokens=16, max_model_len=16), ONE_SECOND)
    a, b = SimRequest(0, 0.0, 7, 4), SimRequest(1, 0.0, 7, 4)
    log = run_alone(replica, [a, b])
    assert b.preemptions >= 1 and a.preemptions == 0
    assert replica.num_preemptions == a.preemptions + b.preemptions
    assert a.finished_at < b.finished_at
    assert ("done 1" in {e for _, e in log}) and replica.max_used_blocks <= 4


def test_plugin_gauges_count_the_prefill_left_as_vllm_schedules_it() -> None:
    # What the LARRY plugin exports (halffull.engine.scheduler): waiting requests' tokens not yet
    # computed plus running requests' prompt tokens not yet computed, where vLLM counts a step's
    # tokens as computed when it schedules the step; free KV = free blocks x block size.
    replica = Replica(tiny(), ONE_SECOND)  # 100 blocks of 4 tokens, 8 tokens per step
    r0, r1, r2 = SimRequest(0, 0.0, 6, 3), SimRequest(1, 0.0, 4, 2), SimRequest(2, 0.0, 10, 1)
    for req in (r0, r1, r2):
        replica.add(req, 0.0)
    assert replica.waiting_prefill_tokens == 20
    assert replica.free_kv_tokens_at(0.0) == 400
    replica.plan(0.0)  # r0's 6 prompt tokens, r1's first 2; r2 waits
    assert replica.waiting_prefill_tokens == 2 + 10
    assert replica.free_kv_tokens_at(0.5) == (100 - 3) * 4
    assert replica.free_kv_tokens_at(0.5) == 400 * (1 - replica.kv_usage_at(0.5))
    replica.complete()
    replica.plan(1.0)  # r0 decodes, r1's last 2, r2's first 5
    assert replica.waiting_prefill_tokens == 10 - 5


def test_plugin_gauge_counts_a_preempted_request_whole() -> None:
    # as in the preemption test above: b is preempted and must recompute prompt and output
    replica = Replica(tiny(num_blocks=4, max_num_batched_tokens=16, max_model_len=16), ONE_SECOND)
    a, b = SimRequest(0, 0.0, 7, 4), SimRequest(1, 0.0, 7, 4)
    replica.add(a, 0.0)
    replica.add(b, 0.0)
    now = replica.plan(0.0)
    while b.preemptions == 0:
        assert now is not None
        replica.complete()
        now = replica.plan(now)
    assert b in replica.waiting and b.generated > 0
    assert replica.waiting_prefill_tokens == b.prompt + b.generated


LAW = LengthFit(prompt_mu=5.5, prompt_sigma=0.9, output_mu=4.5, output_sigma=0.8,
                prompt_max=3000, output_max=600, rate=1.0, cv=1.0)  # fmt: skip


def loaded(count: int = 400, rate: float = 30.0, cv: float = 1.0, seed: int = 3) -> list[Job]:
    return synthetic(LAW, count=count, rate=rate, cv=cv, seed=seed)


def small_profile(num_blocks: int) -> Profile:
    shape = EngineShape(
        num_blocks=num_blocks,
        block_size=16,
        max_num_batched_tokens=512,
        max_num_seqs=64,
        max_model_len=num_blocks * 16,
    )
    return Profile("test", "test", shape, COSTS)


@pytest.mark.parametrize("admission", ["fcfs", "larry", "larry-literal", "sjf-oracle"])
@pytest.mark.parametrize("fast", [True, False])
def test_invariants_under_kv_pressure(admission: str, fast: bool) -> None:
    profile = small_profile(num_blocks=300)  # 4,800 KV tokens: far less than the load needs
    jobs = loaded()
    res = simulate(
        jobs,
        ClusterConfig(profile, admission=admission, alpha=0.05, fast=fast),  # type: ignore[arg-type]
    )
    assert res.completed == len(jobs)  # every request completes
    assert max(res.max_used_blocks) <= profile.shape.num_blocks  # KV never over capacity
    assert 0 < max(res.max_step_tokens) <= profile.shape.max_num_batched_tokens  # token budget
    assert res.preemptions.sum() > 0  # KV is short: vLLM would preempt, and so do we
    assert (res.ttft > 0).all() and (res.ttft <= res.tgt).all()


@pytest.mark.parametrize("admission", ["fcfs", "larry"])
def test_stretches_give_the_same_results_as_single_steps(admission: str) -> None:
    profile = small_profile(num_blocks=400)
    jobs = loaded(count=300, rate=20.0, cv=3.0)
    # beta 1: SAL then ignores memory, and this load preempts (beta 256 would avoid it)
    config = ClusterConfig(
        profile, replicas=3, router="sal", beta=1.0, admission=admission, alpha=0.1
    )  # type: ignore[arg-type]
    fast = simulate(jobs, config)
    slow = simulate(jobs, ClusterConfig(**{**_fields(config), "fast": False}))
    assert fast.preemptions.sum() > 0
    np.testing.assert_array_equal(fast.replica, slow.replica)
    np.testing.assert_array_equal(fast.preemptions, slow.preemptions)
    np.testing.assert_allclose(fast.ttft, slow.ttft, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(fast.tgt, slow.tgt, rtol=1e-9, atol=1e-9)
    assert fast.steps == slow.steps


def _fields(config: ClusterConfig) -> dict[str, object]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


def test_max_model_len_is_enforced() -> None:
    replica = Replica(tiny(), ONE_SECOND)
    with pytest.raises(ValueError, match="max_model_len"):
        replica.add(SimRequest(0, 0.0, 60, 10), 0.0)
