"""The operator's metrics loop: engine pods' memory and queue metrics -> endpoint weights.

The reconcile tells the loop which pods are Ready (`watch`); the loop samples them every
`spec.metrics.intervalSeconds`, turns readings into weights (`halffull.policy.weights`) and
publishes the new table and asks for a reconcile when the set of pods or of problems changed (at
once) or when a weight moved by the relative threshold (at most once per `min_publish_interval_s`,
so weights cannot flap through the ConfigMap). The reconcile then writes the router's ConfigMap
and `status.endpoints` from the published table: the loop itself never writes to the API, and a
tick where nothing moved costs no write at all.

Each LLMService is sampled by its own task: a source that hangs (a Prometheus that accepts the
connection and never answers) delays that LLMService's table only, never another's. Prometheus
queries block (requests), so they run in a bounded pool of their own, at most
`PER_SOURCE_THREADS` of them per Prometheus, so one hung server cannot take every thread either.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

from halffull import defaults as D
from halffull.controller.metrics_source import (
    DirectScraper,
    PrometheusError,
    PrometheusSource,
    Target,
)
from halffull.policy.weights import (
    DEFAULT_TYPICAL_PROMPT_TOKENS,
    Sample,
    endpoint_weight,
    fallback_weight,
    weights_moved,
)

log = logging.getLogger(__name__)

Key = tuple[str, str]
STALE_INTERVALS = 3
"""A reading older than this many intervals is stale: the endpoint gets the fallback weight."""

QUERY_THREADS = 8
PER_SOURCE_THREADS = 2
PASS_TIMEOUT_S = 15.0
"""A pass that takes longer is abandoned (its source's own timeouts should end it sooner)."""

LOOP_AGE = Gauge(
    "halffull_operator_metrics_loop_last_pass_timestamp_seconds",
    "Unix time of the metrics loop's last completed pass",
)
LOOP_FAILURES = Counter(
    "halffull_operator_metrics_failures_total",
    "Endpoint readings that could not be used, by reason",
    ["reason"],
)
PUBLISHES = Counter(
    "halffull_operator_weights_published_total", "Endpoint tables published (beyond hysteresis)"
)


@dataclass(frozen=True)
class Watch:
    """What the reconcile tells the loop about one LLMService."""

    targets: tuple[Target, ...]
    beta: float
    max_tokens_per_batch: int
    interval_s: float
    prometheus_url: str | None


@dataclass(frozen=True)
class Published:
    """The table the reconcile writes: weights by pod, status rows, and what is wrong if any."""

    weights: Mapping[str, float]
    rows: tuple[dict[str, Any], ...]
    problem: tuple[str, str] | None = None  # (reason, message)


@dataclass
class _State:
    watch: Watch
    next_at: float = 0.0
    published: Published | None = None
    published_at: float = float("-inf")
    capacity: dict[str, int] = field(default_factory=dict)


class WeightsLoop:
    def __init__(
        self,
        trigger: Callable[[str, str], None],
        default_prometheus_url: str | None = None,
        scraper: DirectScraper | None = None,
        min_publish_interval_s: float = D.WEIGHT_MIN_PUBLISH_INTERVAL_S,
        prometheus_timeout_s: float = 3.0,
    ) -> None:
        self.trigger = trigger
        self.min_publish_interval_s = min_publish_interval_s
        self.prometheus_timeout_s = prometheus_timeout_s
        self.default_prometheus_url = default_prometheus_url
        self.scraper = scraper or DirectScraper()
        self._states: dict[Key, _State] = {}
        self._prometheus: dict[str, PrometheusSource] = {}
        self._per_source: dict[str, asyncio.Semaphore] = {}
        self._inflight: dict[Key, asyncio.Task[None]] = {}
        self._pool = ThreadPoolExecutor(QUERY_THREADS, thread_name_prefix="metrics")

    # Called from reconcile threads: plain dict operations, atomic under the GIL.
    def watch(self, key: Key, watch: Watch) -> None:
        state = self._states.get(key)
        if state is None:
            self._states[key] = _State(watch)
        elif state.watch != watch:
            state.watch = watch
            state.next_at = 0.0  # new pods or settings: sample at once

    def forget(self, key: Key) -> None:
        self._states.pop(key, None)

    def clear(self) -> None:
        """Forget every LLMService (this replica stopped leading)."""
        self._states.clear()

    def published(self, key: Key) -> Published | None:
        state = self._states.get(key)
        return state.published if state else None

    async def run(self, tick_s: float = 0.5) -> None:
        """Start each due LLMService's pass as its own task; never wait for one to finish."""
        try:
            while True:
                now = time.monotonic()
                for key, state in list(self._states.items()):
                    if state.next_at <= now and key not in self._inflight:
                        task = asyncio.create_task(self._pass(key), name=f"metrics {key}")
                        self._inflight[key] = task
                        task.add_done_callback(self._pass_ended(key))
                LOOP_AGE.set_to_current_time()
                await asyncio.sleep(tick_s)
        finally:
            for task in list(self._inflight.values()):
                task.cancel()

    def _pass_ended(self, key: Key) -> Callable[[asyncio.Task[None]], None]:
        def ended(_: asyncio.Task[None]) -> None:
            self._inflight.pop(key, None)

        return ended

    async def close(self) -> None:
        await self.scraper.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _pass(self, key: Key) -> None:
        state = self._states.get(key)
        if state is None:
            return
        watch = state.watch
        state.next_at = time.monotonic() + watch.interval_s
        try:
            samples, problem = await asyncio.wait_for(self._sample(key[0], watch), PASS_TIMEOUT_S)
        except TimeoutError:
            LOOP_FAILURES.labels("timeout").inc()
            samples, problem = {}, ("MetricsTimeout", f"no reading within {PASS_TIMEOUT_S:.0f} s")
        except Exception:  # the loop must outlive any one bad pass
            log.exception("metrics pass for %s/%s failed", *key)
            LOOP_FAILURES.labels("internal").inc()
            return
        new = self._table(state, watch, samples, problem)
        if self._due(state, new):
            state.published = new
            state.published_at = time.monotonic()
            PUBLISHES.inc()
            self.trigger(*key)

    def _due(self, state: _State, new: Published) -> bool:
        old = state.published
        if old is None or old.weights.keys() != new.weights.keys() or old.problem != new.problem:
            return True
        recent = time.monotonic() - state.published_at < self.min_publish_interval_s
        return not recent and weights_moved(old.weights, new.weights)

    async def _sample(
        self, namespace: str, watch: Watch
    ) -> tuple[dict[str, Sample], tuple[str, str] | None]:
        if not watch.targets:
            return {}, None
        url = watch.prometheus_url or self.default_prometheus_url
        problem = None
        if url:
            source = self._prometheus.get(url) or self._prometheus.setdefault(
                url, PrometheusSource(url, self.prometheus_timeout_s)
            )
            limit = self._per_source.setdefault(url, asyncio.Semaphore(PER_SOURCE_THREADS))
            pods = [t.pod for t in watch.targets]
            loop = asyncio.get_running_loop()
            try:
                async with limit:
                    samples = await loop.run_in_executor(self._pool, source.query, namespace, pods)
                return samples, None
            except PrometheusError as exc:
                LOOP_FAILURES.labels("prometheus").inc()
                problem = ("PrometheusUnavailable", f"{exc}; reading the pods' /metrics directly")
        return await self.scraper.scrape(watch.targets), problem

    def _table(
        self,
        state: _State,
        watch: Watch,
        samples: Mapping[str, Sample],
        source_problem: tuple[str, str] | None,
    ) -> Published:
        now = time.monotonic()
        stale_after = STALE_INTERVALS * watch.interval_s
        good: dict[str, float] = {}
        bad: dict[str, str] = {}
        for target in watch.targets:
            sample = samples.get(target.pod)
            if sample is None or sample.stats is None:
                bad[target.pod] = sample.error if sample and sample.error else "no reading"
                continue
            if now - sample.taken_at > stale_after:
                bad[target.pod] = f"no reading newer than {stale_after:.0f} s"
                continue
            stats = sample.stats
            if stats.kv_capacity_tokens:
                state.capacity[target.pod] = stats.kv_capacity_tokens
            good[target.pod] = endpoint_weight(
                stats,
                beta=watch.beta,
                max_tokens_per_batch=watch.max_tokens_per_batch,
                typical_prompt_tokens=sample.typical_prompt_tokens or DEFAULT_TYPICAL_PROMPT_TOKENS,
            )
        fallback = fallback_weight(good)
        weights = {t.pod: good.get(t.pod, fallback) for t in watch.targets}
        rows = []
        for target in watch.targets:
            row: dict[str, Any] = {
                "pod": target.pod,
                "address": target.url,
                "weight": weights[target.pod],
            }
            sample = samples.get(target.pod)
            if target.pod in good and sample is not None and sample.stats is not None:
                stats = sample.stats
                capacity = stats.kv_capacity_tokens
                if capacity:
                    row["freeKvTokens"] = round(capacity * (1.0 - stats.kv_usage))
                row["kvUsage"] = round(stats.kv_usage, 3)
                row["waiting"] = stats.num_waiting
                row["running"] = stats.num_running
                row["sampleAgeSeconds"] = round(max(0.0, now - sample.taken_at), 1)
            rows.append(row)
        for reason in bad.values():
            LOOP_FAILURES.labels("endpoint").inc()
            log.debug("unusable reading: %s", reason)
        problem = source_problem
        if bad and problem is None:
            detail = "; ".join(f"{pod}: {why}" for pod, why in sorted(bad.items()))
            problem = ("EndpointMetricsMissing", f"fallback weight {fallback} for {detail}")
        return Published(weights, tuple(rows), problem)
