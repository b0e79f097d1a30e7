"""Engine stats for the dispatcher: one poll task per endpoint, and DNS discovery of replicas.

Each endpoint has its own task (a slow replica never delays the others' stats) that reads its
/metrics every poll interval. A refused or reset connection marks the endpoint down; the same
task then probes it back after a backoff that doubles up to a limit (`Dispatcher.unreachable`),
and any HTTP answer brings it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

import aiohttp

from halffull.api.runtime_config import RouterDiscovery, RouterEndpoint
from halffull.policy.dispatch import Dispatcher
from halffull.policy.endpoints import Endpoint
from halffull.runtime.vllm_metrics import MetricsParseError, parse_engine_metrics

log = logging.getLogger("halffull.router")

CONNECT_ERRORS = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
    ConnectionResetError,
)
"""The connection was refused or reset: the endpoint is down (not merely slow or broken)."""


class Poller:
    """Keeps one poll task per endpoint of the dispatcher's table."""

    def __init__(self, dispatcher: Dispatcher, session: aiohttp.ClientSession) -> None:
        self.dispatcher = dispatcher
        self.session = session
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
        timeout = aiohttp.ClientTimeout(total=max(1.0, 5 * self.dispatcher.poll_interval_s))
        try:
            async with self.session.get(ep.url + "/metrics", timeout=timeout) as resp:
                text = await resp.text()
            ep.reachable()
            if resp.status != 200:
                raise MetricsParseError(f"/metrics answered {resp.status}")
            ep.poll_succeeded(parse_engine_metrics(text), seq, time.monotonic())
        except CONNECT_ERRORS as exc:
            ep.poll_failed()
            if not ep.down:
                log.warning("endpoint %s down (poll): %s", ep.name, exc)
            self.dispatcher.unreachable(ep, time.monotonic())
        except (TimeoutError, aiohttp.ClientError, MetricsParseError, UnicodeDecodeError) as exc:
            ep.poll_failed()
            log.debug("poll of %s failed: %s", ep.name, exc)


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
