"""Prefix-aware routing baselines, configured as their projects document them.

Each reads `ReplicaState.cached_tokens` (the router's prefix index match for the request being
routed) next to the load fields every policy sees. They exist to compare SAL against what users
run elsewhere; the formulas and default weights are the projects' published ones, re-expressed
over this router's replica view.

- `llmd-scorer` (llm-d inference scheduler's default profile): weighted sum of three scores in
  [0, 1], highest first: prefix-cache scorer (matched share of the prompt's blocks, weight 3),
  queue scorer (min-max normalised waiting requests, fewer is better, weight 2) and KV-cache
  utilisation scorer (1 - KV usage, weight 2).
- `dynamo-cost` (NVIDIA Dynamo's KV router): lowest cost, where cost = overlap weight (1.0) x
  prefill blocks + decode blocks; prefill blocks are the tokens the replica still has to
  prefill (its queue plus this request's uncached part), decode blocks the KV blocks active on
  it once this request joins; both in KV blocks of `KV_BLOCK_TOKENS` tokens.
- `cache-affinity` (SGLang router's cache-aware policy): the replica holding the longest prefix
  while the load is balanced; the least-loaded replica when the load is imbalanced (the busiest
  replica has more than `balance_abs` requests more than the least busy and more than
  `balance_rel` times as many) or when no replica holds at least `cache_threshold` of the
  prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

from halffull.policy.routing import ReplicaState, RouteRequest, RoutingPolicy

KV_BLOCK_TOKENS = 16
"""vLLM's default KV block size: the unit of Dynamo's cost."""


class LlmdScorerPolicy(RoutingPolicy):
    """llm-d-like: 3 x prefix score + 2 x queue score + 2 x KV score, highest first."""

    name = "llmd-scorer"
    uses_prefix = True

    def __init__(
        self, prefix_weight: float = 3.0, queue_weight: float = 2.0, kv_weight: float = 2.0
    ) -> None:
        super().__init__()
        self.prefix_weight = prefix_weight
        self.queue_weight = queue_weight
        self.kv_weight = kv_weight

    def rank(self, request: RouteRequest, replicas: Sequence[ReplicaState]) -> list[int]:
        waiting = [r.num_waiting for r in replicas]
        low, high = min(waiting, default=0), max(waiting, default=0)
        prompt = max(1, request.prompt_tokens)
        keys = []
        for r in replicas:
            prefix = min(1.0, r.cached_tokens / prompt)
            queue = (high - r.num_waiting) / (high - low) if high > low else 1.0
            kv = 1.0 - min(1.0, r.kv_usage) if r.kv_usage is not None else 0.0
            score = self.prefix_weight * prefix + self.queue_weight * queue + self.kv_weight * kv
            keys.append(-score)
        return self._rank_by(keys, replicas)


class DynamoCostPolicy(RoutingPolicy):
    """Dynamo-like: overlap weight x prefill blocks + decode blocks, lowest first."""

    name = "dynamo-cost"
    uses_prefix = True

    def __init__(self, overlap_weight: float = 1.0) -> None:
        super().__init__()
        self.overlap_weight = overlap_weight

    def cost(self, request: RouteRequest, r: ReplicaState) -> float:
        new = max(0, request.prompt_tokens - r.cached_tokens)
        prefill_blocks = (r.queued_tokens + new) / KV_BLOCK_TOKENS
        if r.kv_usage is not None and r.free_kv_tokens is not None:
            capacity = r.free_kv_tokens / max(1e-9, 1.0 - min(r.kv_usage, 0.999999))
            active = capacity - r.free_kv_tokens
        else:
            active = float(r.inflight * request.prompt_tokens)
        decode_blocks = (active + request.prompt_tokens) / KV_BLOCK_TOKENS
        return self.overlap_weight * prefill_blocks + decode_blocks

    def rank(self, request: RouteRequest, replicas: Sequence[ReplicaState]) -> list[int]:
        return self._rank_by([self.cost(request, r) for r in replicas], replicas)


class CacheAffinityPolicy(RoutingPolicy):
    """SGLang-like cache affinity with a load cap (see the module docstring)."""

    name = "cache-affinity"
    uses_prefix = True

    def __init__(
        self, cache_threshold: float = 0.5, balance_abs: int = 32, balance_rel: float = 1.0001
    ) -> None:
        super().__init__()
        self.cache_threshold = cache_threshold
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel

    def rank(self, request: RouteRequest, replicas: Sequence[ReplicaState]) -> list[int]:
        loads = [r.inflight for r in replicas]
        least_loaded = [float(n) for n in loads]
        low, high = min(loads, default=0), max(loads, default=0)
        if high - low > self.balance_abs and high > low * self.balance_rel:
            return self._rank_by(least_loaded, replicas)
        prompt = max(1, request.prompt_tokens)
        best = max((r.cached_tokens for r in replicas), default=0)
        if best / prompt < self.cache_threshold:
            return self._rank_by(least_loaded, replicas)
        # most cached first; among equals, the less loaded
        keys = [-r.cached_tokens + n / (high + 1) for r, n in zip(replicas, loads, strict=True)]
        return self._rank_by(keys, replicas)
