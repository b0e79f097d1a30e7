"""The router's own Prometheus metrics: request counters kept by the HTTP layer, and per-endpoint
gauges read from the dispatcher's table at scrape time (so they cost nothing per request)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from halffull.policy.dispatch import Dispatcher
from halffull.router.config import Settings

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Observed(Protocol):
    """What the per-endpoint gauges read (the `Router`)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def dispatcher(self) -> Dispatcher: ...


class _EndpointCollector(Collector):
    def __init__(self, source: Observed, clock: Callable[[], float]) -> None:
        self.source = source
        self.clock = clock

    def collect(self) -> Iterable[Metric]:
        settings, dispatcher = self.source.settings, self.source.dispatcher
        now = self.clock()
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
        beta.add_metric([], settings.beta)
        poll = GaugeMetricFamily(
            "halffull_router_poll_interval_seconds", "Engine stats poll interval in force"
        )
        poll.add_metric([], settings.poll_interval_ms / 1000.0)
        policy = GaugeMetricFamily(
            "halffull_router_policy", "1 for the routing policy in force", labels=["policy"]
        )
        policy.add_metric([settings.policy], 1.0)
        yield from (beta, poll, policy)
        for ep in dispatcher.endpoints.values():
            state = dispatcher.state_of(ep, now)
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


class RouterMetrics:
    """The registry served on the admin port. Labelled children are cached: `labels()` costs
    about 10 us, too much to pay on every request."""

    def __init__(self, source: Observed, clock: Callable[[], float]) -> None:
        reg = self.registry = CollectorRegistry(auto_describe=True)
        counter = partial(Counter, registry=reg)
        histogram = partial(Histogram, registry=reg, buckets=LATENCY_BUCKETS)
        self.requests = counter(
            "halffull_router_requests", "Requests answered, by route and status", ["route", "code"]
        )
        self.latency = histogram(
            "halffull_router_request_duration_seconds",
            "Time from request to the end of the response, by route",
            ["route"],
        )
        self.ttft = histogram(
            "halffull_router_time_to_first_chunk_seconds",
            "Streamed requests: time from request to the first body chunk from the engine",
        )
        self.choices = counter(
            "halffull_router_choices", "Requests dispatched, by endpoint", ["endpoint"]
        )
        self.upstream_errors = counter(
            "halffull_router_upstream_errors",
            "Upstream failures, by endpoint and kind",
            ["endpoint", "reason"],
        )
        self.retries = counter(
            "halffull_router_retries", "Requests retried on the next-best endpoint"
        )
        self.disconnects = counter(
            "halffull_router_client_disconnects", "Requests whose client went away before the end"
        )
        self.reloads = counter(
            "halffull_router_config_reloads", "Configuration reloads, by result", ["result"]
        )
        reg.register(_EndpointCollector(source, clock))
        self._request_children: dict[tuple[str, int], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}
        self._choice_children: dict[str, Counter] = {}

    def answered(self, route: str, code: int, seconds: float | None = None) -> None:
        """One request answered with `code`, after `seconds` when it got as far as routing."""
        key = (route, code)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(route, str(code))
        child.inc()
        if seconds is not None:
            hist = self._latency_children.get(route)
            if hist is None:
                hist = self._latency_children[route] = self.latency.labels(route)
            hist.observe(seconds)

    def chosen(self, endpoint: str) -> None:
        child = self._choice_children.get(endpoint)
        if child is None:
            child = self._choice_children[endpoint] = self.choices.labels(endpoint)
        child.inc()

    def upstream_error(self, endpoint: str, reason: str) -> None:
        self.upstream_errors.labels(endpoint, reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
