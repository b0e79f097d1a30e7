"""The router's approximate prefix index: which replica likely holds which prompt prefix.

Built only from the router's own routing history: after a request is sent to a replica, the
replica is assumed to hold the request's prompt blocks in its prefix cache (vLLM caches every
full prompt block it computes, and keeps freed blocks until it needs the room). A new request's
blocks are then matched, replica by replica, against what each was sent.

Blocks and their hashes. A prompt is cut into blocks of `block_tokens` tokens; block i's hash
chains the hash of block i - 1 with block i's content, so equal hashes mean equal prefixes up to
that block's end (vLLM hashes its KV blocks the same way). `token_block_hashes` hashes token ids
when the router has a tokenizer: block boundaries then fall where the engine's do (when
`block_tokens` is a multiple of the engine's block size). `text_block_hashes` hashes fixed
chunks of the prompt text when it has none: a chunk of `block_chars` characters stands for
about `block_chars / chars_per_token` tokens, so the matched length is an estimate, and a chat
prompt is matched on its messages' text, not on the templated token sequence the engine sees.
Only whole blocks are hashed: the last partial block of a prompt never matches.

Memory. Each replica keeps at most `capacity` block hashes, in two generations: new and
matched blocks go into the current generation; when it holds `capacity / 2` blocks it becomes
the old one and the previous old one is dropped. A block is remembered as long as it was used
among roughly the last `capacity / 2` to `capacity` distinct blocks sent to the replica: an LRU
approximation without per-entry bookkeeping. `capacity` should be the replica's KV cache in
blocks (vLLM's `num_gpu_blocks * block_size / block_tokens`): a replica cannot hold more. The
whole index holds at most the sum of the replicas' capacities, about 80 bytes a block (a set
slot and an int; `memory_bytes` measures it).

Cost. Matching a request is O(blocks) set lookups per replica until the first miss; recording
it is O(blocks) inserts on the chosen replica. Nothing else runs per request.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

DEFAULT_BLOCK_TOKENS = 256
"""Tokens a router block (a multiple of vLLM's default block size of 16)."""
DEFAULT_CHARS_PER_TOKEN = 4.0
"""Characters per token assumed for text chunks (English text with Llama-3-class tokenizers)."""
DEFAULT_CAPACITY = 65536
"""Blocks per replica remembered before its KV cache size is known (16M tokens of 256)."""


def token_block_hashes(token_ids: Sequence[int], block_tokens: int) -> list[int]:
    """Chained hashes of the full `block_tokens`-token blocks of a tokenized prompt."""
    if block_tokens < 1:
        raise ValueError("block_tokens must be positive")
    hashes: list[int] = []
    parent = 0
    ids = tuple(token_ids)
    for start in range(0, len(ids) - block_tokens + 1, block_tokens):
        parent = hash((parent, ids[start : start + block_tokens]))
        hashes.append(parent)
    return hashes


def text_block_hashes(text: str, block_chars: int) -> list[int]:
    """Chained hashes of the full `block_chars`-character chunks of a prompt's text."""
    if block_chars < 1:
        raise ValueError("block_chars must be positive")
    hashes: list[int] = []
    parent = 0
    for start in range(0, len(text) - block_chars + 1, block_chars):
        parent = hash((parent, text[start : start + block_chars]))
        hashes.append(parent)
    return hashes


class _ReplicaBlocks:
    """One replica's remembered block hashes, two generations."""

    __slots__ = ("capacity", "current", "old")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.current: set[int] = set()
        self.old: set[int] = set()

    def match(self, hashes: Sequence[int]) -> int:
        current, old = self.current, self.old
        n = 0
        for h in hashes:
            if h not in current and h not in old:
                break
            n += 1
        return n

    def record(self, hashes: Sequence[int]) -> None:
        half = max(1, self.capacity // 2)
        current = self.current
        for h in hashes:
            current.add(h)
            if len(current) >= half:
                self.old = current
                current = self.current = set()

    def __len__(self) -> int:
        return len(self.current) + len(self.old)


class PrefixIndex:
    """Per-replica approximate prefix index over block hashes (see the module docstring)."""

    def __init__(self, block_tokens: int = DEFAULT_BLOCK_TOKENS) -> None:
        if block_tokens < 1:
            raise ValueError("block_tokens must be positive")
        self.block_tokens = block_tokens
        self._replicas: dict[str, _ReplicaBlocks] = {}

    def set_capacity(self, replica: str, blocks: int) -> None:
        """Bound one replica's remembered blocks (its KV cache in router blocks)."""
        if blocks < 2:
            raise ValueError("capacity must be at least 2 blocks")
        self._entry(replica).capacity = blocks

    def _entry(self, replica: str) -> _ReplicaBlocks:
        entry = self._replicas.get(replica)
        if entry is None:
            entry = self._replicas[replica] = _ReplicaBlocks(DEFAULT_CAPACITY)
        return entry

    def match(self, hashes: Sequence[int], replicas: Sequence[str]) -> list[int]:
        """For each replica, how many leading blocks of `hashes` it is believed to hold."""
        out = []
        for name in replicas:
            entry = self._replicas.get(name)
            out.append(entry.match(hashes) if entry is not None else 0)
        return out

    def cached_tokens(
        self, hashes: Sequence[int], replicas: Sequence[str], prompt_tokens: int
    ) -> list[int]:
        """For each replica, the prompt tokens it is believed to hold: matched blocks times
        `block_tokens`, at most the prompt (`ReplicaState.cached_tokens`)."""
        if not hashes:
            return [0] * len(replicas)
        tokens = self.block_tokens
        return [min(m * tokens, prompt_tokens) for m in self.match(hashes, replicas)]

    def set_capacity_tokens(self, replica: str, kv_tokens: int | None) -> None:
        """Bound a replica by its KV cache in tokens (from its /metrics); None: unknown, keep
        the current bound."""
        if kv_tokens is not None:
            self.set_capacity(replica, max(2, kv_tokens // self.block_tokens))

    def record(self, replica: str, hashes: Sequence[int]) -> None:
        """The request with these blocks was sent to `replica`."""
        if hashes:
            self._entry(replica).record(hashes)

    def forget(self, replica: str) -> None:
        """The replica left (or restarted with an empty cache)."""
        self._replicas.pop(replica, None)

    def tracked_blocks(self) -> int:
        return sum(len(e) for e in self._replicas.values())

    def memory_bytes(self) -> int:
        """Bytes held by the index's sets and the block hashes in them (each hash object
        counted once)."""
        total = 0
        seen: set[int] = set()
        for entry in self._replicas.values():
            for s in (entry.current, entry.old):
                total += sys.getsizeof(s)
                for h in s:
                    if id(h) not in seen:
                        seen.add(id(h))
                        total += sys.getsizeof(h)
        return total
