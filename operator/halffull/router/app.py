"""The router process: an OpenAI-compatible proxy in front of vLLM replicas.

Public port: `POST /v1/completions`, `POST /v1/chat/completions` (SSE relayed chunk by chunk),
`GET /v1/models`; optional bearer-token auth. Admin port: `/health`, `/ready`, `/metrics`.

One `aiohttp.ClientSession` serves both the proxied requests and the polls. Each endpoint has its
own poll task (a slow replica never delays the others' stats) that reads /metrics every
`pollIntervalMs`; a refused or reset connection marks the endpoint down, and the same task
probes it back with a doubling backoff. Every request is ranked by the configured policy over
the up endpoints (their `ReplicaState` built from the last poll plus the dispatch accounting in
`endpoints.py`) and sent to the first; a connection refused or reset before any response byte
retries the next in the ranking, up to `max_attempts` endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Literal

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from halffull.api.runtime_config import RouterEndpoint
from halffull.policy.registry import make_policy
from halffull.policy.routing import ReplicaState, RouteRequest, RoutingPolicy
from halffull.policy.sal import DEFAULT_MAX_TOKENS_PER_BATCH
from halffull.router.config import (
    ConfigWatcher,
    FlagOverrides,
    Settings,
    load_config_file,
    merge,
)
from halffull.router.endpoints import Endpoint, Ticket
from halffull.router.metrics_parse import MetricsParseError, parse_engine_metrics
from halffull.router.requests import ParsedRequest, RequestError, parse_request

log = logging.getLogger("halffull.router")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_CONNECT_ERRORS = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
    ConnectionResetError,
)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
STALE_POLLS = 3
"""Stats older than this many poll intervals are stale: the policy falls back (routing.py)."""


def json_error(
    status: int, message: str, kind: str | None = None, param: str | None = None
) -> web.Response:
    kind = kind or {
        400: "BadRequestError",
        401: "AuthenticationError",
        404: "NotFoundError",
        405: "MethodNotAllowed",
        413: "RequestTooLarge",
        500: "InternalServerError",
        502: "BadGateway",
        503: "ServiceUnavailable",
    }.get(status, "Error")
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": param, "code": status}},
        status=status,
    )


class _EndpointCollector(Collector):
    def __init__(self, router: Router) -> None:
        self.router = router

    def collect(self) -> Iterable[Metric]:
        r = self.router
        now = r.loop_time()
        lab = ["endpoint"]
        up = GaugeMetricFamily(
            "halffull_router_endpoint_up", "1 when the endpoint takes requests", labels=lab
        )
        age = GaugeMetricFamily(
            "halffull_router_stats_age_seconds",
            "Seconds since the endpoint's last successful /metrics poll (-1: never)",
            labels=lab,
        )
        stale = GaugeMetricFamily(
            "halffull_router_stats_stale",
            "1 when routing uses the stale-stats fallback",
            labels=lab,
        )
        queued = GaugeMetricFamily(
            "halffull_router_queued_tokens",
            "Estimated prompt tokens waiting for prefill on the endpoint",
            labels=lab,
        )
        inflight = GaugeMetricFamily(
            "halffull_router_inflight_requests", "Requests in flight on the endpoint", labels=lab
        )
        prefill = GaugeMetricFamily(
            "halffull_router_dispatched_prefill_tokens",
            "Prompt tokens dispatched whose first token has not come back",
            labels=lab,
        )
        kv = GaugeMetricFamily(
            "halffull_router_kv_usage", "Estimated KV-cache usage of the endpoint", labels=lab
        )
        fails = CounterMetricFamily(
            "halffull_router_poll_failures", "Failed /metrics polls of the endpoint", labels=lab
        )
        beta = GaugeMetricFamily("halffull_router_beta", "SAL's beta in force")
        beta.add_metric([], r.settings.beta)
        poll = GaugeMetricFamily(
            "halffull_router_poll_interval_seconds", "Engine stats poll interval in force"
        )
        poll.add_metric([], r.settings.poll_interval_ms / 1000.0)
        policy = GaugeMetricFamily(
            "halffull_router_policy", "1 for the routing policy in force", labels=["policy"]
        )
        policy.add_metric([r.settings.policy], 1.0)
        yield from (beta, poll, policy)
        for ep in r.endpoints.values():
            state = r.state_of(ep, now)
            up.add_metric([ep.name], 0.0 if ep.down else 1.0)
            a = ep.stats_age(now)
            age.add_metric([ep.name], -1.0 if a is None else a)
            stale.add_metric([ep.name], 0.0 if state.fresh else 1.0)
            queued.add_metric([ep.name], state.queued_tokens)
            inflight.add_metric([ep.name], ep.inflight_requests)
            prefill.add_metric([ep.name], ep.prefill_tokens)
            kv.add_metric([ep.name], state.kv_usage if state.kv_usage is not None else -1.0)
            fails.add_metric([ep.name], ep.poll_failures)
        yield from (up, age, stale, queued, inflight, prefill, kv, fails)


class Router:
    """Holds the endpoint table, the policy, the shared client session and both HTTP apps."""

    def __init__(
        self,
        settings: Settings,
        *,
        flags: FlagOverrides | None = None,
        config_path: Path | None = None,
        api_key_file: Path | None = None,
        max_body_bytes: int = 16 * 1024 * 1024,
        max_attempts: int = 3,
        first_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        config_check_s: float = 1.0,
        discovery_interval_s: float = 5.0,
        seed: int | None = None,
        count_text: Callable[[str], int] | None = None,
    ) -> None:
        self.settings = settings
        self.flags = flags or FlagOverrides()
        self.config_path = config_path
        self.max_attempts = max_attempts
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.config_check_s = config_check_s
        self.discovery_interval_s = discovery_interval_s
        self.seed = seed
        self.count_text = count_text
        self.policy: RoutingPolicy = make_policy(settings.policy, beta=settings.beta, seed=seed)
        self.endpoints: dict[str, Endpoint] = {}
        self._discovered: tuple[RouterEndpoint, ...] = ()
        self._pollers: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.mean_prompt_tokens = 512.0
        self._prompts_seen = 0
        self.session: aiohttp.ClientSession | None = None
        self._runners: list[web.AppRunner] = []
        self.port = 0
        self.admin_port = 0
        self._api_key_watch = ConfigWatcher(api_key_file) if api_key_file else None
        self._api_key: bytes | None = None
        self._api_key_checked = 0.0
        if api_key_file is not None:
            self._load_api_key()
        self._config_watch = ConfigWatcher(config_path) if config_path else None
        if self._config_watch is not None:
            self._config_watch.changed()  # the file read at start is the baseline

        reg = self.registry = CollectorRegistry(auto_describe=True)
        self.m_requests = Counter(
            "halffull_router_requests",
            "Requests answered, by route and status",
            ["route", "code"],
            registry=reg,
        )
        self.m_latency = Histogram(
            "halffull_router_request_duration_seconds",
            "Time from request to the end of the response, by route",
            ["route"],
            registry=reg,
            buckets=_LATENCY_BUCKETS,
        )
        self.m_ttft = Histogram(
            "halffull_router_time_to_first_chunk_seconds",
            "Streamed requests: time from request to the first body chunk from the engine",
            registry=reg,
            buckets=_LATENCY_BUCKETS,
        )
        self.m_choices = Counter(
            "halffull_router_choices",
            "Requests dispatched, by endpoint",
            ["endpoint"],
            registry=reg,
        )
        self.m_errors = Counter(
            "halffull_router_upstream_errors",
            "Upstream failures, by endpoint and kind",
            ["endpoint", "reason"],
            registry=reg,
        )
        self.m_retries = Counter(
            "halffull_router_retries", "Requests retried on the next-best endpoint", registry=reg
        )
        self.m_disconnects = Counter(
            "halffull_router_client_disconnects",
            "Requests whose client went away before the end",
            registry=reg,
        )
        self.m_reloads = Counter(
            "halffull_router_config_reloads",
            "Configuration reloads, by result",
            ["result"],
            registry=reg,
        )
        reg.register(_EndpointCollector(self))
        self._request_children: dict[tuple[str, int], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}
        self._choice_children: dict[str, Counter] = {}

        self.app = web.Application(
            client_max_size=max_body_bytes, middlewares=[self._errors_mw, self._auth_mw]
        )
        self.app.add_routes(
            [
                web.post("/v1/completions", self._completions),
                web.post("/v1/chat/completions", self._chat),
                web.get("/v1/models", self._models),
            ]
        )
        self.admin = web.Application(middlewares=[self._errors_mw])
        self.admin.add_routes(
            [
                web.get("/health", self._health),
                web.get("/ready", self._ready),
                web.get("/metrics", self._metrics),
            ]
        )
        self._apply_endpoints()

    # -- lifecycle ---------------------------------------------------------------------------

    @staticmethod
    def loop_time() -> float:
        return time.monotonic()

    async def start(self, host: str = "127.0.0.1", port: int = 0, admin_port: int = 0) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0, enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, connect=5.0, sock_connect=5.0),
            auto_decompress=False,
        )
        for ep in self.endpoints.values():
            self._start_poller(ep)
        if self._config_watch is not None:
            self._tasks.append(asyncio.create_task(self._watch_config()))
        self._tasks.append(asyncio.create_task(self._discover_loop()))
        self.port = await self._serve(self.app, host, port)
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
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=30)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True, backlog=1024)
        await site.start()
        self._runners.append(runner)
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        tasks = [*self._tasks, *self._pollers.values()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        self._pollers.clear()
        if self.session is not None:
            await self.session.close()
            self.session = None

    # -- configuration -----------------------------------------------------------------------

    def apply_settings(self, settings: Settings) -> None:
        """Switch to new settings without touching requests in flight."""
        old = self.settings
        self.settings = settings
        if (settings.policy, settings.beta) != (old.policy, old.beta):
            self.policy = make_policy(settings.policy, beta=settings.beta, seed=self.seed)
        self._apply_endpoints()

    def _apply_endpoints(self) -> None:
        wanted: dict[str, RouterEndpoint] = {}
        for e in (*self.settings.endpoints, *self._discovered):
            wanted.setdefault(e.url.rstrip("/"), e)
        table: dict[str, Endpoint] = {}
        for url, e in wanted.items():
            ep = self.endpoints.get(url) or Endpoint(name=e.name, url=url)
            ep.name, ep.weight = e.name, e.weight
            table[url] = ep
        for url, ep in self.endpoints.items():
            if url not in table:
                ep.removed = True  # requests in flight keep their Endpoint and finish normally
                task = self._pollers.pop(url, None)
                if task is not None:
                    task.cancel()
        self.endpoints = table
        if self.session is not None:
            for ep in table.values():
                if ep.url not in self._pollers:
                    self._start_poller(ep)

    async def _watch_config(self) -> None:
        assert self._config_watch is not None and self.config_path is not None
        while True:
            await asyncio.sleep(self.config_check_s)
            self.reload_config_if_changed()

    def reload_config_if_changed(self) -> bool:
        """One check of the config file; True when new settings were applied."""
        if self._config_watch is None or self.config_path is None:
            return False
        if not self._config_watch.changed():
            return False
        try:
            config = load_config_file(self.config_path)
            settings = merge(config, self.flags, str(self.config_path))
        except ValueError as exc:
            self.m_reloads.labels("error").inc()
            log.error("configuration not reloaded, keeping the previous one: %s", exc)
            return False
        self.apply_settings(settings)
        self.m_reloads.labels("ok").inc()
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
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(disc.dns_name, disc.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            log.warning(
                "discovery of %s failed, keeping %d endpoints: %s",
                disc.dns_name,
                len(self._discovered),
                exc,
            )
            return
        found = []
        for addr in sorted({str(info[4][0]) for info in infos}):
            host = f"[{addr}]" if ":" in addr else addr
            found.append(
                RouterEndpoint(name=f"{disc.dns_name}/{addr}", url=f"http://{host}:{disc.port}")
            )
        if tuple(found) != self._discovered:
            self._discovered = tuple(found)
            self._apply_endpoints()

    def _load_api_key(self) -> None:
        assert self._api_key_watch is not None
        if self._api_key_watch.changed() or self._api_key is None:
            token = self._api_key_watch.path.read_text(encoding="utf-8").strip()
            if not token:
                raise ValueError(f"API key file {self._api_key_watch.path} is empty")
            self._api_key = token.encode()

    # -- polling -----------------------------------------------------------------------------

    def _start_poller(self, ep: Endpoint) -> None:
        self._pollers[ep.url] = asyncio.create_task(self._poll_loop(ep))

    async def _poll_loop(self, ep: Endpoint) -> None:
        while not ep.removed:
            started = time.monotonic()
            if ep.down and started < ep.next_probe_at:
                await asyncio.sleep(ep.next_probe_at - started)
                continue
            await self.poll_once(ep)
            interval = self.settings.poll_interval_ms / 1000
            await asyncio.sleep(max(0.0, started + interval - time.monotonic()))

    async def poll_once(self, ep: Endpoint) -> None:
        assert self.session is not None
        seq = ep.poll_started()
        timeout = aiohttp.ClientTimeout(total=max(1.0, 5 * self.settings.poll_interval_ms / 1000))
        try:
            async with self.session.get(ep.url + "/metrics", timeout=timeout) as resp:
                text = await resp.text()
            ep.reachable()
            if resp.status != 200:
                raise MetricsParseError(f"/metrics answered {resp.status}")
            ep.poll_succeeded(parse_engine_metrics(text), seq, time.monotonic())
        except _CONNECT_ERRORS as exc:
            ep.poll_failed()
            if not ep.down:
                log.warning("endpoint %s down (poll): %s", ep.name, exc)
            ep.mark_down(time.monotonic(), self.first_backoff_s, self.max_backoff_s)
        except (TimeoutError, aiohttp.ClientError, MetricsParseError, UnicodeDecodeError) as exc:
            ep.poll_failed()
            log.debug("poll of %s failed: %s", ep.name, exc)

    # -- routing -----------------------------------------------------------------------------

    def state_of(self, ep: Endpoint, now: float) -> ReplicaState:
        s = self.settings
        return ep.state(
            now,
            STALE_POLLS * s.poll_interval_ms / 1000,
            s.max_num_batched_tokens or DEFAULT_MAX_TOKENS_PER_BATCH,
            self.mean_prompt_tokens,
        )

    def rank(self, req: ParsedRequest) -> list[Endpoint]:
        """Up endpoints, best first, for this request."""
        candidates = [ep for ep in self.endpoints.values() if not ep.down]
        if not candidates:
            return []
        now = self.loop_time()
        states = [self.state_of(ep, now) for ep in candidates]
        order = self.policy.rank(
            RouteRequest(prompt_tokens=req.prompt_tokens, max_tokens=req.max_tokens), states
        )
        return [candidates[i] for i in order]

    def _observe_prompt(self, tokens: int) -> None:
        self._prompts_seen += 1
        if self._prompts_seen == 1:
            self.mean_prompt_tokens = float(tokens)
        else:
            self.mean_prompt_tokens += 0.02 * (tokens - self.mean_prompt_tokens)

    def _count(self, route: str, code: int, seconds: float | None = None) -> None:
        """Request metrics, with the labelled children cached (labels() costs ~10 us)."""
        key = (route, code)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.m_requests.labels(route, str(code))
        child.inc()
        if seconds is not None:
            hist = self._latency_children.get(route)
            if hist is None:
                hist = self._latency_children[route] = self.m_latency.labels(route)
            hist.observe(seconds)

    def _chosen(self, name: str) -> None:
        child = self._choice_children.get(name)
        if child is None:
            child = self._choice_children[name] = self.m_choices.labels(name)
        child.inc()

    # -- middlewares -------------------------------------------------------------------------

    @web.middleware
    async def _errors_mw(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except RequestError as exc:
            return json_error(exc.status, exc.message, param=exc.param)
        except web.HTTPRequestEntityTooLarge as exc:
            return json_error(413, f"the request body is too large: {exc.text}")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return json_error(exc.status, exc.reason)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("unexpected error on %s %s", request.method, request.path)
            return json_error(500, "internal router error")

    @web.middleware
    async def _auth_mw(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._api_key_watch is not None:
            now = time.monotonic()
            if now - self._api_key_checked > 1.0:
                self._api_key_checked = now
                try:
                    self._load_api_key()
                except (OSError, ValueError) as exc:
                    log.error("API key not reloaded, keeping the previous one: %s", exc)
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            assert self._api_key is not None
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), self._api_key
            ):
                return json_error(401, "missing or wrong bearer token in the Authorization header")
        return await handler(request)

    # -- public handlers ---------------------------------------------------------------------

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "completions")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "chat")

    async def _proxy(
        self, request: web.Request, kind: Literal["completions", "chat"]
    ) -> web.StreamResponse:
        started = self.loop_time()
        route = request.path
        try:
            body = await request.read()
            parsed = parse_request(kind, body, self.settings.max_model_len, self.count_text)
        except (RequestError, web.HTTPException) as exc:
            code = exc.status if isinstance(exc, RequestError) else exc.status_code
            self._count(route, code)
            raise
        self._observe_prompt(parsed.prompt_tokens)
        headers = {"Content-Type": "application/json"}
        rid = request.headers.get("X-Request-Id")
        if rid:
            headers["X-Request-Id"] = rid
        assert self.session is not None
        code = 503
        try:
            for attempt, ep in enumerate(self.rank(parsed)[: self.max_attempts]):
                if ep.down:  # went down while an earlier attempt was failing
                    continue
                if attempt:
                    self.m_retries.inc()
                ticket = ep.dispatch(parsed.prompt_tokens, parsed.stream)
                self._chosen(ep.name)
                try:
                    upstream = await self.session.post(ep.url + route, data=body, headers=headers)
                except _CONNECT_ERRORS as exc:
                    ticket.close()
                    self.m_errors.labels(ep.name, "connect").inc()
                    if not ep.down:
                        log.warning("endpoint %s down (request): %s", ep.name, exc)
                    ep.mark_down(self.loop_time(), self.first_backoff_s, self.max_backoff_s)
                    continue
                except aiohttp.ClientError as exc:  # it may have reached the engine: no retry
                    ticket.close()
                    self.m_errors.labels(ep.name, "upstream").inc()
                    code = 502
                    return json_error(502, f"the engine replica failed to answer: {exc}")
                except BaseException:
                    ticket.close()
                    raise
                response = await self._relay(request, upstream, ticket, ep, started)
                code = response.status
                return response
            return json_error(503, "no engine replica is available; try again later")
        except asyncio.CancelledError:
            self.m_disconnects.inc()
            code = 499
            raise
        finally:
            self._count(route, code, self.loop_time() - started)

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        ticket: Ticket,
        ep: Endpoint,
        started: float,
    ) -> web.StreamResponse:
        """Pass the engine's answer to the client; always ends the ticket and the upstream
        response (closing the connection when the answer did not complete, which makes vLLM
        abort the request)."""
        complete = False
        try:
            ctype = upstream.headers.get("Content-Type", "application/json")
            if upstream.status != 200 or not ctype.startswith("text/event-stream"):
                try:
                    data = await upstream.read()
                except aiohttp.ClientError as exc:
                    self.m_errors.labels(ep.name, "body_broken").inc()
                    return json_error(502, f"the engine replica broke off its answer: {exc}")
                ticket.first_token()
                complete = True
                if upstream.status >= 500:
                    self.m_errors.labels(ep.name, f"http_{upstream.status}").inc()
                return web.Response(
                    body=data, status=upstream.status, headers={"Content-Type": ctype}
                )
            out = web.StreamResponse(
                status=200, headers={"Content-Type": ctype, "Cache-Control": "no-cache"}
            )
            await out.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    if ticket.in_prefill:
                        ticket.first_token()
                        self.m_ttft.observe(self.loop_time() - started)
                    await out.write(chunk)
                complete = True
            except aiohttp.ClientPayloadError as exc:
                # the engine died mid-answer: headers are sent, so tell the client in-band
                self.m_errors.labels(ep.name, "stream_broken").inc()
                event = {
                    "error": {
                        "message": f"upstream stream broken: {exc}",
                        "type": "UpstreamError",
                        "code": 502,
                    }
                }
                with contextlib.suppress(ConnectionResetError):
                    await out.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            except ConnectionResetError:  # the client went away while we wrote
                self.m_disconnects.inc()
                return out
            with contextlib.suppress(ConnectionResetError):
                await out.write_eof()
            return out
        finally:
            ticket.close()
            if complete:
                upstream.release()
            else:
                upstream.close()

    async def _models(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        for ep in [e for e in self.endpoints.values() if not e.down]:
            try:
                async with self.session.get(ep.url + "/v1/models") as upstream:
                    data = await upstream.read()
                    return web.Response(
                        body=data,
                        status=upstream.status,
                        headers={
                            "Content-Type": upstream.headers.get("Content-Type", "application/json")
                        },
                    )
            except _CONNECT_ERRORS:
                ep.mark_down(self.loop_time(), self.first_backoff_s, self.max_backoff_s)
        return json_error(503, "no engine replica is available; try again later")

    # -- admin handlers ----------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    def is_ready(self) -> bool:
        return any(not ep.down and ep.stats_at is not None for ep in self.endpoints.values())

    async def _ready(self, request: web.Request) -> web.Response:
        now = self.loop_time()
        table = [
            {
                "name": ep.name,
                "url": ep.url,
                "up": not ep.down,
                "statsAgeSeconds": ep.stats_age(now),
            }
            for ep in self.endpoints.values()
        ]
        ready = self.is_ready()
        return web.json_response({"ready": ready, "endpoints": table}, status=200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), content_type="text/plain", charset="utf-8"
        )
