"""Event-driven cached-prefix lengths equal fresh lookups, whatever the cache did in between."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from halffull.policy.larry_prefix import PrefixWatch


def fresh(hashes: list[str], cache: set[str]) -> int:
    hit = 0
    while hit < len(hashes) and hashes[hit] in cache:
        hit += 1
    return hit


# chained hashes over a small alphabet: requests share prefixes, as conversation turns do
chains = st.lists(st.sampled_from("ab"), min_size=0, max_size=6).map(
    lambda path: ["".join(path[: i + 1]) for i in range(len(path))]
)
ops = st.lists(
    st.tuples(st.sampled_from(["store", "remove", "watch", "unwatch", "settle"]), chains),
    max_size=80,
)


@settings(deadline=None)
@given(ops=ops)
def test_hits_after_settle_equal_fresh_lookups(ops: list[tuple[str, list[str]]]) -> None:
    cache: set[str] = set()
    watch: PrefixWatch[str] = PrefixWatch(cache.__contains__)
    watched: dict[int, list[str]] = {}
    for n, (op, chain) in enumerate(ops):
        if op == "store" and chain:
            cache.add(chain[-1])
            watch.stored(chain[-1])
        elif op == "remove" and chain and chain[-1] in cache:
            cache.discard(chain[-1])
            watch.removed(chain[-1])
        elif op == "watch":
            slot = n % 7  # slots are reused, as the index reuses them
            watch.unwatch(slot)
            watched[slot] = chain
            assert watch.watch(slot, chain) == fresh(chain, cache)
        elif op == "unwatch" and watched:
            slot = sorted(watched)[n % len(watched)]
            watch.unwatch(slot)
            del watched[slot]
        elif op == "settle":
            watch.settle()
            for slot, hashes in watched.items():
                assert watch.hit(slot) == fresh(hashes, cache)
    watch.settle()
    for slot, hashes in watched.items():
        assert watch.hit(slot) == fresh(hashes, cache)
    # each request registers at most the positions up to its frontier it has reached
    assert watch.registered <= sum(len(h) for h in watched.values())
    for slot in list(watched):
        watch.unwatch(slot)
    assert watch.registered == 0 and len(watch) == 0


def test_only_the_concerned_requests_are_walked() -> None:
    cache = {"s0", "s1"}
    watch: PrefixWatch[str] = PrefixWatch(cache.__contains__)
    for slot in range(100):  # 100 requests sharing a 2-block system prompt, then their own
        watch.watch(slot, ["s0", "s1", f"u{slot}", f"u{slot}'"])
    assert watch.registered == 300  # positions 0..hit: 3 each
    walks = watch.walks
    cache.add("u7")
    watch.stored("u7")
    watch.stored("zz")  # no waiting request has it
    assert watch.settle() == [(7, 3)] and watch.walks == walks + 1
    cache.discard("s1")
    watch.removed("s1")
    assert len(watch.settle()) == 100 and all(watch.hit(s) == 1 for s in range(100))
    watch.rewalk_all()
    cache.clear()
    assert {hit for _, hit in watch.settle()} == {0}
