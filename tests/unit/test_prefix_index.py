"""The router's approximate prefix index: chained block hashes, per-replica matching, bounded
memory."""

from __future__ import annotations

from halffull.policy.prefix_index import PrefixIndex, text_block_hashes, token_block_hashes


def test_token_hashes_chain_and_skip_the_partial_block() -> None:
    a = token_block_hashes(list(range(10)), 4)
    b = token_block_hashes([*range(8), 99], 4)
    c = token_block_hashes([0, 1, 2, 9, 4, 5, 6, 7], 4)
    assert len(a) == 2 and a == b  # 10 tokens: 2 full blocks; the tail does not count
    assert c[1] != a[1]  # same second block after a different first: not shared
    assert text_block_hashes("abcdefgh", 4) == text_block_hashes("abcdefghij", 4)
    assert text_block_hashes("abc", 4) == []


def test_match_is_per_replica_longest_prefix() -> None:
    index = PrefixIndex(block_tokens=4)
    index.record("r0", [1, 2, 3])
    index.record("r1", [1, 5])
    assert index.match([1, 2, 3, 4], ["r0", "r1", "r2"]) == [3, 1, 0]
    index.forget("r0")
    assert index.match([1], ["r0"]) == [0]


def test_capacity_bounds_each_replica_and_keeps_recent_blocks() -> None:
    index = PrefixIndex()
    index.set_capacity("r", 100)
    for start in range(0, 1000, 10):
        index.record("r", list(range(start, start + 10)))
    assert index.tracked_blocks() <= 100
    assert index.match(list(range(990, 1000)), ["r"]) == [10]  # the latest request is held
    assert index.match(list(range(0, 10)), ["r"]) == [0]  # the oldest is gone
    index.record("r", list(range(950, 960)))  # matched again: refreshed into the new generation
    assert index.memory_bytes() > 0
