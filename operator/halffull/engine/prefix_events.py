"""vLLM's prefix cache, reported block by block to LARRY's `PrefixWatch`, in process.

What this relies on in vLLM 0.32 (`vllm/v1/core/block_pool.py`), pinned by
`tests/unit/test_larry_prefix.py`, which drives a real `BlockPool` through caching, hits, frees,
eviction on reuse, promotion of a block and a cache reset, and checks after each that the
event-driven counts equal fresh lookups:

- `BlockPool.get_cached_block(hash, groups)`, what the plugin asks, reads only
  `BlockPool.cached_block_hash_to_block` (a `BlockHashToBlockMap`), through `get_one_block`.
- Every change to that map goes through its `insert(key, block)` (`_insert_block_hash`: full
  blocks cached at scheduling time, partial entries, moved hashes) or its `pop(key, block_id)`
  (`_remove_cached_block_hashes`: eviction when a free block is reused, promotion, explicit
  eviction), or replaces the map wholesale (`reset_prefix_cache`).
- A key is `BlockHashWithGroupId`: the request's block hash (`Request.block_hashes`) with the
  4-byte KV cache group id appended (`make_block_hash_with_group_id`).

So the hook wraps the map's `insert` and `pop` on that one map object (instance attributes: the
class and every other pool are untouched), and `sync` notices a replaced map and has every
request walk again. It runs at every block cached or evicted, inside vLLM's `schedule()`, so it does
as little as it can: with one KV cache group (`group_keys`) the watch is keyed by the map's own keys
(`GroupKeys`), and the hook tests each key as it comes, without cutting the group id off (a new
bytes object to allocate and hash, half the hook's cost). vLLM's own KV events (`BlockStored`,
`BlockRemoved`) report the same changes but only with `enable_kv_cache_events`, which also builds an
event object with the block's token ids for every cached block and hands them to a publisher that
would then be missing the ones LARRY drained: the in-process hook costs a dict lookup per change
instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, overload

from halffull.policy.larry_prefix import PrefixWatch

GROUP_ID_BYTES = 4
"""Bytes of the group id at the end of a `BlockHashWithGroupId` (vLLM 0.32)."""

GROUP_0 = bytes(GROUP_ID_BYTES)
"""The suffix of KV cache group 0's keys (the id, big-endian)."""


class GroupKeys(Sequence[bytes]):
    """A request's first `n` block hashes as the prefix-cache map's keys of KV cache group 0,
    each made when read: the watch reads only a request's cached run and one more."""

    __slots__ = ("_hashes", "_n")

    def __init__(self, hashes: Sequence[bytes], n: int) -> None:
        self._hashes = hashes
        self._n = max(min(n, len(hashes)), 0)

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> list[bytes]: ...
    def __getitem__(self, i: int | slice) -> bytes | list[bytes]:
        if isinstance(i, slice):
            return [self._hashes[j] + GROUP_0 for j in range(*i.indices(self._n))]
        if not -self._n <= i < self._n:
            raise IndexError(i)
        return self._hashes[i % self._n] + GROUP_0


class BlockPoolEvents:
    """Feeds the stored and removed hashes of one vLLM `BlockPool` into a `PrefixWatch`.

    `group_keys`: the watch is keyed by the map's keys of KV cache group 0 (`GroupKeys`), as
    fits a model with one KV cache group; otherwise by block hash (the key less its group id),
    for changes in any group."""

    def __init__(self, pool: Any, watch: PrefixWatch[bytes], *, group_keys: bool = False) -> None:
        self.pool = pool
        self.watch = watch
        self.group_keys = group_keys
        self._map: Any = None
        self.sync()

    def sync(self) -> None:
        """Hook the pool's current map if it is not the hooked one (a reset replaced it); the
        watched requests then walk their runs again from the start."""
        current = self.pool.cached_block_hash_to_block
        if current is self._map:
            return
        if self._map is not None:
            self.watch.rewalk_all()
        self._hook(current)
        self._map = current

    def _hook(self, cache_map: Any) -> None:
        insert, pop, get_one = cache_map.insert, cache_map.pop, cache_map.get_one_block
        stored, removed, concerns = self.watch.stored, self.watch.removed, self.watch.concerns
        cut = -GROUP_ID_BYTES

        if self.group_keys:

            def hooked_insert(key: bytes, block: Any) -> None:
                insert(key, block)
                if concerns(key):
                    stored(key)

            def hooked_pop(key: bytes, block_id: int) -> Any:
                block = pop(key, block_id)
                if block is not None and concerns(key) and get_one(key) is None:
                    removed(key)
                return block

        else:

            def hooked_insert(key: bytes, block: Any) -> None:
                insert(key, block)
                if concerns(key[:cut]):
                    stored(key[:cut])

            def hooked_pop(key: bytes, block_id: int) -> Any:
                block = pop(key, block_id)
                if block is not None and concerns(key[:cut]) and get_one(key) is None:
                    removed(key[:cut])
                return block

        cache_map.insert = hooked_insert
        cache_map.pop = hooked_pop
