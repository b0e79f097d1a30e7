"""Live configuration reload from a ConfigMap-style directory, under traffic."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from router_helpers import base, running_router, wait_for, write_configmap

from halffull.router.config import FlagOverrides, load_config_file, merge, resolve_config_path
from halffull.sim.profiles import StepModel
from halffull_dev.testing.fake_engine import FakeEngine


def config(urls: list[str], policy: str = "sal") -> dict[str, object]:
    return {
        "model": "fake-model",
        "policy": policy,
        "pollIntervalMs": 50,
        "endpoints": [{"name": u.rsplit(":", 1)[1], "url": u, "weight": 1.0} for u in urls],
    }


def test_reload_switches_replicas_without_dropping_requests(tmp_path: Path) -> None:
    async def main() -> None:
        costs = StepModel.flat(0.002)
        fakes = [FakeEngine(step_model=costs) for _ in range(3)]
        for f in fakes:
            await f.start()
        a, b, c = fakes
        mount = tmp_path / "router"
        mount.mkdir()
        write_configmap(mount, config([a.url, b.url]))
        path = resolve_config_path(str(mount))
        settings = merge(load_config_file(path), FlagOverrides(), str(path))
        try:
            async with (
                running_router(settings, config_path=path, config_check_s=0.01) as router,
                aiohttp.ClientSession() as s,
            ):
                stop = asyncio.Event()
                statuses: list[int] = []

                async def client() -> None:
                    while not stop.is_set():
                        async with s.post(
                            base(router) + "/v1/completions",
                            json={"prompt": [1] * 30, "max_tokens": 8, "stream": True},
                        ) as r:
                            await r.read()
                            statuses.append(r.status)

                clients = [asyncio.create_task(client()) for _ in range(8)]
                await wait_for(lambda: a.requests_total > 20 and b.requests_total > 20, "traffic")
                write_configmap(mount, config([c.url], policy="least-requests"))
                await wait_for(lambda: list(router.endpoints) == [c.url], "the reload")
                assert router.policy.name == "least-requests"

                def old_choices() -> tuple[float, float]:
                    return tuple(
                        router.metrics.choices.labels(n)._value.get()
                        for n in (str(a.port), str(b.port))
                    )

                before = old_choices()
                await wait_for(lambda: c.requests_total > 50, "traffic on the new replica")
                stop.set()
                await asyncio.gather(*clients)
                assert old_choices() == before  # nothing dispatched to the old replicas since
                assert statuses and set(statuses) == {200}
                assert router.metrics.reloads.labels("ok")._value.get() == 1

                # a broken file is refused and the running configuration stays
                write_configmap(mount, {"model": "m", "policy": "fastest"})
                await wait_for(
                    lambda: router.metrics.reloads.labels("error")._value.get() == 1,
                    "the bad reload",
                )
                assert list(router.endpoints) == [c.url]
                async with s.post(
                    base(router) + "/v1/completions", json={"prompt": [1], "max_tokens": 1}
                ) as r:
                    assert r.status == 200
        finally:
            for f in fakes:
                await f.stop()

    asyncio.run(main())


def test_flags_override_the_file_and_add_endpoints(tmp_path: Path) -> None:
    path = tmp_path / "router.json"
    path.write_text(
        '{"model": "m", "policy": "sal", "beta": 2, "endpoints": '
        '[{"name": "a", "url": "http://10.0.0.1:8000", "weight": 0.5}]}'
    )
    s = merge(
        load_config_file(path),
        FlagOverrides(endpoints=("http://127.0.0.1:9/",), policy="random", beta=None),
        str(path),
    )
    assert s.policy == "random" and s.beta == 2.0
    assert [(e.name, e.url, e.weight) for e in s.endpoints] == [
        ("a", "http://10.0.0.1:8000", 0.5),
        ("127.0.0.1:9", "http://127.0.0.1:9", 1.0),
    ]
