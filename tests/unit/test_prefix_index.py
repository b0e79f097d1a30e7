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


def test_requests_carry_block_hashes_when_asked() -> None:
    import json

    from halffull.router.requests import parse_request

    def parse(kind: str, body: dict[str, object], **kw: object) -> tuple[int, ...]:
        return parse_request(kind, json.dumps(body).encode(), **kw).block_hashes  # type: ignore[arg-type]

    ids = list(range(600))
    assert parse("completions", {"model": "m", "prompt": ids}) == ()  # not asked
    assert parse("completions", {"model": "m", "prompt": ids}, prefix_block_tokens=256) == tuple(
        token_block_hashes(ids, 256)
    )
    # a tokenizer turns text into the same token-id hashes as the ids themselves
    text = " ".join(map(str, ids))
    encoded = parse(
        "completions",
        {"model": "m", "prompt": text},
        prefix_block_tokens=256,
        encode=lambda t: [int(x) for x in t.split()],
    )
    assert encoded == tuple(token_block_hashes(ids, 256))
    # without one: 1,024-character chunks
    assert (
        len(parse("completions", {"model": "m", "prompt": "a" * 2100}, prefix_block_tokens=256))
        == 2
    )
    turn1 = [{"role": "system", "content": "s" * 3000}, {"role": "user", "content": "hi"}]
    turn2 = [*turn1, {"role": "assistant", "content": "x" * 2000}]
    h1 = parse("chat", {"model": "m", "messages": turn1}, prefix_block_tokens=256)
    h2 = parse("chat", {"model": "m", "messages": turn2}, prefix_block_tokens=256)
    assert len(h1) == 2 and h2[:2] == h1  # the next turn extends the conversation's prefix


def test_cached_tokens_and_capacity_in_tokens() -> None:
    index = PrefixIndex(block_tokens=256)
    index.record("a", [1, 2, 3])
    assert index.cached_tokens([1, 2, 3], ["a", "b"], 700) == [700, 0]  # never above the prompt
    assert index.cached_tokens([1, 9], ["a"], 5000) == [256]
    assert index.cached_tokens([], ["a"], 5000) == [0]
    index.set_capacity_tokens("a", 256 * 10)
    index.set_capacity_tokens("a", None)
    for start in range(0, 100, 5):
        index.record("a", list(range(100 + start, 105 + start)))
    assert index.tracked_blocks() <= 10
