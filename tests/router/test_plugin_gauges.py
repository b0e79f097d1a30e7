"""The router reads the engine plugin's exact gauges when the engine serves them."""

from __future__ import annotations

import asyncio

from aiohttp import web
from router_helpers import make_settings, running_router, wait_for

from halffull.policy.routing import EngineStats, OwnLoad, estimate_replica
from halffull.runtime.plugin_metrics import parse_plugin_gauges
from halffull_dev.testing.fake_engine import FakeEngine

GAUGES = """# HELP halffull_engine_waiting_prefill_tokens Prompt tokens not yet prefilled.
# TYPE halffull_engine_waiting_prefill_tokens gauge
halffull_engine_waiting_prefill_tokens 12345.0
halffull_engine_free_kv_tokens 4096.0
halffull_engine_kv_capacity_tokens 16000.0
"""


def test_parse_and_use_the_exact_gauges() -> None:
    assert parse_plugin_gauges(GAUGES) == (12345.0, 4096.0)
    assert parse_plugin_gauges("halffull_engine_free_kv_tokens NaN\n") == (None, None)
    stats = EngineStats(
        num_running=1, num_waiting=3, kv_usage=0.5, num_gpu_blocks=1000, block_size=16,
        waiting_prefill_tokens=12345.0, free_kv_tokens=4096.0,
    )  # fmt: skip
    own = OwnLoad(inflight_requests=1, inflight_tokens=100, prefill_requests=1, prefill_tokens=100,
                  since_poll_requests=1, since_poll_tokens=100)  # fmt: skip
    state = estimate_replica(name="a", weight=1.0, stats=stats, fresh=True, own=own,
                             max_tokens_per_batch=2048, mean_prompt_tokens=999)  # fmt: skip
    # exact numbers, plus what was sent since the poll; no "waiting x mean prompt" guess
    assert state.queued_tokens == 12345 + 100
    assert state.free_kv_tokens == 4096 - 100


def test_router_polls_the_plugin_port_and_falls_back_without_it() -> None:
    async def main() -> None:
        fake = FakeEngine()
        await fake.start()
        plugin = web.Application()

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(text=GAUGES)

        plugin.add_routes([web.get("/metrics", metrics)])
        runner = web.AppRunner(plugin)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            settings = make_settings([fake.url], engine_metrics_port=port)
            async with running_router(settings) as router:
                ep = router.endpoints[fake.url]
                await wait_for(
                    lambda: ep.stats is not None and ep.stats.waiting_prefill_tokens == 12345.0,
                    "the exact gauges",
                )
                assert ep.stats is not None and ep.stats.free_kv_tokens == 4096.0
            await runner.cleanup()  # no plugin any more: vLLM's numbers alone
            async with running_router(settings) as router:
                ep = router.endpoints[fake.url]
                assert ep.stats is not None and ep.stats.waiting_prefill_tokens is None
        finally:
            await fake.stop()

    asyncio.run(main())
