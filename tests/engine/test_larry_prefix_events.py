"""The seam LARRY's event-driven uncached blocks ride on, against vLLM's real `BlockPool`.

`halffull.engine.prefix_events` hooks the pool's hash map; this drives a real pool the way the
scheduler does (new blocks, caching full blocks, prefix hits, frees in eviction order, reuse that
evicts, a promoted partial block, a cache reset) and checks after every operation that the
counts kept from the hook's events equal fresh `get_cached_block` lookups. If a vLLM upgrade
changed where the cache changes, this fails."""

from __future__ import annotations

import random
from typing import Any

import pytest

pytestmark = pytest.mark.engine

BS = 4


def make_pool_and_requests(n: int, seed: int) -> tuple[Any, list[Any]]:
    from vllm import SamplingParams
    from vllm.utils.hashing import sha256
    from vllm.v1.core.block_pool import BlockPool
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.request import Request

    init_none_hash(sha256)
    hasher = get_request_block_hasher(BS, sha256)
    rng = random.Random(seed)
    stems = [[rng.randrange(100) for _ in range(3 * BS)] for _ in range(3)]
    requests = []
    for i in range(n):  # prompts of 2-6 blocks, most sharing one of three stems
        stem = stems[i % 3][: rng.randint(0, 3) * BS]
        ids = stem + [rng.randrange(100) for _ in range(rng.randint(2, 6) * BS - len(stem))]
        requests.append(
            Request(f"r{i}", ids, SamplingParams(max_tokens=4), None, block_hasher=hasher)
        )
    return BlockPool(16, enable_caching=True, hash_block_size=BS), requests


def fresh_hit(pool: Any, hashes: list[bytes]) -> int:
    hit = 0
    while hit < len(hashes) and pool.get_cached_block(hashes[hit], [0]) is not None:
        hit += 1
    return hit


@pytest.mark.parametrize("group_keys", [False, True], ids=["block-hashes", "group-keys"])
@pytest.mark.parametrize("seed", range(6))
def test_event_driven_hits_equal_fresh_lookups_on_vllms_block_pool(
    seed: int, group_keys: bool
) -> None:
    """Keyed by block hash (any number of KV cache groups) or by the map's own keys of group 0
    (the plugin's choice with one group): the same counts."""
    from halffull.engine.prefix_events import BlockPoolEvents, GroupKeys
    from halffull.policy.larry_prefix import PrefixWatch

    pool, requests = make_pool_and_requests(12, seed)

    def cached(h: bytes) -> bool:
        if group_keys:  # the map may have been replaced (a reset): look it up each time
            return pool.cached_block_hash_to_block.get_one_block(h) is not None
        return pool.get_cached_block(h, [0]) is not None

    def keys(r: Any) -> Any:
        return GroupKeys(r.block_hashes, len(r.block_hashes)) if group_keys else r.block_hashes

    watch: PrefixWatch[bytes] = PrefixWatch(cached)
    events = BlockPoolEvents(pool, watch, group_keys=group_keys)
    rng = random.Random(seed)
    waiting = dict(enumerate(requests[:8]))  # slot -> request
    for slot, r in waiting.items():
        watch.watch(slot, keys(r))
    rekeyed = 0
    held: dict[int, list[Any]] = {}  # running requests' blocks
    compared = 0
    for _ in range(200):
        op = rng.random()
        r_i = rng.randrange(len(requests))
        r = requests[r_i]
        if op < 0.45 and r_i not in held:
            # admit: take the cached run (touch), allocate the rest, cache the full blocks
            hit = fresh_hit(pool, r.block_hashes)
            cached = [pool.get_cached_block(h, [0])[0] for h in r.block_hashes[:hit]]
            need = len(r.block_hashes) - hit
            if need + sum(b.ref_cnt == 0 for b in cached) > pool.get_num_free_blocks():
                continue
            pool.touch(cached)
            blocks = cached + pool.get_new_blocks(need)
            pool.cache_full_blocks(r, blocks, hit, len(blocks), BS, 0)
            held[r_i] = blocks
        elif op < 0.85 and held:
            done = rng.choice(sorted(held))
            pool.free_blocks(reversed(held.pop(done)))  # tail first, as vLLM frees
        elif op < 0.9 and held:
            # a block whose hash is replaced (the promotion path of cache_full_blocks)
            blk = held[rng.choice(sorted(held))][-1]
            pool.evict_blocks({blk.block_id})
        elif op < 0.95 and not held:
            assert pool.reset_prefix_cache()
        else:  # the waiting set changes: one leaves, another enters
            slot = rng.randrange(8)
            watch.unwatch(slot)
            waiting[slot] = requests[rng.randrange(len(requests))]
            assert watch.watch(slot, keys(waiting[slot])) == fresh_hit(
                pool, waiting[slot].block_hashes
            )
        events.sync()
        rekeyed += len(watch.settle())
        for slot, w in waiting.items():
            assert watch.hit(slot) == fresh_hit(pool, w.block_hashes), (slot, op)
            compared += 1
    assert rekeyed > 0 and watch.hits > 0 and compared > 1000
