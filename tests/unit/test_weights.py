from __future__ import annotations

import math

import pytest

from halffull.policy.routing import EngineStats
from halffull.policy.weights import (
    endpoint_load,
    endpoint_weight,
    fallback_weight,
    sample_problem,
    significant,
    weights_moved,
)


def stats(num_waiting: int = 0, kv_usage: float = 0.0) -> EngineStats:
    """A replica with 16,000 tokens of KV cache."""
    return EngineStats(
        num_running=0,
        num_waiting=num_waiting,
        kv_usage=kv_usage,
        num_gpu_blocks=1000,
        block_size=16,
    )


def w(s: EngineStats, beta: float = 1.0) -> float:
    return endpoint_weight(s, beta=beta, max_tokens_per_batch=2048, typical_prompt_tokens=1024)


def test_idle_replica_with_room_costs_one_typical_request() -> None:
    assert endpoint_load(stats(), beta=1.0, max_tokens_per_batch=2048,
                         typical_prompt_tokens=1024) == pytest.approx(0.5)  # fmt: skip
    assert w(stats()) == significant(1 / 1.5)


def test_queue_lowers_the_weight_in_batches_of_work() -> None:
    # 4 waiting requests of 1024 tokens + the new one = 5120 tokens = 2.5 batches
    assert w(stats(num_waiting=4)) == significant(1 / 3.5)
    assert w(stats(num_waiting=4)) < w(stats(num_waiting=1)) < w(stats())


def test_missing_memory_counts_with_beta() -> None:
    full = stats(kv_usage=1.0)  # 0 free tokens: 1024 missing = 0.5 batch * beta
    assert w(full, beta=4.0) == significant(1 / (1 + 2.0))
    assert w(full, beta=0.0) == w(stats())  # beta 0: memory never counts


def test_unknown_capacity_leaves_memory_out() -> None:
    no_cap = EngineStats(num_running=0, num_waiting=0, kv_usage=0.99)
    assert w(no_cap, beta=100.0) == w(stats())


@pytest.mark.parametrize(
    ("kw", "needle"),
    [({"num_waiting": -1}, "waiting"), ({"kv_usage": math.nan}, "kv_cache"),
     ({"kv_usage": 1.5}, "above 1"), ({"kv_usage": math.inf}, "kv_cache")],
)  # fmt: skip
def test_nonsense_readings_are_named(kw: dict[str, float], needle: str) -> None:
    problem = sample_problem(stats(**kw))  # type: ignore[arg-type]
    assert problem is not None and needle in problem


def test_sane_reading_has_no_problem() -> None:
    assert sample_problem(stats(num_waiting=3, kv_usage=0.5)) is None


def test_fallback_is_the_median_of_good_weights() -> None:
    assert fallback_weight({}) == 1.0
    assert fallback_weight({"a": 0.2, "b": 0.9, "c": 0.5}) == 0.5
    assert fallback_weight({"a": 0.2, "b": 0.6}) == 0.4


def test_hysteresis_is_relative() -> None:
    assert not weights_moved({"a": 0.5}, {"a": 0.45})
    assert weights_moved({"a": 0.5}, {"a": 0.4})
    # under load weights live near zero: a fixed 0.05 step would freeze them there
    assert weights_moved({"a": 0.02}, {"a": 0.005})
    assert not weights_moved({"a": 0.010}, {"a": 0.0095})
    assert weights_moved({"a": 0.5}, {"a": 0.5, "b": 0.5})  # the set changed


def test_a_loaded_replica_never_reads_as_drained() -> None:
    """The issue's herding case: full KV cache, 2k-token prompts, beta 256, a long queue. The
    load passes 199 batches; the weight used to round to 0.00, which meant "drained"."""
    full = stats(num_waiting=400, kv_usage=1.0)
    load = endpoint_load(full, beta=256.0, max_tokens_per_batch=2048, typical_prompt_tokens=2048)
    assert load > 199
    heavy = endpoint_weight(full, beta=256.0, max_tokens_per_batch=2048, typical_prompt_tokens=2048)
    lighter = endpoint_weight(
        stats(num_waiting=40, kv_usage=1.0),
        beta=256.0, max_tokens_per_batch=2048, typical_prompt_tokens=2048,
    )  # fmt: skip
    assert 0 < heavy < lighter < 1
    assert fallback_weight({"a": heavy, "b": heavy}) > 0
