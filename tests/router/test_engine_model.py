"""The replica model behind the fake engine and the policy benchmark."""

from __future__ import annotations

import pytest

from halffull_dev.testing.engine_model import EngineModel, EngineShape, StepCosts


def run_until_idle(m: EngineModel, now: float = 0.0, limit: int = 10_000) -> float:
    for _ in range(limit):
        if not m.has_work:
            return now
        now += m.schedule(now)
        m.complete(now)
    raise AssertionError("the model did not drain")


def test_chunked_prefill_then_one_token_per_step() -> None:
    m = EngineModel(shape=EngineShape(max_num_batched_tokens=100, max_model_len=4096))
    m.add("a", 250, 3, 0.0)
    firsts = []
    for step in range(6):
        m.schedule(float(step))
        events = m.complete(float(step))
        firsts.append([(e.new_tokens, e.first, e.finished) for e in events])
    # 250 prompt tokens at 100 per step: the first token comes with the third step
    assert firsts == [[], [], [(1, True, False)], [(1, False, False)], [(1, False, True)], []]
    assert m.prompt_tokens_total == 250 and m.generation_tokens_total == 3
    assert m.used_blocks == 0 and not m.has_work


def test_step_time_follows_the_token_load() -> None:
    costs = StepCosts(step_base_s=0.01, prefill_token_s=0.001, decode_seq_s=0.002, kv_token_s=1e-5)
    m = EngineModel(shape=EngineShape(max_num_batched_tokens=1000), costs=costs)
    m.add("a", 100, 5, 0.0)
    m.add("b", 300, 5, 0.0)
    assert m.schedule(0.0) == pytest.approx(0.01 + 0.4 + 1e-5 * 400)
    m.complete(1.0)
    # both decode now: 2 sequences, reading 101 + 301 KV tokens
    assert m.schedule(1.0) == pytest.approx(0.01 + 2 * 0.002 + 1e-5 * 402)


def test_fcfs_admission_stops_at_the_first_request_that_does_not_fit() -> None:
    shape = EngineShape(
        num_gpu_blocks=10, block_size=16, max_num_batched_tokens=1000, max_model_len=160
    )
    m = EngineModel(shape=shape)
    m.add("big", 100, 20, 0.0)  # 7 blocks
    m.add("bigger", 60, 5, 0.0)  # 4 blocks: does not fit beside the first
    m.add("small", 10, 5, 0.0)  # would fit, but FCFS stops at "bigger"
    m.schedule(0.0)
    assert (m.num_running, m.num_waiting) == (1, 2)
    assert m.kv_usage == pytest.approx(0.7)


def test_decode_out_of_blocks_preempts_the_newest_and_everything_finishes() -> None:
    shape = EngineShape(
        num_gpu_blocks=8, block_size=16, max_num_batched_tokens=512, max_model_len=128
    )
    m = EngineModel(shape=shape)
    for i in range(3):
        m.add(f"r{i}", 30, 60, 0.0)  # each grows to 90 tokens = 6 blocks; 8 blocks in all
    run_until_idle(m)
    assert m.num_preemptions > 0
    assert sorted(r.req_id for r in m.finished) == ["r0", "r1", "r2"]
    assert all(r.generated == 60 for r in m.finished)
    assert m.used_blocks == 0


def test_abort_frees_blocks_and_forgets_the_request() -> None:
    m = EngineModel()
    m.add("a", 64, 10, 0.0)
    m.schedule(0.0)
    m.complete(0.0)
    assert m.used_blocks > 0
    assert m.abort("a") and not m.abort("a")
    assert m.used_blocks == 0 and not m.has_work and m.aborted_total == 1


def test_requests_over_the_model_length_are_refused() -> None:
    m = EngineModel(shape=EngineShape(max_model_len=100, num_gpu_blocks=100))
    with pytest.raises(ValueError, match="maximum length"):
        m.add("a", 90, 20, 0.0)
    with pytest.raises(ValueError):
        EngineShape(num_gpu_blocks=1, block_size=16, max_model_len=100)
