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
