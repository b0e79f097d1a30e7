"""Engine faults seen through the router: a request that crashes its engine, hung and stalled
engines, overload, and the headers that cross the router each way."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from misbehaving import misbehaving
from router_helpers import admin, base, make_settings, read_sse, running_router, wait_for

from halffull.api.runtime_config import RouterTimeouts
from halffull.sim.profiles import StepModel
from halffull_dev.cluster.controlplane import free_port
from halffull_dev.testing.fake_engine import FakeEngine

HERE = Path(__file__).resolve().parent


def upstream_errors(text: str, reason: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if (
            line.startswith("halffull_router_upstream_errors_total{")
            and f'reason="{reason}"' in line
        ):
            endpoint = line.split('endpoint="', 1)[1].split('"', 1)[0]
            out[endpoint] = float(line.rsplit(" ", 1)[1])
    return out


async def metrics_text(router: object) -> str:
    async with aiohttp.ClientSession() as s, s.get(admin(router) + "/metrics") as r:  # type: ignore[arg-type]
        return await r.text()


@pytest.fixture
def poisonable_engines(tmp_path: Path) -> Iterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    """Three engine processes that exit when a request says POISON."""
    engines = []
    for i in range(3):
        port = free_port()
        log = (tmp_path / f"engine-{i}.log").open("wb")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "misbehaving.py"), "--port", str(port), "--name", f"e{i}"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        engines.append((f"http://127.0.0.1:{port}", proc))
    try:
        import urllib.request

        for url, proc in engines:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, f"engine {url} exited at start"
                try:
                    with urllib.request.urlopen(url + "/health", timeout=1):
                        break
                except OSError:
                    assert time.monotonic() < deadline, f"engine {url} never came up"
                    time.sleep(0.05)
        yield engines
    finally:
        for _, proc in engines:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def test_a_poison_request_takes_down_at_most_one_replica(
    poisonable_engines: list[tuple[str, subprocess.Popen[bytes]]],
) -> None:
    """The engine that got the request dies with the request's body in hand. Retrying it on the
    next replica would kill that one too (as it did: all three died and the client got 503)."""

    async def main() -> None:
        urls = [u for u, _ in poisonable_engines]
        async with (
            running_router(make_settings(urls)) as router,
            aiohttp.ClientSession() as s,
        ):
            async with s.post(base(router) + "/v1/completions",
                              json={"prompt": "POISON", "max_tokens": 4}) as r:  # fmt: skip
                assert r.status == 502
                err = (await r.json())["error"]
            assert "not retried" in err["message"]
            await asyncio.sleep(0.3)
            dead = [u for u, p in poisonable_engines if p.poll() is not None]
            assert len(dead) == 1
            # the others serve on, and the dead one is taken out once the evidence (refused
            # connections) says so
            for _ in range(6):
                async with s.post(base(router) + "/v1/completions",
                                  json={"prompt": "fine", "max_tokens": 2}) as r:  # fmt: skip
                    assert r.status == 200
            await wait_for(lambda: router.endpoints[dead[0]].down, "the dead replica marked down")
            text = await metrics_text(router)
            assert sum(upstream_errors(text, "disconnected").values()) == 1

    asyncio.run(main())


def test_a_hung_engine_gives_504_within_the_bound_and_is_tried_again_later() -> None:
    async def main() -> None:
        hung, good = misbehaving("hung"), FakeEngine()
        await hung.start()
        await good.start()
        timeouts = RouterTimeouts(connect_seconds=1, first_byte_seconds=0.3, stream_idle_seconds=5)
        settings = make_settings([hung.url, good.url], policy="round-robin", timeouts=timeouts)
        try:
            async with (
                running_router(settings, first_backoff_s=0.5, max_backoff_s=0.5) as router,
                aiohttp.ClientSession() as s,
            ):
                ep = router.endpoints[hung.url]
                codes = []
                t0 = time.monotonic()
                for _ in range(2):  # round-robin: one of the two lands on the hung engine
                    async with s.post(base(router) + "/v1/completions",
                                      json={"prompt": "HANG", "max_tokens": 2}) as r:  # fmt: skip
                        codes.append(r.status)
                        if r.status == 504:
                            err = (await r.json())["error"]
                            assert "first-byte timeout" in err["message"]
                assert 504 in codes and time.monotonic() - t0 < 5
                assert ep.suspect_until > router.loop_time()
                # while suspect, requests go elsewhere
                for _ in range(4):
                    async with s.post(base(router) + "/v1/completions",
                                      json={"prompt": "fine", "max_tokens": 1}) as r:  # fmt: skip
                        assert r.status == 200
                assert hung.requests_total == 0  # the middleware stopped the HANG one early
                await wait_for(lambda: ep.suspect_until <= router.loop_time(), "suspicion ends")
                for _ in range(4):
                    async with s.post(base(router) + "/v1/completions",
                                      json={"prompt": "fine", "max_tokens": 1}) as r:  # fmt: skip
                        assert r.status == 200
                assert hung.requests_total > 0  # tried again later
                text = await metrics_text(router)
                assert upstream_errors(text, "first_byte_timeout") == {"e0": 1.0}
        finally:
            await hung.stop()
            await good.stop()

    asyncio.run(main())


def test_a_stalled_stream_ends_with_an_error_event() -> None:
    async def main() -> None:
        stalled = misbehaving("stalled")
        await stalled.start()
        timeouts = RouterTimeouts(connect_seconds=1, first_byte_seconds=5, stream_idle_seconds=0.3)
        try:
            async with (
                running_router(make_settings([stalled.url], timeouts=timeouts)) as router,
                aiohttp.ClientSession() as s,
            ):
                body = {"prompt": "STALL", "max_tokens": 5, "stream": True}
                async with s.post(base(router) + "/v1/completions", json=body) as r:
                    assert r.status == 200
                    events = await read_sse(r)
                assert events[0]["choices"][0]["text"] == "x"
                assert "stream-idle timeout" in events[-1]["error"]["message"]
                assert events[-1]["error"]["code"] == 504
        finally:
            await stalled.stop()

    asyncio.run(main())


def test_overload_is_shed_with_429_and_retry_after() -> None:
    async def main() -> None:
        slow = [FakeEngine(step_model=StepModel.flat(step_s=0.05, token_s=1e-3)) for _ in range(2)]
        for f in slow:
            await f.start()
        settings = make_settings(
            [f.url for f in slow], max_num_batched_tokens=256, shed_queued_batches=2
        )
        try:
            async with running_router(settings) as router, aiohttp.ClientSession() as s:

                async def one(n: int) -> tuple[int, str | None]:
                    # distinct prompts: shedding counts uncached prefill (prefix-aware SAL)
                    body = {"prompt": [n + 1] * 256, "max_tokens": 1}
                    async with s.post(base(router) + "/v1/completions", json=body) as r:
                        await r.read()
                        return r.status, r.headers.get("Retry-After")

                results = await asyncio.gather(*(one(n) for n in range(40)))
                codes = [c for c, _ in results]
                # each replica takes requests until it holds more than 2 x 256 queued tokens: 3
                assert codes.count(200) >= 6 and codes.count(429) > 0
                assert all(ra and int(ra) >= 1 for c, ra in results if c == 429)
                text = await metrics_text(router)
                assert f"halffull_router_shed_requests_total {float(codes.count(429))}" in text
        finally:
            for f in slow:
                await f.stop()

    asyncio.run(main())


def test_end_to_end_headers_cross_and_the_engine_key_replaces_the_clients(tmp_path: Path) -> None:
    async def main() -> None:
        fake = misbehaving("e-1")
        await fake.start()
        engine_key = tmp_path / "engine-key"
        engine_key.write_text("engine-secret\n")
        try:
            async with (
                running_router(make_settings([fake.url]), engine_api_key_file=engine_key) as router,
                aiohttp.ClientSession() as s,
            ):
                headers = {"Authorization": "Bearer client-secret", "X-Request-Id": "r-42",
                           "traceparent": "00-1-2-01", "Connection": "keep-alive, X-Hop",
                           "X-Hop": "1"}  # fmt: skip
                async with s.post(base(router) + "/v1/completions", headers=headers,
                                  json={"prompt": "hi", "max_tokens": 1}) as r:  # fmt: skip
                    assert r.status == 200
                    assert r.headers["X-Engine"] == "e-1"
                seen = fake.seen_headers[-1]  # type: ignore[attr-defined]
                assert seen["Authorization"] == "Bearer engine-secret"
                assert seen["X-Request-Id"] == "r-42" and seen["traceparent"] == "00-1-2-01"
                assert "X-Hop" not in seen
        finally:
            await fake.stop()

    asyncio.run(main())
