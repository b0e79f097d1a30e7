"""Driving one modelled replica step by step, as the fake engine does in real time: token
events, counters, queue times and aborts."""

from __future__ import annotations

import pytest

from halffull.sim.engine import Replica, SimRequest
from halffull.sim.profiles import EngineShape, StepModel

ROOMY = EngineShape(num_blocks=8192, block_size=16, max_num_batched_tokens=100)
INSTANT = StepModel.flat()


def step(rep: Replica, now: float) -> list[tuple[int, int, bool]]:
    """One step at `now`: (request id, new tokens, finished) for each request that got tokens."""
    assert rep.plan(now) is not None
    result = rep.complete()
    return [(r.rid, result.steps, r.finished_at >= 0) for r in result.produced]


def test_chunked_prefill_then_one_token_per_step() -> None:
    rep = Replica(ROOMY, INSTANT, fast=False)
    rep.add(SimRequest(0, 0.0, 250, 3), 0.0)
    # 250 prompt tokens at 100 per step: the first token comes with the third step
    events = [step(rep, float(t)) for t in range(5)]
    assert events == [[], [], [(0, 1, False)], [(0, 1, False)], [(0, 1, True)]]
    assert rep.plan(5.0) is None
    assert (rep.prompt_tokens_total, rep.generation_tokens_total) == (250, 3)
    assert rep.used_blocks == 0 and not rep.has_work


def test_step_time_follows_the_token_load() -> None:
    model = StepModel(
        overhead_s=0.01, seq_s=0.002, token_s=0.001, attn_s=0.0, weights_s=0.0, kv_s=1e-5,
        overlap=False,
    )  # fmt: skip
    rep = Replica(EngineShape(num_blocks=8192, max_num_batched_tokens=1000), model, fast=False)
    rep.add(SimRequest(0, 0.0, 100, 5), 0.0)
    rep.add(SimRequest(1, 0.0, 300, 5), 0.0)
    assert rep.plan(0.0) == pytest.approx(0.01 + 2 * 0.002 + 0.4 + 1e-5 * 400)
    rep.complete()
    # both decode now: 2 sequences, 2 tokens, reading 101 + 301 KV tokens
    assert rep.plan(1.0) == pytest.approx(1.0 + 0.01 + 2 * 0.002 + 0.002 + 1e-5 * 402)


def test_queue_time_ends_at_the_first_admission() -> None:
    shape = EngineShape(num_blocks=64, block_size=16, max_num_seqs=1, max_model_len=1024)
    rep = Replica(shape, StepModel.flat(1.0), fast=False)
    first, second = SimRequest(0, 0.0, 10, 2), SimRequest(1, 0.0, 10, 1)
    rep.add(first, 0.0)
    rep.add(second, 0.0)
    now = 0.0
    while rep.has_work:
        end = rep.plan(now)
        assert end is not None
        rep.complete()
        now = end
    assert (first.scheduled_at, second.scheduled_at) == (0.0, 2.0)
    assert (second.first_token_at, second.finished_at) == (3.0, 3.0)


@pytest.mark.parametrize("where", ["waiting", "in the step", "between steps"])
def test_abort_frees_blocks_and_forgets_the_request(where: str) -> None:
    rep = Replica(ROOMY, StepModel.flat(1.0), fast=False)
    req, other = SimRequest(0, 0.0, 64, 10), SimRequest(1, 0.0, 16, 10)
    rep.add(other, 0.0)
    rep.add(req, 0.0)
    if where == "waiting":
        rep.waiting.rotate(1)  # req first in the queue, still waiting
        assert rep.abort(req)
        assert rep.plan(0.0) is not None and rep.complete().produced == [other]
    else:
        rep.plan(0.0)
        if where == "between steps":
            rep.complete()
            assert rep.abort(req)
            rep.plan(1.0)
        else:
            assert rep.abort(req)  # leaves when the step it is in completes
        assert rep.complete().produced == [other]
    assert not rep.abort(req) and rep.aborted_total == 1
    assert req.blocks == 0 and req.finished_at < 0
    assert rep.used_blocks == other.blocks and rep.num_running + rep.num_waiting == 1


def test_abort_returns_shared_prefix_blocks_to_the_cache() -> None:
    rep = Replica(ROOMY, StepModel.flat(1.0), fast=False)
    keys = list(range(8))  # 8 full blocks of 16 tokens
    first, second = SimRequest(0, 0.0, 128, 4, keys=keys), SimRequest(1, 0.0, 128, 4, keys=keys)
    rep.add(first, 0.0)
    rep.plan(0.0)
    rep.complete()  # the prompt is computed and its 8 blocks cached
    rep.add(second, 1.0)
    rep.plan(1.0)  # second is admitted with 7 blocks hit (the last token is recomputed)
    assert second.cached_tokens == 7 * 16
    assert (rep.prefix_queries_total, rep.prefix_hits_total) == (256, 112)
    assert rep.abort(second) and rep.abort(first)
    rep.complete()
    assert rep.used_blocks == 0 and not rep.has_work
    assert rep.pool.cached >= 8  # freed, still cached for the next request


def test_a_finished_request_cannot_be_aborted() -> None:
    rep = Replica(ROOMY, INSTANT, fast=False)
    req = SimRequest(0, 0.0, 10, 1)
    rep.add(req, 0.0)
    assert step(rep, 0.0) == [(0, 1, True)]
    assert not rep.abort(req) and rep.aborted_total == 0


def test_requests_over_the_model_length_are_refused() -> None:
    rep = Replica(EngineShape(num_blocks=100, max_model_len=100), INSTANT)
    with pytest.raises(ValueError, match="max_model_len"):
        rep.add(SimRequest(0, 0.0, 90, 20), 0.0)
