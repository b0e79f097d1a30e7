"""The operator's metrics loop against real servers: a real Prometheus scraping fake engines,
the same engines scraped directly, and the faults the loop must survive."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web

from halffull.controller.metrics_source import DirectScraper, PrometheusSource, Target
from halffull.controller.weights import Watch, WeightsLoop
from halffull.policy.weights import DEFAULT_TYPICAL_PROMPT_TOKENS, endpoint_weight
from halffull.sim.profiles import EngineShape, StepModel
from halffull_dev.cluster.controlplane import free_port
from halffull_dev.testing.fake_engine import FakeEngine
from tests.metrics.conftest import Prometheus

NS = "llm"
SHAPE = EngineShape(num_blocks=512, max_num_batched_tokens=512, max_num_seqs=2, max_model_len=4096)


async def load(engine: FakeEngine, n: int, prompt_tokens: int) -> list[asyncio.Task[None]]:
    """Start n requests that stay queued (the engine's step takes minutes)."""
    session = aiohttp.ClientSession()

    async def one() -> None:
        with contextlib.suppress(Exception):
            await session.post(
                f"{engine.url}/v1/completions",
                json={"model": "fake-model", "prompt": [1] * prompt_tokens, "max_tokens": 4},
            )

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    tasks.append(asyncio.create_task(_close_later(session)))
    return tasks


async def _close_later(session: aiohttp.ClientSession) -> None:
    try:
        await asyncio.Event().wait()
    finally:
        await session.close()


@contextlib.asynccontextmanager
async def engines() -> AsyncIterator[tuple[FakeEngine, FakeEngine]]:
    slow = StepModel.flat(600.0)  # state stays put while the test compares sources
    async with (
        FakeEngine(shape=SHAPE, step_model=slow, port=free_port()) as busy,
        FakeEngine(shape=SHAPE, step_model=slow, port=free_port()) as idle,
    ):
        yield busy, idle


async def wait_until(predicate: Callable[[], Awaitable[bool]], limit_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail("condition not met in time")
        await asyncio.sleep(0.2)


def test_prometheus_and_direct_scrape_give_the_same_weights(prometheus: Prometheus) -> None:
    async def main() -> None:
        async with engines() as (busy, idle):
            tasks = await load(busy, 6, prompt_tokens=200)
            targets = {
                "pod-busy": busy.url.removeprefix("http://"),
                "pod-idle": idle.url.removeprefix("http://"),
            }
            prometheus.start(targets, NS)
            source = PrometheusSource(prometheus.url)
            pods = list(targets)

            async def prometheus_sees_queue() -> bool:
                got = await asyncio.to_thread(source.query, NS, pods)
                s = got["pod-busy"].stats
                return s is not None and s.num_waiting == 4 and got["pod-idle"].stats is not None

            await wait_until(prometheus_sees_queue)
            via_prom = await asyncio.to_thread(source.query, NS, pods)
            scraper = DirectScraper()
            direct = await scraper.scrape(
                [Target("pod-busy", busy.url), Target("pod-idle", idle.url)]
            )
            await scraper.close()
            for pod in pods:  # the counters the weights do not use are not queried
                a, b = via_prom[pod].stats, direct[pod].stats
                assert a is not None and b is not None
                assert replace(a, num_preemptions=None) == replace(b, num_preemptions=None), pod

            def weight(stats: object) -> float:
                return endpoint_weight(
                    stats,  # type: ignore[arg-type]
                    beta=1.0,
                    max_tokens_per_batch=512,
                    typical_prompt_tokens=DEFAULT_TYPICAL_PROMPT_TOKENS,
                )

            w = {pod: weight(direct[pod].stats) for pod in pods}
            assert w == {pod: weight(via_prom[pod].stats) for pod in pods}
            assert w["pod-busy"] < w["pod-idle"]
            for t in tasks:
                t.cancel()

    asyncio.run(main())


async def garbage_server(body: str, status: int = 200) -> web.AppRunner:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=body, status=status)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    return runner


def test_loop_survives_prometheus_down_garbage_nan_and_gone_pods(prometheus: Prometheus) -> None:
    async def main() -> None:
        async with engines() as (busy, idle):
            tasks = await load(busy, 6, prompt_tokens=200)
            nan_text = (
                "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 1\n"
                "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting 0\n"
                "# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc NaN\n"
            )
            servers = []
            urls = {}
            for name, body in (("pod-garbage", "this is {not prometheus"), ("pod-nan", nan_text)):
                runner = await garbage_server(body)
                port = free_port()
                await web.TCPSite(runner, "127.0.0.1", port).start()
                servers.append(runner)
                urls[name] = f"http://127.0.0.1:{port}"
            urls["pod-gone"] = f"http://127.0.0.1:{free_port()}"  # nothing listens
            urls["pod-busy"], urls["pod-idle"] = busy.url, idle.url
            prometheus.start({p: u.removeprefix("http://") for p, u in urls.items()}, NS)

            triggered: list[tuple[str, str]] = []
            loop = WeightsLoop(lambda ns, name: triggered.append((ns, name)))
            key = (NS, "svc")
            watch = Watch(
                targets=tuple(Target(p, u) for p, u in sorted(urls.items())),
                beta=1.0,
                max_tokens_per_batch=512,
                interval_s=1.0,
                prometheus_url=prometheus.url,
            )
            loop.watch(key, watch)

            async def healthy_pods_known() -> bool:
                await loop._pass(key)
                table = loop.published(key)
                return table is not None and table.weights["pod-busy"] < table.weights["pod-idle"]

            await wait_until(healthy_pods_known)
            table = loop.published(key)
            assert table is not None and table.problem is not None
            reason, message = table.problem
            assert reason == "EndpointMetricsMissing"
            for pod in ("pod-garbage", "pod-nan", "pod-gone"):
                assert pod in message
                # a safe fallback: the median of the good weights, never above the best
                assert table.weights[pod] <= table.weights["pod-idle"]
            assert "pod-busy" not in message and "pod-idle" not in message
            with_prometheus = dict(table.weights)

            # Prometheus goes away: the loop reads the pods directly and says so
            prometheus.stop()
            await loop._pass(key)
            table = loop.published(key)
            assert table is not None and table.problem is not None
            assert table.problem[0] == "PrometheusUnavailable"
            assert table.weights["pod-busy"] == with_prometheus["pod-busy"]
            assert table.weights["pod-idle"] == with_prometheus["pod-idle"]
            # a pass where nothing moved publishes nothing and triggers no reconcile
            before = len(triggered)
            await loop._pass(key)
            assert len(triggered) == before
            await loop.close()
            for runner in servers:
                await runner.cleanup()
            for t in tasks:
                t.cancel()

    asyncio.run(main())
