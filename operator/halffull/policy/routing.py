"""Which replica a request goes to: the routing policies over a small typed replica record.

The router and the simulator run exactly these classes (through `halffull.policy.dispatch`). Each
policy is one small class with one signature, `rank(request, replicas) -> indices best first`:
the router sends to the first index and, when that replica refuses the connection, retries down
the list. `halffull.policy.registry` maps the configuration names to these classes.

What a policy sees of a replica is a `ReplicaState`: the router's best estimate *now*, built by
`estimate_replica` from the last poll of the engine's /metrics (`EngineStats`) and the router's
own accounting of what it has dispatched there (`OwnLoad`). The estimate is what makes a burst
between two polls spread out: every dispatch changes the next request's view at once.

Operator weights (`ReplicaState.weight`, 1 idle towards 0 loaded) are the fallback for stale
polls: a replica without fresh stats is priced at the larger of the router's own accounting and
the queue its weight implies (`weight_queued_tokens`). They never break ties and never drain:
only an explicit state does (`ReplicaState.draining`, a terminating pod), which ranks a replica
after all others, still usable when nothing else is. Round-robin and random follow the weights.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from halffull import defaults as D
from halffull.policy.sal import DEFAULT_MAX_TOKENS_PER_BATCH, recompute_delay, sal_load


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What a policy knows about the request being routed."""

    prompt_tokens: int
    max_tokens: int | None = None
    block_hashes: tuple[int, ...] = ()
    """Chained hashes of the prompt's blocks (`halffull.policy.prefix_index`); empty when
    unknown or not needed."""


@dataclass(frozen=True, slots=True)
class EngineStats:
    """One poll of an engine's /metrics (vLLM's names: see `halffull.runtime.vllm_metrics`)."""

    num_running: int
    num_waiting: int
    kv_usage: float
    """`vllm:kv_cache_usage_perc`: fraction of KV blocks in use, 0..1."""
    num_gpu_blocks: int | None = None
    block_size: int | None = None
    num_preemptions: float | None = None
    waiting_prefill_tokens: float | None = None
    """Exact prompt tokens not yet prefilled, from the LARRY plugin's gauge when the engine
    serves it (`halffull_engine_waiting_prefill_tokens`); None: estimate from the waiting count."""
    free_kv_tokens: float | None = None
    """Exact free KV tokens from the plugin (`halffull_engine_free_kv_tokens`); None: from
    `kv_usage` and the capacity."""

    @property
    def kv_capacity_tokens(self) -> int | None:
        if self.num_gpu_blocks is None or self.block_size is None:
            return None
        return self.num_gpu_blocks * self.block_size


@dataclass(frozen=True, slots=True)
class OwnLoad:
    """What this router has dispatched to one replica and not yet seen come back."""

    inflight_requests: int = 0
    """Dispatched and not finished (or failed or cancelled)."""
    inflight_tokens: int = 0
    """Prompt tokens of the in-flight requests."""
    prefill_requests: int = 0
    """Dispatched and no first token yet: released at first token, failure or cancel."""
    prefill_tokens: int = 0
    since_poll_requests: int = 0
    """Of the prefill requests, those dispatched after the last successful poll started."""
    since_poll_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """A policy's view of one replica: polled stats corrected by the router's own accounting."""

    name: str
    weight: float = 1.0
    draining: bool = False
    fresh: bool = True
    """False when the last poll is too old or failed: the fields below then come from the router's
    own accounting only (see `estimate_replica`)."""
    queued_tokens: float = 0.0
    """Prompt tokens waiting for prefill (not counting the request being routed)."""
    free_kv_tokens: float | None = None
    """Free KV cache in tokens; None when the capacity is unknown."""
    kv_usage: float | None = None
    """Fraction of the KV cache in use, 0..1 (may exceed 1 as an estimate); None when unknown."""
    num_waiting: int = 0
    num_running: int = 0
    inflight: int = 0
    """Requests this router has outstanding on the replica."""
    unstarted: float = 0.0
    """Requests without a first token yet (waiting, or part way through a chunked prefill):
    the ones whose TTFT more prefill work there delays. The router's own such requests plus the
    engine's other waiting ones."""
    max_tokens_per_batch: int = DEFAULT_MAX_TOKENS_PER_BATCH
    cached_tokens: int = 0
    """Prompt tokens of the request being routed that the replica is believed to hold in its
    prefix cache (`halffull.policy.prefix_index`); 0 when the policy does not use prefixes."""


