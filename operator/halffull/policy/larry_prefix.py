"""Which waiting requests a prefix-cache change concerns: LARRY's uncached blocks, event-driven.

`mem(r)` counts the blocks r still needs: its blocks less the longest run of its leading block
hashes that the prefix cache holds. That run changes while r waits: another request computes r's
prefix (a hash is stored), or eviction drops it (a hash is removed). Re-reading every waiting
request at every step costs a lookup per block per request per step; re-reading a fixed number
round-robin (what the plugin did before) leaves counts stale. Here the engine reports each
stored and removed hash (`stored`, `removed`), and only the requests that hash concerns are
re-keyed, at the next step (`settle`).

What a request registers, per queue slot: the hashes at positions `0 .. hit` of its own hash
list, where `hit` is its current run of cached blocks; positions beyond `hit + 1` cannot change
its count until the block at `hit` is stored, and that event walks on. So a request with no
cached prefix registers one hash, and the map holds at most `sum(hit + 1)` entries (plus, after a
removal shortened a run, the positions it had reached, until the request leaves).

- A stored hash at a request's frontier (position `hit`) marks it dirty; `settle` then walks on
  from `hit` with real lookups (`cached`), which also covers hashes stored further out earlier.
- A removed hash at a position below `hit` cuts `hit` to that position at once (the blocks from
  there on are no longer a run), and marks it dirty so that a later re-store walks on.

Invariant, for every watched slot after `settle`: positions `[0, hit)` are cached, position
`hit` is not (or is past the end). It holds as long as every change to what `cached` answers is
reported: `tests/unit/test_larry_prefix.py` checks this against vLLM's real block pool.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

H = TypeVar("H", bound=Hashable)


class PrefixWatch(Generic[H]):
    """Cached-prefix lengths of the waiting requests, kept current from cache events."""

    def __init__(self, cached: Callable[[H], bool]) -> None:
        self._cached = cached
        self._by_hash: dict[H, dict[int, int]] = {}
        """hash -> {slot: position of the hash in that slot's list}"""
        self.concerns = self._by_hash.__contains__
        """Whether a hash concerns some waiting request: the hooks' fast test (a C call)."""
        self._hashes: dict[int, Sequence[H]] = {}
        self._hit: dict[int, int] = {}
        self._reg: dict[int, int] = {}
        """slot -> positions [0, reg) of its hashes are registered in `_by_hash`"""
        self.dirty: set[int] = set()
        """Slots to walk at the next `settle` (the index skips `settle` while it is empty)."""
        self.walks = 0
        """Slots walked (entries and re-keys), for tests and benchmarks."""
        self.hits = 0
        """Walks that found a cached prefix."""

    def __len__(self) -> int:
        return len(self._hashes)

    @property
    def registered(self) -> int:
        """(hash, slot) entries in the map: its memory, bounded as the module says."""
        return sum(len(slots) for slots in self._by_hash.values())

    def hit(self, slot: int) -> int:
        return self._hit[slot]

    def watch(self, slot: int, hashes: Sequence[H]) -> int:
        """Start watching `slot`'s request (its full-block hashes, in order); returns its hit."""
        if slot in self._hashes:
            self.unwatch(slot)
        self._hashes[slot] = hashes
        self._hit[slot] = 0
        self._reg[slot] = 0
        return self._walk(slot)

    def unwatch(self, slot: int) -> None:
        """Stop watching `slot` (its request left the queue); a no-op if not watched."""
        hashes = self._hashes.pop(slot, None)
        if hashes is None:
            return
        by_hash = self._by_hash
        for pos in range(self._reg.pop(slot)):
            h = hashes[pos]
            slots = by_hash[h]
            del slots[slot]
            if not slots:
                del by_hash[h]
        del self._hit[slot]
        self.dirty.discard(slot)

    def stored(self, h: H) -> None:
        """The cache now holds `h` (called by the engine's hook, on its hot path: cheap)."""
        slots = self._by_hash.get(h)
        if slots is not None:  # the requests whose run it extends walk on at the next step
            hit = self._hit
            self.dirty.update(slot for slot, pos in slots.items() if pos == hit[slot])

    def removed(self, h: H) -> None:
        """The cache no longer holds `h`."""
        slots = self._by_hash.get(h)
        if slots is None:
            return
        hit = self._hit
        for slot, pos in slots.items():
            if pos < hit[slot]:
                hit[slot] = pos
                self.dirty.add(slot)

    def rewalk_all(self) -> None:
        """Forget every run (the engine replaced its cache wholesale): all walk from 0."""
        for slot in self._hit:
            self._hit[slot] = 0
        self.dirty.update(self._hit)

    def settle(self) -> list[tuple[int, int]]:
        """Walk the dirty slots on; returns (slot, hit) for each, in no particular order."""
        if not self.dirty:
            return []
        done = [(slot, self._walk(slot)) for slot in self.dirty]
        self.dirty.clear()
        return done

    def _walk(self, slot: int) -> int:
        hashes = self._hashes[slot]
        hit = self._hit[slot]
        end = len(hashes)
        cached = self._cached
        while hit < end and cached(hashes[hit]):
            hit += 1
        top = min(hit + 1, end)
        reg = self._reg[slot]
        if top > reg:
            by_hash = self._by_hash
            for pos in range(reg, top):
                h = hashes[pos]
                slots = by_hash.get(h)
                if slots is None:
                    by_hash[h] = {slot: pos}
                else:
                    slots[slot] = pos
            self._reg[slot] = top
        self._hit[slot] = hit
        self.walks += 1
        if hit:
            self.hits += 1
        return hit
