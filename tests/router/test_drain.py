"""SIGTERM to a router process with streams in flight, and a short rollout under load."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from halffull_dev.testing.rollout import (
    Balancer,
    Proc,
    cleanup,
    open_loop,
    start_engine,
    start_router,
)

pytestmark = pytest.mark.slow

ENGINE_ARGS = ("--step-ms", "20")  # 20 ms per step: max_tokens N streams for about N * 20 ms


async def stream(url: str, max_tokens: int) -> list[str]:
    body = {"model": "fake-model", "prompt": [1, 2, 3], "max_tokens": max_tokens, "stream": True}
    out = []
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/completions", json=body) as r:
        assert r.status == 200
        async for line in r.content:
            if line.startswith(b"data: "):
                out.append(line[6:].decode().strip())
    return out


def test_sigterm_fails_readiness_then_stops_accepting_and_finishes_streams(
    tmp_path: Path,
) -> None:
    procs: list[Proc] = []
    with cleanup(procs):
        procs.append(start_engine("engine", tmp_path, *ENGINE_ARGS))
        router = start_router("router", procs, tmp_path, "--shutdown-delay", "0.6",
                              "--drain-grace", "1.5")  # fmt: skip
        procs.append(router)
        ready = f"http://127.0.0.1:{router.admin_port}/ready"

        async def main() -> None:
            short = [asyncio.create_task(stream(router.url, 40)) for _ in range(5)]  # ~0.8 s
            long = asyncio.create_task(stream(router.url, 200))  # ~4 s: beyond the grace
            await asyncio.sleep(0.2)
            router.signal(signal.SIGTERM)
            t0 = time.monotonic()
            await asyncio.sleep(0.1)
            async with aiohttp.ClientSession() as s:
                async with s.get(ready) as r:
                    assert r.status == 503 and (await r.json())["draining"] is True
                # still taking requests during the delay (the Service has not dropped it yet),
                # each answered with Connection: close
                async with s.post(router.url + "/v1/completions",
                                  json={"prompt": [1], "max_tokens": 1}) as r:  # fmt: skip
                    assert r.status == 200 and r.headers.get("Connection") == "close"
                await asyncio.sleep(0.7)
                with pytest.raises(aiohttp.ClientConnectionError):
                    async with s.post(router.url + "/v1/completions",
                                      json={"prompt": [1], "max_tokens": 1}):  # fmt: skip
                        pass
            for events in await asyncio.gather(*short):
                assert events[-1] == "[DONE]"
            events = await long
            assert events[-1] != "[DONE]"
            error = json.loads(events[-1])["error"]
            assert "shutting down" in error["message"]
            await asyncio.to_thread(router.popen.wait, 10)
            assert router.popen.returncode == 0
            assert time.monotonic() - t0 < 0.6 + 1.5 + 2

        asyncio.run(main())


def test_rollout_and_engine_kill_under_load_lose_nothing_that_had_not_started(
    tmp_path: Path,
) -> None:
    """A short version of bench/router_rollout.py: 40 req/s for 8 s, one engine killed, the
    router rolled once."""
    procs: list[Proc] = []
    with cleanup(procs):
        engines = [start_engine(f"engine-{i}", tmp_path, *ENGINE_ARGS) for i in range(3)]
        procs += engines
        # the delay covers the balancer noticing /ready fail (50 ms checks; a loaded machine)
        args = ("--shutdown-delay", "1.5", "--drain-grace", "10")
        old = start_router("router-0", engines, tmp_path, *args)
        procs.append(old)

        async def main() -> None:
            lb = Balancer()
            lb.add(old)
            await lb.start()
            await lb.wait_ready(old)
            try:
                load = asyncio.create_task(open_loop(lb.url, 40, 8, max_tokens=20))
                await asyncio.sleep(2)
                engines[-1].signal(signal.SIGKILL)
                await asyncio.sleep(2)
                new = await asyncio.to_thread(start_router, "router-1", engines, tmp_path, *args)
                procs.append(new)
                lb.add(new)
                await lb.wait_ready(new)
                old.signal(signal.SIGTERM)
                report = await load
            finally:
                await lb.stop()
            assert report.failed_not_started() == [], f"balancer refused {lb.why}"
            assert report.cut_streams() == []
            assert report.counts()["ok"] > 0.9 * len(report.outcomes)

        asyncio.run(main())
