"""The router in front of fake engines on loopback: requests, streaming, routing, auth."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from router_helpers import admin, base, make_settings, read_sse, running_router, wait_for

from halffull.api.runtime_config import RouterDiscovery
from halffull.policy.registry import ROUTING_POLICIES
from halffull.runtime.vllm_metrics import parse_engine_metrics
from halffull.sim.profiles import EngineShape, StepModel
from halffull_dev.testing.fake_engine import FakeEngine


@contextlib.asynccontextmanager
async def engines(n: int, **kw: object) -> AsyncIterator[list[FakeEngine]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(FakeEngine(**kw)) for _ in range(n)]  # type: ignore[arg-type]


def test_non_streamed_and_streamed_requests_pass_through() -> None:
    async def main() -> None:
        async with (
            engines(2) as fakes,
            running_router(make_settings([f.url for f in fakes])) as router,
            aiohttp.ClientSession() as s,
        ):
            async with s.post(
                base(router) + "/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 4}
            ) as r:
                assert r.status == 200
                data = await r.json()
            assert data["object"] == "text_completion"
            assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}

            async with s.post(
                base(router) + "/v1/chat/completions",
                json={
                    "messages": [{"role": "user", "content": "hello"}],
                    "max_tokens": 3,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                },
            ) as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/event-stream")
                events = await read_sse(r)
            assert events[-1] == "[DONE]"
            deltas = [e["choices"][0]["delta"].get("content") for e in events[:3]]
            assert deltas == [" tok", " tok", " tok"]
            assert events[3]["usage"]["completion_tokens"] == 3

            async with s.get(base(router) + "/v1/models") as r:
                assert (await r.json())["data"][0]["id"] == "fake-model"
            # every request released its accounting
            assert all(ep.inflight_requests == 0 for ep in router.endpoints.values())
            assert all(ep.prefill_tokens == 0 for ep in router.endpoints.values())

    asyncio.run(main())


def test_stream_is_relayed_chunk_by_chunk() -> None:
    """The first event reaches the client while the engine is still generating the rest: the
    router does not buffer the stream."""

    async def main() -> None:
        costs = StepModel.flat(0.02)  # 50 steps/s: a 200-token answer takes seconds
        async with (
            engines(1, step_model=costs) as (fake,),
            running_router(make_settings([fake.url])) as router,
            aiohttp.ClientSession() as s,
            s.post(
                base(router) + "/v1/completions",
                json={"prompt": [1] * 10, "max_tokens": 200, "stream": True},
            ) as r,
        ):
            first = await r.content.readuntil(b"\n\n")
            assert json.loads(first[len(b"data: ") :])["choices"][0]["text"] == " tok"
            assert fake.replica.num_running == 1  # still generating
            ep = next(iter(router.endpoints.values()))
            assert ep.inflight_requests == 1 and ep.prefill_tokens == 0  # released at 1st token
            events = await read_sse(r)
            assert events[-1] == "[DONE]" and len(events) == 200

    asyncio.run(main())


def test_burst_between_two_polls_spreads() -> None:
    """Twelve requests arrive together, long before the next poll. The last poll showed engine 0
    empty and engines 1 and 2 with one waiting request each, so without the router's dispatch
    accounting all twelve would go to engine 0; with it, they even out the queues."""

    async def main() -> None:
        costs = StepModel.flat(0.5)  # nothing finishes while the burst is dispatched
        async with engines(3, step_model=costs) as fakes:
            for f in fakes[1:]:
                f.add_waiting(300, 2)  # waiting; the scheduler is not woken
            async with (
                running_router(
                    make_settings([f.url for f in fakes], poll_interval_ms=60_000)
                ) as router,
                aiohttp.ClientSession() as s,
            ):

                async def one(n: int) -> int:
                    # distinct prompts: SAL is prefix-aware, and a replica that was just sent a
                    # prompt rightly looks less loaded for the same prompt again
                    async with s.post(
                        base(router) + "/v1/completions",
                        json={"prompt": [n + 1] * 300, "max_tokens": 2},
                    ) as r:
                        return r.status

                statuses = await asyncio.gather(*(one(n) for n in range(12)))
                assert statuses == [200] * 12
                queued = [f.requests_total + (1 if i else 0) for i, f in enumerate(fakes)]
                assert sum(queued) == 14
                assert max(queued) - min(queued) <= 1, queued

    asyncio.run(main())


def test_sal_follows_polled_queue() -> None:
    """Engine 0 has a long prefill queue (seen through its real /metrics): the router sends new
    requests to engine 1."""

    async def main() -> None:
        async with (
            engines(2) as fakes,
        ):
            for _ in range(6):  # waiting requests the scheduler is never woken for
                fakes[0].add_waiting(3000, 5)
            async with (
                running_router(make_settings([f.url for f in fakes])) as router,
                aiohttp.ClientSession() as s,
            ):
                for _ in range(5):
                    async with s.post(
                        base(router) + "/v1/completions", json={"prompt": [1] * 50, "max_tokens": 1}
                    ) as r:
                        assert r.status == 200
                assert fakes[1].requests_total == 5 and fakes[0].requests_total == 0

    asyncio.run(main())


def test_bearer_token_from_a_file(tmp_path: Path) -> None:
    async def main() -> None:
        key = tmp_path / "api-key"
        key.write_text("s3cret\n")
        async with (
            engines(1) as (fake,),
            running_router(
                make_settings([fake.url]), api_key_file=key, config_check_s=0.0
            ) as router,
            aiohttp.ClientSession() as s,
        ):
            url = base(router) + "/v1/completions"
            req = {"prompt": [1, 2], "max_tokens": 1}
            async with s.post(url, json=req) as r:
                assert r.status == 401
                assert "bearer" in (await r.json())["error"]["message"]
            async with s.post(url, json=req, headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
            async with s.post(url, json=req, headers={"Authorization": "Bearer s3cret"}) as r:
                assert r.status == 200
            async with s.get(admin(router) + "/metrics") as r:  # admin port needs no token
                assert r.status == 200
            # a rotated Secret is picked up
            key.write_text("n3w-key-longer")

            async def status_with(token: str) -> int:
                async with s.post(url, json=req, headers={"Authorization": f"Bearer {token}"}) as r:
                    return r.status

            assert await status_with("n3w-key-longer") == 200
            assert await status_with("s3cret") == 401

    asyncio.run(main())


def test_discovery_resolves_replicas() -> None:
    async def main() -> None:
        async with engines(1) as (fake,):
            settings = make_settings(
                [], discovery=RouterDiscovery(dns_name="127.0.0.1", port=fake.port)
            )
            async with (
                running_router(settings, wait_polled=False) as router,
                aiohttp.ClientSession() as s,
            ):
                await router.discover_once()
                assert [ep.url for ep in router.endpoints.values()] == [fake.url]
                async with s.post(
                    base(router) + "/v1/completions", json={"prompt": [1], "max_tokens": 1}
                ) as r:
                    assert r.status == 200

    asyncio.run(main())


def test_stale_stats_are_visible_and_routing_falls_back() -> None:
    """An engine whose /metrics cannot be read still gets requests, routed by the router's own
    accounting, and the metrics say its stats are stale."""

    async def main() -> None:
        async with (
            engines(1) as (good,),
            engines(1, serve_metrics=False, step_model=StepModel.flat(0.02)) as (blind,),
        ):
            settings = make_settings([good.url, blind.url], policy="sal")
            async with (
                running_router(settings, wait_polled=False) as router,
                aiohttp.ClientSession() as s,
            ):
                blind_ep = router.endpoints[blind.url]
                await wait_for(lambda: blind_ep.poll_failures > 0, "a failed poll")
                async with s.get(admin(router) + "/metrics") as r:
                    text = await r.text()
                assert 'halffull_router_stats_stale{endpoint="e1"} 1.0' in text
                assert 'halffull_router_stats_stale{endpoint="e0"} 0.0' in text
                assert not blind_ep.down  # it answers HTTP: up, only blind
                results = await asyncio.gather(
                    *(
                        s.post(
                            base(router) + "/v1/completions",
                            json={"prompt": [1] * 100, "max_tokens": 1},
                        )
                        for _ in range(6)
                    )
                )
                assert [r.status for r in results] == [200] * 6
                for r in results:
                    r.release()
                assert blind.requests_total > 0

    asyncio.run(main())


def test_engine_metrics_names_match_what_the_router_reads() -> None:
    """The fake engine's /metrics has the vLLM names the router parses, with the live state."""

    async def main() -> None:
        shape = EngineShape(num_blocks=64, block_size=16, max_model_len=1024)
        async with FakeEngine(shape=shape, step_model=StepModel.flat(10)) as fake:
            async with aiohttp.ClientSession() as s:
                task = asyncio.create_task(
                    s.post(fake.url + "/v1/completions", json={"prompt": [1] * 40})
                )
                await wait_for(lambda: fake.replica.num_running == 1, "the request to start")
                async with s.get(fake.url + "/metrics") as r:
                    stats = parse_engine_metrics(await r.text())
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            assert stats.num_running == 1
            assert stats.kv_usage == pytest.approx(3 / 64)
            assert stats.kv_capacity_tokens == 1024

    asyncio.run(main())


@pytest.mark.parametrize("policy", sorted(ROUTING_POLICIES))
def test_every_policy_serves_through_the_router(policy: str) -> None:
    async def main() -> None:
        async with (
            engines(2) as fakes,
            running_router(make_settings([f.url for f in fakes], policy=policy)) as router,
            aiohttp.ClientSession() as s,
        ):
            assert router.policy.name == policy
            for _ in range(6):
                async with s.post(
                    base(router) + "/v1/completions", json={"prompt": [1] * 20, "max_tokens": 2}
                ) as r:
                    assert r.status == 200
            assert sum(f.requests_total for f in fakes) == 6

    asyncio.run(main())
