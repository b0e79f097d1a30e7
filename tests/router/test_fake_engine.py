"""The fake engine: the simulator's replica model behind vLLM's HTTP API, in real time."""

from __future__ import annotations

import argparse
import asyncio
import json

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from halffull.sim.profiles import CPU_TINY, EngineShape
from halffull_dev.testing.fake_engine import FakeEngine, add_arguments, engine_from_args


def parse(*argv: str) -> FakeEngine:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return engine_from_args(parser.parse_args(list(argv)))


def test_flags_choose_a_profile_a_policy_and_shape_overrides() -> None:
    fake = parse("--profile", "cpu-tiny", "--policy", "larry", "--alpha", "0.1",
                 "--max-num-seqs", "8")  # fmt: skip
    rep = fake.replica
    assert (rep.policy, rep.shape.max_num_seqs) == ("larry", 8)
    assert rep.shape.num_blocks == CPU_TINY.shape.num_blocks
    assert rep.model == CPU_TINY.model and not rep.fast
    flat = parse("--step-ms", "8", "--token-ms", "0.05", "--time-scale", "0.5")
    assert flat.replica.model.overhead_s == 0.004 and flat.replica.model.token_s == 0.000025
    with pytest.raises(ValueError, match="KV cache"):
        FakeEngine(shape=EngineShape(num_blocks=1, block_size=16, max_model_len=100))


async def metric_values(s: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with s.get(url + "/metrics") as r:
        families = text_string_to_metric_families(await r.text())
        return {x.name: x.value for f in families for x in f.samples if "_bucket" not in x.name}


def test_a_repeated_prompt_hits_the_prefix_cache() -> None:
    async def main() -> None:
        async with FakeEngine(prefix_caching=True) as fake, aiohttp.ClientSession() as s:
            body = {"prompt": list(range(100)), "max_tokens": 2}
            for _ in range(2):
                async with s.post(fake.url + "/v1/completions", json=body) as r:
                    assert r.status == 200
            value = await metric_values(s, fake.url)
            # 100 tokens = 6 full blocks of 16; the second request finds all 6 cached
            assert value["vllm:prefix_cache_queries_total"] == 200
            assert value["vllm:prefix_cache_hits_total"] == 96
            assert value["vllm:prompt_tokens_total"] == 200 - 96
            assert value["vllm:kv_cache_usage_perc"] == 0.0

    asyncio.run(main())


def test_a_stream_gets_one_token_per_step_and_metrics_count_them() -> None:
    async def main() -> None:
        async with FakeEngine(policy="larry", alpha=0.1) as fake, aiohttp.ClientSession() as s:
            body = {"prompt": [7] * 50, "max_tokens": 5, "stream": True}
            async with s.post(fake.url + "/v1/completions", json=body) as r:
                events = [
                    json.loads(line[6:])
                    for line in (await r.text()).splitlines()
                    if line.startswith("data: {")
                ]
            assert [e["choices"][0]["text"] for e in events] == [" tok"] * 5
            assert events[-1]["choices"][0]["finish_reason"] == "length"
            async with s.get(fake.url + "/metrics") as r:
                families = {f.name: f for f in text_string_to_metric_families(await r.text())}
            value = {n: families[n].samples[0].value for n in families if families[n].samples}
            assert value["vllm:prompt_tokens"] == 50 and value["vllm:generation_tokens"] == 5
            assert value["vllm:num_requests_running"] == 0
            queue = families["vllm:request_queue_time_seconds"].samples
            assert [x.value for x in queue if x.name.endswith("_count")] == [1]

    asyncio.run(main())