def weight_queued_tokens(weight: float, max_tokens_per_batch: int, typical_prompt: float) -> float:
    """The prefill queue an operator weight stands for. The operator publishes
    `1 / (1 + load)` with `load` in engine steps for a typical request, the request included
    (`halffull.policy.weights`); this inverts it. Weight 1 (no information) means nothing."""
    load = 1.0 / max(weight, 1e-6) - 1.0
    return max(0.0, load * max_tokens_per_batch - typical_prompt)


def estimate_replica(
    *,
    name: str,
    weight: float,
    stats: EngineStats | None,
    fresh: bool,
    own: OwnLoad,
    max_tokens_per_batch: int,
    mean_prompt_tokens: float,
    last_capacity_tokens: int | None = None,
    draining: bool = False,
) -> ReplicaState:
    """Combine the last poll with the router's own accounting into what the replica holds now.

    Fresh stats: queued tokens are the router's own not-yet-started prompts plus the engine's
    other waiting requests (sent by someone else, e.g. a second router) estimated at
    `mean_prompt_tokens` each; free KV is the polled free KV minus the prompts dispatched since
    that poll (they are not in the engine's numbers yet). When the engine's plugin gauges were
    read, its exact waiting prefill tokens and free KV tokens replace the estimates (plus the
    prompts dispatched since the poll).

    Stale or missing stats (the documented fallback): the router's own accounting and the
    operator's weight: queued tokens are the larger of its own not-yet-started prompts and the
    queue the weight stands for, free KV is the last known capacity minus the prompts of
    everything it has in flight there; unknown capacity leaves the memory term out.
    """
    capacity = stats.kv_capacity_tokens if stats is not None else None
    if capacity is None:
        capacity = last_capacity_tokens
    if stats is not None and fresh:
        counted_by_engine = own.prefill_requests - own.since_poll_requests
        foreign = max(0, stats.num_waiting - counted_by_engine)
        if stats.waiting_prefill_tokens is not None:  # exact: the engine counted its queue
            queued = stats.waiting_prefill_tokens + own.since_poll_tokens
        else:
            queued = own.prefill_tokens + foreign * mean_prompt_tokens
        usage: float | None = stats.kv_usage
        free: float | None = None
        if stats.free_kv_tokens is not None:
            free = stats.free_kv_tokens - own.since_poll_tokens
            if capacity:
                usage = 1.0 - free / capacity
        elif capacity:
            free = capacity * (1.0 - stats.kv_usage) - own.since_poll_tokens
            usage = stats.kv_usage + own.since_poll_tokens / capacity
        return ReplicaState(
            name=name,
            weight=weight,
            draining=draining,
            fresh=True,
            queued_tokens=queued,
            free_kv_tokens=free,
            kv_usage=usage,
            num_waiting=stats.num_waiting + own.since_poll_requests,
            num_running=stats.num_running,
            inflight=own.inflight_requests,
            unstarted=own.prefill_requests + foreign,
            max_tokens_per_batch=max_tokens_per_batch,
        )
    by_weight = weight_queued_tokens(weight, max_tokens_per_batch, mean_prompt_tokens)
    return ReplicaState(
        name=name,
        weight=weight,
        draining=draining,
        fresh=False,
        queued_tokens=max(float(own.prefill_tokens), by_weight),
        free_kv_tokens=(capacity - own.inflight_tokens) if capacity else None,
        kv_usage=(own.inflight_tokens / capacity) if capacity else None,
        num_waiting=own.prefill_requests,
        num_running=own.inflight_requests - own.prefill_requests,
        inflight=own.inflight_requests,
        unstarted=own.prefill_requests,
        max_tokens_per_batch=max_tokens_per_batch,
    )


def _positive(weight: float) -> float:
    """Weights are never a drain: a (legacy) zero counts as the smallest weight."""
    return max(weight, 1e-6)


