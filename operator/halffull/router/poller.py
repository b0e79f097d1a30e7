"""Engine stats for the dispatcher: one poll task per endpoint, and DNS discovery of replicas.

Each endpoint has its own task (a slow replica never delays the others' stats) that reads its
/metrics every poll interval. A refused or reset connection marks the endpoint down; the same
task then probes it back after a backoff that doubles up to a limit (`Dispatcher.unreachable`),
and any HTTP answer brings it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp

from halffull.api.runtime_config import RouterDiscovery, RouterEndpoint
from halffull.policy.dispatch import Dispatcher
from halffull.policy.endpoints import Endpoint
from halffull.router.upstream import (
    BodyBroken,
    ConnectFailed,
    ConnectTimeout,
    Disconnected,
    Upstream,
    UpstreamError,
)
from halffull.runtime.plugin_metrics import parse_plugin_gauges
from halffull.runtime.vllm_metrics import MetricsParseError, parse_engine_metrics

log = logging.getLogger("halffull.router")

CONNECT_ERRORS = (ConnectFailed, ConnectTimeout, Disconnected, BodyBroken, ConnectionResetError)
"""The connection was refused or reset: the endpoint is down (not merely slow or broken)."""


class Poller:
    """Keeps one poll task per endpoint of the dispatcher's table."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        session: aiohttp.ClientSession,
        upstream: Upstream,
        plugin_port: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.dispatcher = dispatcher
        self.session = session
        """For the plugin's gauges (another port, polled only when configured)."""
        self.upstream = upstream
        """The engine's /metrics: the proxied requests' pooled client, the cheaper one per poll."""
        self.plugin_port = plugin_port
        """Where the engines' plugin serves its exact gauges (read at every poll: live)."""
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def sync(self) -> None:
        """Start tasks for new endpoints and stop those of endpoints that left the table."""
        table = self.dispatcher.endpoints
        for url in [u for u in self._tasks if u not in table]:
            self._tasks.pop(url).cancel()
        for url, ep in table.items():
            if url not in self._tasks:
                self._tasks[url] = asyncio.create_task(self._loop(ep))

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _loop(self, ep: Endpoint) -> None:
        while not ep.removed:
            started = time.monotonic()
            if ep.down and started < ep.next_probe_at:
                await asyncio.sleep(ep.next_probe_at - started)
                continue
            await self.poll_once(ep)
            interval = self.dispatcher.poll_interval_s
            await asyncio.sleep(max(0.0, started + interval - time.monotonic()))

    async def poll_once(self, ep: Endpoint) -> None:
        seq = ep.poll_started()
        try:
            port = self.plugin_port()
            exact = asyncio.create_task(self._plugin(ep, port)) if port else None
            async with asyncio.timeout(max(1.0, 5 * self.dispatcher.poll_interval_s)):
                status, text = await self._get_metrics(ep.url)
            ep.reachable()
            if status != 200:
                raise MetricsParseError(f"/metrics answered {status}")
            stats = parse_engine_metrics(text)
            if exact is not None:
                waiting, free = await exact
                stats = dataclasses.replace(stats, waiting_prefill_tokens=waiting,
                                            free_kv_tokens=free)  # fmt: skip
            ep.poll_succeeded(stats, seq, time.monotonic())
        except CONNECT_ERRORS as exc:
            ep.poll_failed()
            if not ep.down:
                log.warning("endpoint %s down (poll): %s", ep.name, exc)
            self.dispatcher.unreachable(ep, time.monotonic())
        except (TimeoutError, UpstreamError, MetricsParseError, UnicodeDecodeError) as exc:
            ep.poll_failed()
            log.debug("poll of %s failed: %s", ep.name, exc)

    async def _get_metrics(self, url: str) -> tuple[int, str]:
        """GET /metrics: the status and the text (the connection goes back to the pool only
        when the answer was read whole)."""
        resp = await self.upstream.request(url, "GET", "/metrics", b"", b"")
        try:
            data = await resp.read()
        except BaseException:
            resp.close()
            raise
        resp.release()
        return resp.status, data.decode()

    async def _plugin(self, ep: Endpoint, port: int) -> tuple[float | None, float | None]:
        """The plugin's gauges from the endpoint's host at `port`; (None, None) when it does not
        serve them (no plugin, an older image): the estimates stand."""
        host = urlsplit(ep.url).hostname or ""
        host = f"[{host}]" if ":" in host else host
        try:
            limit = aiohttp.ClientTimeout(total=max(1.0, 5 * self.dispatcher.poll_interval_s))
            async with self.session.get(f"http://{host}:{port}/metrics", timeout=limit) as r:
                if r.status != 200:
                    return None, None
                return parse_plugin_gauges(await r.text())
        except (OSError, TimeoutError, aiohttp.ClientError, UnicodeDecodeError):
            return None, None


async def discover(disc: RouterDiscovery) -> tuple[RouterEndpoint, ...]:
    """Resolve a headless Service's name: every address is one replica, named `dnsName/ADDR`.
    Raises OSError when the lookup fails."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(disc.dns_name, disc.port, type=socket.SOCK_STREAM)
    found = []
    for addr in sorted({str(info[4][0]) for info in infos}):
        host = f"[{addr}]" if ":" in addr else addr
        found.append(
            RouterEndpoint(name=f"{disc.dns_name}/{addr}", url=f"http://{host}:{disc.port}")
        )
    return tuple(found)
