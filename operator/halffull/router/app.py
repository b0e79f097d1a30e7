"""The router process: an OpenAI-compatible proxy in front of vLLM replicas, put together.

`Router` owns the settings in force, the `Dispatcher` (endpoint table, accounting, policy), one
`aiohttp.ClientSession` shared by the proxied requests and the polls, and the background tasks:
the per-endpoint pollers (`poller.py`), the configuration reload (`reload.py`) and DNS
discovery. The public port is `proxy.py` on the lean server of `server.py`; the admin port is an
aiohttp app (`admin.py`); the metrics are `metrics.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from halffull import defaults as D
from halffull.api.runtime_config import RouterEndpoint
from halffull.policy.dispatch import Dispatcher
from halffull.policy.endpoints import Endpoint
from halffull.policy.registry import make_policy
from halffull.policy.routing import RoutingPolicy
from halffull.router.admin import admin_app
from halffull.router.config import FlagOverrides, Settings
from halffull.router.metrics import RouterMetrics
from halffull.router.poller import Poller, discover
from halffull.router.proxy import PublicApi
from halffull.router.reload import ApiKey, SettingsFile
from halffull.router.upstream import Upstream

log = logging.getLogger("halffull.router")


def client_timeout(settings: Settings) -> aiohttp.ClientTimeout:
    """The connect bound of the proxied requests. The first-byte and stream-idle bounds are
    kept by each request's `Watchdog` (aiohttp's read timeout cannot tell them apart)."""
    connect = settings.timeouts.connect_seconds
    return aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect)


class Router:
    """One router: construct, `start()` to serve, `stop()` to finish."""

    def __init__(
        self,
        settings: Settings,
        *,
        flags: FlagOverrides | None = None,
        config_path: Path | None = None,
        api_key_file: Path | None = None,
        engine_api_key_file: Path | None = None,
        max_body_bytes: int = D.MAX_BODY_BYTES,
        drain_grace_s: float = float(D.DRAIN_GRACE_S),
        first_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        config_check_s: float = 1.0,
        discovery_interval_s: float = 5.0,
        seed: int | None = None,
        count_text: Callable[[str], int] | None = None,
        encode: Callable[[str], list[int]] | None = None,
    ) -> None:
        self.settings = settings
        self.config_check_s = config_check_s
        self.discovery_interval_s = discovery_interval_s
        self.seed = seed
        self.count_text = count_text
        self.encode = encode
        """The tokenizer's text -> ids: prefix-index hashes of text prompts on token ids."""
        self.dispatcher = Dispatcher(
            make_policy(settings.policy, beta=settings.beta, seed=seed),
            poll_interval_s=settings.poll_interval_ms / 1000,
            max_tokens_per_batch=settings.max_num_batched_tokens,
            max_attempts=settings.max_attempts,
            first_backoff_s=first_backoff_s,
            max_backoff_s=max_backoff_s,
        )
        self._discovered: tuple[RouterEndpoint, ...] = ()
        self.settings_file = (
            SettingsFile(config_path, flags or FlagOverrides()) if config_path else None
        )
        self.api_key = (
            ApiKey(api_key_file, check_interval_s=config_check_s) if api_key_file else None
        )
        self.engine_key = (
            ApiKey(engine_api_key_file, check_interval_s=config_check_s)
            if engine_api_key_file
            else None
        )
        self.drain_grace_s = drain_grace_s
        self.draining = False
        """SIGTERM was received: /ready fails and every answer closes its connection."""
        self.client_timeout = client_timeout(settings)
        self.metrics = RouterMetrics(self, self.loop_time)
        self.session: aiohttp.ClientSession | None = None
        """For the polls and /v1/models; proxied requests go through `upstream`."""
        self.upstream: Upstream | None = None
        self.poller: Poller | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._runners: list[web.AppRunner] = []
        self.port = 0
        self.admin_port = 0
        self.public = PublicApi(self, max_body_bytes=max_body_bytes)
        self.admin = admin_app(self)
        self._apply_endpoints()

    @staticmethod
    def loop_time() -> float:
        return time.monotonic()

    @property
    def endpoints(self) -> dict[str, Endpoint]:
        """The dispatcher's table, by URL."""
        return self.dispatcher.endpoints

    @property
    def policy(self) -> RoutingPolicy:
        return self.dispatcher.policy

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0, admin_port: int = 0) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0, enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, connect=5.0, sock_connect=5.0),
            auto_decompress=False,
        )
        self.upstream = Upstream(self.settings.timeouts.connect_seconds)
        self.poller = Poller(
            self.dispatcher,
            self.session,
            self.upstream,
            lambda: self.settings.engine_metrics_port,
        )
        self.poller.sync()
        if self.settings_file is not None:
            self._tasks.append(asyncio.create_task(self._watch_config()))
        self._tasks.append(asyncio.create_task(self._discover_loop()))
        self.port = await self.public.server.start(host, port)
        self.admin_port = await self._serve(self.admin, host, admin_port)
        log.info(
            "router on %s:%d (admin %d), policy %s, %d endpoints",
            host,
            self.port,
            self.admin_port,
            self.settings.policy,
            len(self.endpoints),
        )

    async def _serve(self, app: web.Application, host: str, port: int) -> int:
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True, backlog=1024)
        await site.start()
        self._runners.append(runner)
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    def begin_drain(self) -> None:
        """The first step of stopping: readiness fails so the Service stops sending new
        connections; requests are still served, each answer closing its connection."""
        self.draining = True

    async def stop(self) -> None:
        """Close the public listener, let answers in flight finish for up to the drain grace
        (those still running then end with an error), then close the admin port."""
        self.draining = True
        server = self.public.server
        server.stop_listening()  # no new connections; open ones close as they go idle
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_grace_s
        await server.wind_down(self.drain_grace_s)
        await self.public.finish(max(0.0, deadline - loop.time()))
        server.close()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        if self.poller is not None:
            await self.poller.stop()
            self.poller = None
        if self.upstream is not None:
            self.upstream.close()
        if self.session is not None:
            await self.session.close()
            self.session = None

    def is_ready(self) -> bool:
        if self.draining:
            return False
        return any(not ep.down and ep.stats_at is not None for ep in self.endpoints.values())

    # -- configuration -----------------------------------------------------------------------

    def apply_settings(self, settings: Settings) -> None:
        """Switch to new settings without touching requests in flight."""
        old = self.settings
        self.settings = settings
        d = self.dispatcher
        if (settings.policy, settings.beta) != (old.policy, old.beta):
            d.policy = make_policy(settings.policy, beta=settings.beta, seed=self.seed)
        d.set_limits(settings.poll_interval_ms / 1000, settings.max_num_batched_tokens)
        d.max_attempts = settings.max_attempts
        self.client_timeout = client_timeout(settings)
        if self.upstream is not None:
            self.upstream.connect_timeout_s = settings.timeouts.connect_seconds
        self._apply_endpoints()

    def _apply_endpoints(self) -> None:
        self.dispatcher.set_endpoints((*self.settings.endpoints, *self._discovered))
        if self.poller is not None:
            self.poller.sync()

    async def _watch_config(self) -> None:
        while True:
            await asyncio.sleep(self.config_check_s)
            self.reload_config_if_changed()

    def reload_config_if_changed(self) -> bool:
        """One check of the config file; True when new settings were applied."""
        if self.settings_file is None:
            return False
        try:
            settings = self.settings_file.new_settings()
        except ValueError as exc:
            self.metrics.reloads.labels("error").inc()
            log.error("configuration not reloaded, keeping the previous one: %s", exc)
            return False
        if settings is None:
            return False
        self.apply_settings(settings)
        self.metrics.reloads.labels("ok").inc()
        log.info(
            "configuration reloaded: policy %s, %d endpoints", settings.policy, len(self.endpoints)
        )
        return True

    async def _discover_loop(self) -> None:
        while True:
            await self.discover_once()  # also drops discovered endpoints when discovery is unset
            await asyncio.sleep(self.discovery_interval_s)

    async def discover_once(self) -> None:
        """Resolve the headless Service name: every address is one replica."""
        disc = self.settings.discovery
        if disc is None:
            if self._discovered:
                self._discovered = ()
                self._apply_endpoints()
            return
        try:
            found = await discover(disc)
        except OSError as exc:
            log.warning(
                "discovery of %s failed, keeping %d endpoints: %s",
                disc.dns_name,
                len(self._discovered),
                exc,
            )
            return
        if found != self._discovered:
            self._discovered = found
            self._apply_endpoints()