class RoutingPolicy(ABC):
    """One routing policy. Instances may keep state (a rotation, a random generator); the router
    keeps one instance per configuration and calls it from one event loop."""

    name: ClassVar[str]
    uses_prefix: ClassVar[bool] = False
    """True: the caller fills `ReplicaState.cached_tokens` from a prefix index and counts only
    uncached prompt tokens in its dispatch accounting."""

    def __init__(self) -> None:
        self._turn = 0

    @abstractmethod
    def rank(self, request: RouteRequest, replicas: Sequence[ReplicaState]) -> list[int]:
        """Indices into `replicas`, best first; every index exactly once."""

    def _rank_by(self, keys: Sequence[float], replicas: Sequence[ReplicaState]) -> list[int]:
        """Sort by key (lower is better); draining replicas last; ties to fewer in-flight
        requests, then a rotation so that exact ties take turns. Weights play no part here."""
        n = len(replicas)
        turn = self._turn
        self._turn += 1

        def sort_key(i: int) -> tuple[bool, float, int, int]:
            r = replicas[i]
            return (r.draining, keys[i], r.inflight, (i - turn) % n)

        return sorted(range(n), key=sort_key)


class SalPolicy(RoutingPolicy):
    """SAL, prefix-aware, with the recompute charge: the lowest `sal_load` (memory shortfall or
    prefill queue, in batches) with the request counted by what the replica must newly compute
    and hold (`mem(r, s)` and r's share of `queued_tokens(s, r)` are its prompt tokens that s
    does not hold in its prefix cache), plus `recompute_delay`: the prefill it would do there
    beyond the least any candidate must do, times the requests per replica still waiting for
    their first token (`ReplicaState.unstarted`, averaged over the candidates). Without
    prefix information (cached_tokens 0 everywhere) this is the paper's SAL."""

    name = "sal"
    uses_prefix = True
    charges_recompute: ClassVar[bool] = True

    def __init__(self, beta: float = D.BETA) -> None:
        super().__init__()
        if beta < 0:
            raise ValueError("beta must not be negative")
        self.beta = beta

    def load(self, request: RouteRequest, replica: ReplicaState) -> float:
        """SAL's own load of `request` on `replica` (without the recompute charge)."""
        cached = replica.cached_tokens if self.uses_prefix else 0
        return sal_load(
            prompt_tokens=max(0, request.prompt_tokens - cached),
            free_kv_tokens=replica.free_kv_tokens,
            queued_tokens=replica.queued_tokens,
            max_tokens_per_batch=replica.max_tokens_per_batch,
            beta=self.beta,
        )

    def loads(self, request: RouteRequest, replicas: Sequence[ReplicaState]) -> list[float]:
        """Each replica's load, the recompute charge included when the policy charges it."""
        loads = [self.load(request, r) for r in replicas]
        if not (self.uses_prefix and self.charges_recompute) or not replicas:
            return loads
        live = [r for r in replicas if not r.draining] or list(replicas)
        most_cached = max(r.cached_tokens for r in live)
        if most_cached <= 0:
            return loads
        waiting = sum(r.unstarted for r in live) / len(live)
        least_uncached = max(0, request.prompt_tokens - most_cached)
        return [
            load
            + recompute_delay(
                uncached_tokens=max(0, request.prompt_tokens - r.cached_tokens),
                least_uncached_tokens=least_uncached,
                waiting_requests=waiting,
                max_tokens_per_batch=r.max_tokens_per_batch,
            )
            for load, r in zip(loads, replicas, strict=True)
        ]

    def rank(self, request: RouteRequest, replicas: Sequence[ReplicaState]) -> list[int]:
        return self._rank_by(self.loads(request, replicas), replicas)


class SalGreedyPolicy(SalPolicy):
    """Prefix-aware SAL without the recompute charge: each request goes where its own wait is
    shortest, even when that means recomputing a prefix another replica holds."""

    name = "sal-greedy"
    charges_recompute = False


class SalClassicPolicy(SalPolicy):
    """SAL as the paper states it: the whole prompt counts, wherever its prefix is cached."""

    name = "sal-classic"
    uses_prefix = False
    charges_recompute = False


