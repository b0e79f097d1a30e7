"""The simulator's prefix cache (halffull.sim.kvcache) and its use at admission, after vLLM 0.32's
BlockPool / KVCacheManager: chained keys, hits up to prompt - 1 tokens, LRU eviction of freed
blocks tail first, shared blocks counted once, the full-sequence admission check."""

from __future__ import annotations

import pytest

from halffull.sim.engine import Replica, SimRequest
from halffull.sim.kvcache import BlockPool, block_keys
from halffull.sim.profiles import EngineShape, StepModel

MODEL = StepModel(1e-3, 0.0, 1e-5, 0.0, 0.0, 0.0, overlap=False)


def test_block_keys_follow_the_chain() -> None:
    # hash blocks of 4 tokens, engine blocks of 2: two engine blocks per chained id
    assert block_keys([7, 9], 4, 2, 8) == [14, 15, 18, 19]
    assert block_keys([7, 9], 4, 2, 7) == [14, 15, 18]  # the partial last block has no key
    assert block_keys([], 4, 2, 8) == []
    with pytest.raises(ValueError, match="multiple"):
        block_keys([1], 4, 3, 8)


def test_pool_hits_evicts_lru_and_counts_shared_blocks_once() -> None:
    pool = BlockPool(4)
    pool.allocate(2)
    assert pool.register(10) and pool.register(11)
    assert not pool.register(10)  # a duplicate stays anonymous
    pool.touch([10])  # a second request shares block 10
    assert pool.used == 2
    pool.release([10], 0)
    assert pool.used == 2  # still held by the first
    pool.release([10, 11], 0)  # freed tail first: 11 then 10
    assert pool.used == 0 and pool.cached == 2 and pool.lookup([10, 11], 2) == 2
    pool.allocate(2)  # the two never-used blocks go first
    assert pool.cached == 2
    pool.allocate(1)  # then the least recently freed: 11 (freed before 10)
    assert pool.lookup([10], 1) == 1 and pool.lookup([11], 1) == 0
    assert pool.evictions == 1
    with pytest.raises(ValueError):
        pool.allocate(2)


def test_touch_takes_a_free_cached_block_out_of_the_queue() -> None:
    pool = BlockPool(2)
    pool.allocate(1)
    pool.register(5)
    pool.release([5], 0)
    pool.touch([5])
    assert pool.used == 1
    pool.allocate(1)  # the other block, not 5
    assert pool.lookup([5], 1) == 1 and pool.free == 0


def replica(blocks: int = 64) -> Replica:
    shape = EngineShape(num_blocks=blocks, block_size=4, max_num_batched_tokens=64)
    return Replica(shape, MODEL)


def run(rep: Replica, reqs: list[SimRequest]) -> None:
    now = 0.0
    for r in reqs:
        rep.add(r, now)
    end = rep.plan(now)
    while end is not None:
        now = end
        rep.complete()
        end = rep.plan(now)


def test_a_repeated_prompt_hits_all_but_its_last_token() -> None:
    rep = replica()
    keys = list(range(4))  # 16 tokens, 4 full blocks
    first = SimRequest(0, 0.0, 16, 2, keys=list(keys))
    run(rep, [first])
    assert first.cached_tokens == 0 and rep.pool.cached == 4
    second = SimRequest(1, 0.0, 16, 2, keys=list(keys))
    assert rep.cached_prefix_blocks(second) == 3  # at most prompt - 1 tokens: 3 blocks
    run(rep, [second])
    assert second.cached_tokens == 12
    assert rep.used_blocks == 0 and rep.pool.hits == 3


def test_admission_counts_only_uncached_blocks() -> None:
    # 8 blocks: a 24-token prompt (6 blocks) is cached; a second request with the same 24-token
    # prefix and 8 more tokens needs 8 blocks in all but only 3 new ones (5 hit + 3), plus the
    # 5 cached ones it takes back from the free queue: 8 <= 8 free, admitted
    rep = replica(8)
    run(rep, [SimRequest(0, 0.0, 24, 1, keys=list(range(6)))])
    second = SimRequest(1, 0.0, 32, 1, keys=[*range(6), 100, 101])
    assert rep.blocks_to_admit(second) == 8 - 6 + 6
    run(rep, [second])
    assert second.cached_tokens == 24 and second.finished_at > 0


def test_requests_without_keys_share_nothing() -> None:
    rep = replica()
    a, b = SimRequest(0, 0.0, 16, 2), SimRequest(1, 0.0, 16, 2)
    run(rep, [a, b])
    assert rep.pool.cached == 0 and b.cached_tokens == 0


def test_preempted_request_finds_its_own_blocks_again() -> None:
    # 6 blocks of 4: two requests of 8 prompt tokens and 12 outputs each outgrow the cache
    rep = replica(6)
    a = SimRequest(0, 0.0, 8, 12, keys=[1, 2])
    b = SimRequest(1, 0.0, 8, 12, keys=[3, 4])
    run(rep, [a, b])
    assert a.finished_at > 0 and b.finished_at > 0
    assert a.preemptions + b.preemptions >= 1
    assert rep.pool.hits >= 1  # the victim re-admitted onto its cached prompt blocks
    assert rep.used_blocks == 0


def test_uncached_free_blocks_are_handed_out_before_any_cached_one() -> None:
    # vLLM prepends freed blocks without a hash to the free queue and appends cached ones
    pool = BlockPool(3)
    pool.allocate(1)
    pool.register(5)
    pool.release([5], 0)  # cached, free
    pool.allocate(1)
    pool.release([], 1)  # freed later, but without a key
    pool.allocate(2)  # both uncached blocks: 5 survives
    assert pool.lookup([5], 1) == 1
    pool.allocate(1)
    assert pool.lookup([5], 1) == 0 and pool.evictions == 1
