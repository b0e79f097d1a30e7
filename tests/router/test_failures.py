"""Refused connections, all replicas down, replicas coming back, clients that go away."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from router_helpers import base, make_settings, running_router, wait_for

from halffull.sim.profiles import StepModel
from halffull_dev.testing.fake_engine import FakeEngine


def test_refused_connection_retries_next_best_and_marks_down() -> None:
    async def main() -> None:
        a, b = FakeEngine(), FakeEngine()
        await a.start()
        await b.start()
        settings = make_settings([a.url, b.url], policy="round-robin", poll_interval_ms=60_000)
        try:
            async with (
                running_router(settings, first_backoff_s=0.05) as router,
                aiohttp.ClientSession() as s,
            ):
                await a.stop()  # its port now refuses; the poller has not noticed (60 s)
                ep_a = router.endpoints[a.url]
                assert not ep_a.down
                statuses = []
                for _ in range(4):
                    async with s.post(
                        base(router) + "/v1/completions", json={"prompt": [1], "max_tokens": 1}
                    ) as r:
                        statuses.append(r.status)
                assert statuses == [200] * 4
                assert ep_a.down
                assert b.requests_total == 4
                retries = router.metrics.retries._value.get()
                assert retries == 1  # only the first request met the dead replica
                assert ep_a.inflight_requests == 0 and ep_a.prefill_tokens == 0
        finally:
            await b.stop()

    asyncio.run(main())


def test_all_down_is_503_json_and_a_replica_is_probed_back() -> None:
    async def main() -> None:
        fake = FakeEngine()
        await fake.start()
        port = fake.port
        settings = make_settings([fake.url], poll_interval_ms=50)
        async with (
            running_router(settings, first_backoff_s=0.05, max_backoff_s=0.2) as router,
            aiohttp.ClientSession() as s,
        ):
            await fake.stop()
            ep = router.endpoints[fake.url]
            await wait_for(lambda: ep.down, "the poller to find the replica down")
            async with s.post(
                base(router) + "/v1/completions", json={"prompt": [1], "max_tokens": 1}
            ) as r:
                assert r.status == 503
                err = (await r.json())["error"]
            assert err["code"] == 503 and "no engine replica" in err["message"]
            async with s.get(f"http://127.0.0.1:{router.admin_port}/ready") as r:
                assert r.status == 503

            back = FakeEngine(port=port)
            await back.start()
            try:
                await wait_for(lambda: not ep.down, "the probe to find the replica back")
                async with s.post(
                    base(router) + "/v1/completions", json={"prompt": [1], "max_tokens": 1}
                ) as r:
                    assert r.status == 200
            finally:
                await back.stop()

    asyncio.run(main())


@pytest.mark.slow
def test_ten_thousand_aborted_requests_leak_nothing() -> None:
    """Clients hang up on streamed requests, half before the first token and half after it: each
    upstream request is cancelled in the engine and the router's accounting returns to zero."""

    async def main() -> None:
        costs = StepModel.flat(0.005)
        fakes = [FakeEngine(step_model=costs) for _ in range(2)]
        for f in fakes:
            await f.start()
        n, concurrency = 10_000, 64
        try:
            async with (
                running_router(make_settings([f.url for f in fakes])) as router,
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=concurrency, force_close=True)
                ) as s,
            ):
                url = base(router) + "/v1/completions"
                sem = asyncio.Semaphore(concurrency)

                async def abort(i: int) -> None:
                    async with sem:
                        r = await s.post(
                            url, json={"prompt": [1] * 20, "max_tokens": 500, "stream": True}
                        )
                        assert r.status == 200
                        if i % 2:
                            await r.content.readuntil(b"\n\n")  # the first token arrived
                        r.close()  # hang up

                await asyncio.gather(*(abort(i) for i in range(n)))
                eps = list(router.endpoints.values())
                await wait_for(
                    lambda: (
                        all(e.inflight_requests == 0 for e in eps)
                        and all(not f.replica.has_work for f in fakes)
                    ),
                    "every aborted request to be released",
                )
                assert all(e.prefill_tokens == 0 and e.prefill_requests == 0 for e in eps)
                assert sum(f.requests_total for f in fakes) == n
                assert sum(f.replica.aborted_total for f in fakes) == n
                assert sum(len(f._queues) for f in fakes) == 0
                assert router.metrics.disconnects._value.get() == n
                # and the router still serves
                async with s.post(url, json={"prompt": [1], "max_tokens": 2}) as r:
                    assert r.status == 200
        finally:
            for f in fakes:
                await f.stop()

    asyncio.run(main())


def test_engine_dying_mid_answer() -> None:
    """A streamed answer that breaks gets an SSE error event (its headers are gone already); a
    non-streamed one had reached the engine, so it is not run again elsewhere: 502 (issue 12: a
    request that crashes its engine must not crash the next replica too)."""

    async def main() -> None:
        dying = FakeEngine(step_model=StepModel.flat(0.05))
        healthy = FakeEngine()
        await dying.start()
        await healthy.start()
        for _ in range(3):  # a queue that makes SAL prefer the dying replica
            healthy.add_waiting(2000, 1)
        settings = make_settings([dying.url, healthy.url], poll_interval_ms=60_000)
        try:
            async with running_router(settings) as router, aiohttp.ClientSession() as s:
                url = base(router) + "/v1/completions"
                streamed = await s.post(
                    url, json={"prompt": [1] * 8, "max_tokens": 1000, "stream": True}
                )
                await streamed.content.readuntil(b"\n\n")  # first token arrived
                # 200 tokens take 10 s on the dying replica: it cannot finish there
                plain = asyncio.create_task(
                    s.post(url, json={"prompt": [1] * 8, "max_tokens": 200})
                )
                await wait_for(lambda: dying.replica.num_running == 2, "both requests to run")
                await dying.stop()  # the engine dies with both answers unfinished

                rest = (await streamed.read()).decode()
                assert '"type": "UpstreamError"' in rest and "[DONE]" not in rest
                resp = await plain
                assert resp.status == 502
                assert "not retried" in (await resp.json())["error"]["message"]
                assert router.metrics.retries._value.get() == 0
                for ep in router.endpoints.values():
                    assert ep.inflight_requests == 0 and ep.prefill_tokens == 0
        finally:
            await dying.stop()
            await healthy.stop()

    asyncio.run(main())