class RoundRobinPolicy(RoutingPolicy):
    """Smooth weighted round-robin (equal weights: plain rotation). Ignores load."""

    name = "round-robin"

    def __init__(self) -> None:
        super().__init__()
        self._current: dict[str, float] = {}

    def rank(self, request: RouteRequest, replicas: Sequence[ReplicaState]) -> list[int]:
        live = [r for r in replicas if not r.draining]
        if not live:  # all draining: rotate over them equally
            return self._rank_by([0.0] * len(replicas), replicas)
        total = sum(_positive(r.weight) for r in live)
        current = {r.name: self._current.get(r.name, 0.0) + _positive(r.weight) for r in live}
        best = max(live, key=lambda r: current[r.name])
        current[best.name] -= total
        self._current = current
        # the chosen one first, then the others in the order they would come next
        keys = [0.0 if r.draining else -current[r.name] for r in replicas]
        first = next(i for i, r in enumerate(replicas) if r.name == best.name)
        keys[first] = float("-inf")
        return self._rank_by(keys, replicas)


class RandomPolicy(RoutingPolicy):
    """Weighted random order. Ignores load."""

    name = "random"

    def __init__(self, seed: int | None = None) -> None:
        super().__init__()
        self._rng = random.Random(seed)

    def rank(self, request: RouteRequest, replicas: Sequence[ReplicaState]) -> list[int]:
        # Efraimidis-Spirakis: key u^(1/w) gives a weighted random permutation
        keys = [
            0.0 if r.draining else -(self._rng.random() ** (1.0 / _positive(r.weight)))
            for r in replicas
        ]
        return self._rank_by(keys, replicas)


class LeastRequestsPolicy(RoutingPolicy):
    """Fewest requests this router has in flight on the replica."""

    name = "least-requests"

    def rank(self, request: RouteRequest, replicas: Sequence[ReplicaState]) -> list[int]:
        return self._rank_by([float(r.inflight) for r in replicas], replicas)


class PowerOfTwoPolicy(RoutingPolicy):
    """Two replicas drawn at random; the one with fewer in-flight requests first, the other
    second, then the rest by in-flight requests (for retries)."""

    name = "power-of-two"

    def __init__(self, seed: int | None = None) -> None:
        super().__init__()
        self._rng = random.Random(seed)

    def rank(self, request: RouteRequest, replicas: Sequence[ReplicaState]) -> list[int]:
        live = [i for i, r in enumerate(replicas) if not r.draining]
        pool = live if len(live) >= 2 else list(range(len(replicas)))
        sampled = set(self._rng.sample(pool, min(2, len(pool))))
        keys = [float(r.inflight) - (1e9 if i in sampled else 0.0) for i, r in enumerate(replicas)]
        return self._rank_by(keys, replicas)


class LeastKvPolicy(RoutingPolicy):
    """Lowest KV-cache usage (polled, plus what was dispatched since); unknown usage ranks by
    in-flight requests after all known ones."""

    name = "least-kv"

    def rank(self, request: RouteRequest, replicas: Sequence[ReplicaState]) -> list[int]:
        keys = [r.kv_usage if r.kv_usage is not None else 1e6 + r.inflight for r in replicas]
        return self._rank_by(keys, replicas)


class QueueKvPolicy(RoutingPolicy):
    """The weighted scorer production gateways use: a queue score and a KV score, each in [0, 1]
    (1 = best), summed with weights; highest total first.

    queue score = 1 - waiting / max waiting over the candidates (all 1 when nobody waits);
    KV score = 1 - KV usage (0 when unknown).
    """

    name = "queue-kv"

    def __init__(self, queue_weight: float = 1.0, kv_weight: float = 1.0) -> None:
        super().__init__()
        self.queue_weight = queue_weight
        self.kv_weight = kv_weight

    def rank(self, request: RouteRequest, replicas: Sequence[ReplicaState]) -> list[int]:
        most_waiting = max((r.num_waiting for r in replicas), default=0)
        keys = []
        for r in replicas:
            queue_score = 1.0 - r.num_waiting / most_waiting if most_waiting > 0 else 1.0
            kv_score = 1.0 - min(1.0, r.kv_usage) if r.kv_usage is not None else 0.0
            keys.append(-(self.queue_weight * queue_score + self.kv_weight * kv_score))
        return self._rank_by(keys, replicas)
