"""One replica's KV blocks with vLLM's automatic prefix cache, by block hash.

After vLLM 0.32's v1 `BlockPool` and `KVCacheManager` (block_pool.py, kv_cache_manager.py):

- A full prompt block is identified by a chained hash (the block's tokens and everything before
  them). Here a block's *key* stands for that hash: an int that two requests share exactly when
  they share the block and all of its prefix (see `block_keys`).
- A block is cached (registered under its key) when it is allocated for a step that fills it,
  as vLLM's `cache_blocks` does at scheduling time. A second block with a key already cached
  stays unregistered (vLLM keeps such duplicates out of the lookup too: the first one wins).
- A request frees its blocks in reverse order (tail first). Blocks without a key go to the
  front of the free queue (vLLM reuses them first, LIFO); cached blocks go to its tail and keep
  their key, so they can be hit again until every block ahead of them has been handed out:
  eviction is LRU in the order cached blocks were freed, and only once no uncached free block
  is left (`BlockPool.free_blocks`: `prepend_n` / `append_n`).
- A hit (`touch`) takes cached blocks back out of the free queue (reference count 0 -> 1) or
  shares blocks in use (count + 1). Free blocks, cached or not, count as free: vLLM's KV usage
  is `1 - free / total` with cached-but-unused blocks free.

Blocks carry no ids: free blocks without a key are interchangeable and always handed out before
any cached one, so they are a count. A cached block's queue entry carries a stamp; touching the
block invalidates the entry (lazy deletion), so every operation costs O(blocks it moves).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Protocol

import numpy as np

ANONYMOUS = -1
"""Key of a block with no registered hash (a partial block, output tokens, a duplicate)."""


def block_keys(prefix: Sequence[int], hash_block: int, block_size: int, prompt: int) -> list[int]:
    """Keys of a prompt's full engine blocks from its chained trace hashes.

    `prefix[i]` identifies the first `(i + 1) * hash_block` prompt tokens (a chained id, as
    `halffull.sim.traces` makes them). Engine block j (tokens `[j*bs, (j+1)*bs)`) lies in hash
    block `j*bs // hash_block`; its key combines that chained id with the block's offset inside
    it, so it is shared exactly by prompts with the same tokens up to the block's end.
    """
    if hash_block % block_size:
        raise ValueError(
            f"the trace's hash block ({hash_block} tokens) is not a multiple of the engine's "
            f"block size ({block_size})"
        )
    ratio = hash_block // block_size
    full = prompt // block_size
    if not prefix or full == 0:
        return []
    chain = np.asarray(prefix, dtype=np.int64)
    keys = np.repeat(chain * ratio, ratio) + np.tile(np.arange(ratio, dtype=np.int64), len(chain))
    result: list[int] = keys[:full].tolist()
    return result


class CacheListener(Protocol):
    """Told of every key the cache starts or stops holding (LARRY's `PrefixWatch`)."""

    def stored(self, key: int) -> None: ...

    def removed(self, key: int) -> None: ...


class BlockPool:
    """Counts, reference counts and the LRU free queue of one replica's KV blocks."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError("num_blocks must be positive")
        self.num_blocks = num_blocks
        self.used = 0
        """Blocks held by at least one request (a shared block counts once)."""
        self._refs: dict[int, int] = {}
        """Cached key -> number of requests holding it (0: free, still a hit until evicted)."""
        self._anonymous = num_blocks
        """Free blocks without a key (handed out first)."""
        self._queue: deque[tuple[int, int]] = deque()
        """Free cached blocks, head evicted first: (key, stamp)."""
        self._stamps: dict[int, int] = {}
        """Cached free key -> the stamp of its live queue entry."""
        self._next_stamp = 0
        self.version = 0
        """Changes whenever the set of cached keys changes (memo key for lookups)."""
        self.hits = 0
        """Blocks found in the cache by admissions (for hit rates)."""
        self.evictions = 0
        self.listener: CacheListener | None = None
        """Told of each key cached and evicted, as vLLM's block pool reports them."""

    @property
    def free(self) -> int:
        return self.num_blocks - self.used

    @property
    def cached(self) -> int:
        """Blocks registered under a key, in use or free."""
        return len(self._refs)

    def holds(self, key: int) -> bool:
        """Whether `key`'s block is cached (in use or free)."""
        return key in self._refs

    def lookup(self, keys: Sequence[int], limit: int) -> int:
        """How many of the leading `keys` (at most `limit`) are cached: the longest hit."""
        refs = self._refs
        n = 0
        for key in keys[:limit]:
            if key not in refs:
                break
            n += 1
        return n

    def evictable(self, keys: Sequence[int]) -> int:
        """Of these cached keys, how many are free (touching them takes free blocks)."""
        refs = self._refs
        return sum(1 for key in keys if refs[key] == 0)

    def touch(self, keys: Sequence[int]) -> None:
        """Take a hit: each cached key gains a holder; free ones leave the free queue."""
        refs = self._refs
        for key in keys:
            count = refs[key]
            if count == 0:
                del self._stamps[key]
                self.used += 1
            refs[key] = count + 1
        self.hits += len(keys)

    def allocate(self, n: int) -> None:
        """Hand out `n` free blocks for new data, evicting cached ones from the queue's head."""
        if n > self.free:
            raise ValueError(f"allocate {n} blocks with {self.free} free")
        self.used += n
        take = min(n, self._anonymous)
        self._anonymous -= take
        n -= take
        queue = self._queue
        while n > 0:
            key, stamp = queue.popleft()
            if self._stamps.get(key) != stamp:
                continue  # touched since it was freed: not free any more
            del self._stamps[key]
            del self._refs[key]
            self.evictions += 1
            self.version += 1
            n -= 1
            if self.listener is not None:
                self.listener.removed(key)

    def register(self, key: int) -> bool:
        """Cache a block just allocated and filled with `key`'s tokens; False when the key is
        already cached (the block then stays anonymous)."""
        if key in self._refs:
            return False
        self._refs[key] = 1
        self.version += 1
        if self.listener is not None:
            self.listener.stored(key)
        return True

    def register_all(self, keys: Sequence[int], held: list[int]) -> None:
        """`register` each key in order, appending what the request then holds to `held`."""
        refs = self._refs
        listener = self.listener
        for key in keys:
            if key in refs:
                held.append(ANONYMOUS)
            else:
                refs[key] = 1
                held.append(key)
                if listener is not None:
                    listener.stored(key)
        self.version += 1

    def release(self, held: Sequence[int], tail: int = 0) -> None:
        """Free a request's blocks tail first: its `tail` anonymous last blocks, then `held`,
        the keys of its leading blocks in order (ANONYMOUS where not registered)."""
        queue = self._queue
        refs = self._refs
        anonymous = tail
        freed = 0
        for key in reversed(held):
            if key == ANONYMOUS:
                anonymous += 1
                continue
            count = refs[key] - 1
            refs[key] = count
            if count == 0:
                freed += 1
                stamp = self._next_stamp
                self._next_stamp += 1
                self._stamps[key] = stamp
                queue.append((key, stamp))
        self._anonymous += anonymous
        self.used -= anonymous + freed
