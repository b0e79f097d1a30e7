"""Engine /metrics text into EngineStats."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from halffull.runtime.vllm_metrics import MetricsParseError, parse_engine_metrics
from halffull.sim.profiles import EngineShape
from halffull_dev.testing.fake_engine import FakeEngine

# The shape of vLLM 0.32's exposition for the families the router reads (two engines in one
# server, extra families and histogram lines that must be skipped).
VLLM_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 5.0
vllm:num_requests_waiting{engine="1",model_name="m"} 0.0
# HELP vllm:num_requests_waiting_by_reason Number of waiting requests by reason.
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 5.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.25
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="m"} 7.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="m"} 0.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 0.0
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",engine="0",num_gpu_blocks="1000"} 1.0
vllm:cache_config_info{block_size="16",cache_dtype="auto",engine="1",num_gpu_blocks="1000"} 1.0
"""


def test_parses_vllm_families_and_sums_engines() -> None:
    stats = parse_engine_metrics(VLLM_TEXT)
    assert (stats.num_running, stats.num_waiting) == (4, 5)
    assert stats.kv_usage == pytest.approx(0.375)
    assert stats.num_preemptions == 7
    assert stats.kv_capacity_tokens == 2000 * 16


def test_missing_capacity_is_unknown_not_an_error() -> None:
    text = "\n".join(line for line in VLLM_TEXT.splitlines() if "cache_config" not in line)
    stats = parse_engine_metrics(text)
    assert stats.kv_capacity_tokens is None
    assert stats.num_waiting == 5


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<html>not metrics</html>",
        "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 1\n",
        "vllm:num_requests_running{engine=0 1\nvllm:num_requests_waiting 2\n",
    ],
)
def test_rejects_text_without_queue_gauges(text: str) -> None:
    with pytest.raises(MetricsParseError):
        parse_engine_metrics(text)


def test_reads_the_fake_engine() -> None:
    async def main() -> None:
        shape = EngineShape(num_blocks=100, block_size=16, max_model_len=1000)
        async with FakeEngine(shape=shape) as fake:
            fake.add_waiting(100, 5)  # the scheduler loop is not woken: it stays waiting
            async with (
                aiohttp.ClientSession() as s,
                s.get(fake.url + "/metrics") as r,
            ):
                stats = parse_engine_metrics(await r.text())
            assert stats.num_waiting == 1 and stats.num_running == 0
            assert stats.kv_capacity_tokens == 1600

    asyncio.run(main())
