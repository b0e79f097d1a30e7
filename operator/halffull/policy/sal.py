"""SAL's load formula (Kossmann et al., 2024), as a pure function.

    load(s, r) = max(beta * (mem(r) - free_mem(s)), queued_tokens(s, r)) / max_tokens_per_batch(s)

Both terms are counted in tokens and divided by the replica's per-step token budget, so each is in
"batches" and `beta` is dimensionless. The memory term is positive only when r does not fit in
what is free now, i.e. when r would wait for memory; otherwise the prefill queue decides.
`queued_tokens(s, r)` includes r's own prompt, so the queue term is never below
`mem(r) / max_tokens_per_batch(s)` and an idle replica's load is exactly that.
"""

from __future__ import annotations

DEFAULT_MAX_TOKENS_PER_BATCH = 2048
"""vLLM's default `max_num_batched_tokens` for the online server when chunked prefill is on;
used when neither the configuration nor the replica says otherwise."""


def sal_load(
    *,
    prompt_tokens: int,
    free_kv_tokens: float | None,
    queued_tokens: float,
    max_tokens_per_batch: int,
    beta: float,
) -> float:
    """SAL's load of sending a request with `prompt_tokens` to one replica.

    `queued_tokens` is what already waits for prefill there, without the new request.
    `free_kv_tokens` None means "unknown": the memory term is then left out (see
    `routing.ReplicaState` for where it comes from and when it is unknown).
    """
    if max_tokens_per_batch <= 0:
        raise ValueError("max_tokens_per_batch must be positive")
    if beta < 0:
        raise ValueError("beta must not be negative")
    queue_term = max(0.0, queued_tokens) + prompt_tokens
    if free_kv_tokens is None:
        return queue_term / max_tokens_per_batch
    memory_term = beta * (prompt_tokens - free_kv_tokens)
    return max(memory_term, queue_term) / max_tokens_per_batch


def recompute_delay(
    *,
    uncached_tokens: float,
    least_uncached_tokens: float,
    waiting_requests: float,
    max_tokens_per_batch: int,
) -> float:
    """What sending a request where it recomputes more of its prompt than it must costs the
    requests that wait in the cluster, in batches (the unit of `sal_load`).

    `sal_load` prices a replica by the request's own wait: queue ahead plus its own uncached
    prefill. That is a greedy choice: a replica holding the prefix is given up as soon as another
    replica's queue is shorter by more than the prefix. But prefill that did not have to be done
    is taken from the whole cluster's capacity: every request already waiting, on whatever replica
    the load balancing spreads it to, starts that much later. The extra work is
    `uncached_tokens - least_uncached_tokens` (the request's uncached tokens here, less the
    fewest any candidate must compute, which it computes wherever it goes); the requests it
    delays are the `waiting_requests` a replica has in its queue on average (in steady state, a
    request leaves behind it as many as it found ahead). So the charge is zero on an idle cluster
    (SAL's greedy choice is then the right one), grows with the backlog (past the knee, saving
    prefill is all that shortens queues), and is zero for every replica when no replica holds
    any of the prompt (requests without a cached prefix are routed exactly as by `sal_load`)."""
    if max_tokens_per_batch <= 0:
        raise ValueError("max_tokens_per_batch must be positive")
    if waiting_requests < 0:
        raise ValueError("waiting_requests must not be negative")
    extra = max(0.0, uncached_tokens - least_uncached_tokens)
    return waiting_requests * extra / max_tokens_per_batch
