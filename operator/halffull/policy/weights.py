"""Endpoint weights for the router's table, from what each engine pod reports.

The weight is SAL's view of a replica compressed to one number the operator can publish: the
load a request of typical size would meet there,

    load = sal_load(prompt = typical, free_kv = capacity * (1 - kv_usage),
                    queued = waiting * typical, budget = max_num_batched_tokens, beta)
    weight = 1 / (1 + load)

so an idle replica with room is near 1 and each batch of queued prefill work or of missing KV
memory lowers it. The router ranks by its own live numbers and uses these weights only as its
fallback for a replica whose polls are stale; `status.endpoints` shows them to users.

A computed weight is never zero: under load (a full KV cache, 2k-token prompts, beta 256) `load`
reaches the hundreds, and a weight rounded to zero used to read as "drained", herding traffic
onto whichever replica still showed a non-zero weight. Weights keep two significant digits and
stay at or above `WEIGHT_FLOOR`; only an explicit state (a terminating pod, `draining` in the
router's table) takes a replica out. They are republished when one moved by a relative
`threshold` (a fixed step would be wider than the whole range weights occupy under load).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from halffull import defaults as D
from halffull.policy.routing import EngineStats
from halffull.policy.sal import sal_load

DEFAULT_TYPICAL_PROMPT_TOKENS = 1024
"""Used until an engine has served enough requests to tell its own mean prompt length; the
median prompt of the Azure 2023 conversation trace is 1020 tokens."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of one engine pod, as the operator's metrics loop got it."""

    stats: EngineStats | None
    taken_at: float
    """Monotonic seconds of the scrape (direct) or of Prometheus' scrape (converted)."""
    error: str | None = None
    typical_prompt_tokens: float | None = None
    """Mean prompt tokens per finished request, when the engine has served enough of them."""


def sample_problem(stats: EngineStats) -> str | None:
    """Why a reading cannot be used, or None. Engines that report nonsense get a fallback."""
    values = {
        "num_requests_waiting": stats.num_waiting,
        "num_requests_running": stats.num_running,
        "kv_cache_usage_perc": stats.kv_usage,
    }
    for name, value in values.items():
        if not math.isfinite(value) or value < 0:
            return f"vllm:{name} is {value}"
    if stats.kv_usage > 1.0:
        return f"vllm:kv_cache_usage_perc is {stats.kv_usage} (above 1)"
    return None


def endpoint_load(
    stats: EngineStats, *, beta: float, max_tokens_per_batch: int, typical_prompt_tokens: float
) -> float:
    capacity = stats.kv_capacity_tokens
    free = None if capacity is None else capacity * (1.0 - stats.kv_usage)
    return sal_load(
        prompt_tokens=round(typical_prompt_tokens),
        free_kv_tokens=free,
        queued_tokens=stats.num_waiting * typical_prompt_tokens,
        max_tokens_per_batch=max_tokens_per_batch,
        beta=beta,
    )


def endpoint_weight(
    stats: EngineStats, *, beta: float, max_tokens_per_batch: int, typical_prompt_tokens: float
) -> float:
    load = endpoint_load(
        stats,
        beta=beta,
        max_tokens_per_batch=max_tokens_per_batch,
        typical_prompt_tokens=typical_prompt_tokens,
    )
    return significant(max(D.WEIGHT_FLOOR, 1.0 / (1.0 + max(0.0, load))))


def significant(value: float, digits: int = 2) -> float:
    """`value` to `digits` significant digits: small weights keep their order of magnitude."""
    return float(f"{value:.{digits}g}")


def fallback_weight(good: Mapping[str, float]) -> float:
    """What an endpoint without a usable reading gets: the median of the others' weights (1.0
    when none is known), so it neither attracts all traffic nor is starved."""
    if not good:
        return 1.0
    ordered = sorted(good.values())
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return significant(median)


def weights_moved(
    old: Mapping[str, float],
    new: Mapping[str, float],
    threshold: float = D.WEIGHT_RELATIVE_THRESHOLD,
) -> bool:
    """True when the endpoint set changed or any weight moved by `threshold` of the larger of its
    old and new values (0.2: 0.50 -> 0.40 moves, 0.010 -> 0.009 does not)."""
    if old.keys() != new.keys():
        return True
    return any(abs(old[k] - new[k]) >= threshold * max(old[k], new[k]) - 1e-12 for k in new)
