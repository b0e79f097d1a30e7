"""Where the operator reads engine pods' memory and queue metrics: the pods' own /metrics, or a
Prometheus server that scrapes them (labels `namespace` and `pod`, as PodMonitors set them)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_api_client import PrometheusConnect
from prometheus_client.parser import text_string_to_metric_families
from urllib3.util.retry import Retry

from halffull.policy.routing import EngineStats
from halffull.policy.weights import Sample, sample_problem
from halffull.runtime.vllm_metrics import MetricsParseError, parse_engine_metrics

MIN_REQUESTS_FOR_MEAN = 20
"""Finished requests an engine must have served before its mean prompt length is trusted."""


@dataclass(frozen=True, slots=True)
class Target:
    pod: str
    url: str  # http://IP:PORT


def typical_prompt_tokens(prompt_tokens: float, finished: float) -> float | None:
    if finished < MIN_REQUESTS_FOR_MEAN or not math.isfinite(prompt_tokens) or prompt_tokens <= 0:
        return None
    return prompt_tokens / finished


def _counters(text: str) -> tuple[float, float]:
    """`vllm:prompt_tokens_total` and `vllm:request_success_total`, summed over labels."""
    wanted = ("vllm:prompt_tokens", "vllm:request_success")
    lines = [
        line
        for line in text.splitlines()
        if line.startswith(wanted) or (line.startswith("#") and any(w in line for w in wanted))
    ]
    prompt = finished = 0.0
    for fam in text_string_to_metric_families("\n".join(lines) + "\n"):
        for s in fam.samples:
            if s.name == "vllm:prompt_tokens_total":
                prompt += s.value
            elif s.name == "vllm:request_success_total":
                finished += s.value
    return prompt, finished


def sample_from_text(text: str, taken_at: float) -> Sample:
    try:
        stats = parse_engine_metrics(text)
        prompt, finished = _counters(text)
    except (MetricsParseError, ValueError) as exc:
        return Sample(None, taken_at, f"unreadable /metrics: {exc}")
    problem = sample_problem(stats)
    if problem:
        return Sample(None, taken_at, problem)
    return Sample(stats, taken_at, None, typical_prompt_tokens(prompt, finished))


class DirectScraper:
    """Scrapes pods concurrently over one session, with a short timeout and bounded fan-out."""

    def __init__(self, timeout_s: float = 2.0, concurrency: int = 16) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.limit = asyncio.Semaphore(concurrency)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _one(self, target: Target) -> Sample:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        async with self.limit:
            started = time.monotonic()
            try:
                async with self._session.get(f"{target.url}/metrics") as resp:
                    if resp.status != 200:
                        return Sample(None, started, f"/metrics answered HTTP {resp.status}")
                    text = await resp.text()
            except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError) as exc:
                return Sample(None, started, f"/metrics unreachable: {exc!r}")
        return sample_from_text(text, started)

    async def scrape(self, targets: Sequence[Target]) -> dict[str, Sample]:
        samples = await asyncio.gather(*(self._one(t) for t in targets))
        return {t.pod: s for t, s in zip(targets, samples, strict=True)}


class PrometheusError(RuntimeError):
    pass


class PrometheusSource:
    """Instant queries for one LLMService's pods. Blocking (requests): call it in a thread.

    `timeout_s` bounds each HTTP request (connect and read: a server that accepts and never
    answers costs that long, once per pass, since the first failed query ends the pass) and is
    also sent as PromQL's evaluation timeout. No HTTP retries: the next pass is the retry."""

    def __init__(self, url: str, timeout_s: float = 3.0) -> None:
        self.url = url
        self.client = PrometheusConnect(
            url=url,
            disable_ssl=True,
            timeout=timeout_s,
            retry=Retry(total=0),
        )
        self.timeout_s = timeout_s

    def _query(self, promql: str) -> list[dict[str, Any]]:
        try:
            result = self.client.custom_query(query=promql, params={"timeout": self.timeout_s})
        except Exception as exc:  # the client raises requests' and its own exception types
            raise PrometheusError(f"{self.url}: {exc}") from exc
        return list(result)

    def _by_pod(self, promql: str) -> dict[str, float]:
        return {r["metric"].get("pod", ""): float(r["value"][1]) for r in self._query(promql)}

    def query(self, namespace: str, pods: Sequence[str]) -> dict[str, Sample]:
        sel = f'namespace="{namespace}",pod=~"{"|".join(pods)}"'
        waiting = self._by_pod(f"sum by (pod) (vllm:num_requests_waiting{{{sel}}})")
        running = self._by_pod(f"sum by (pod) (vllm:num_requests_running{{{sel}}})")
        usage = self._by_pod(f"avg by (pod) (vllm:kv_cache_usage_perc{{{sel}}})")
        age = self._by_pod(f"max by (pod) (time() - timestamp(vllm:num_requests_waiting{{{sel}}}))")
        prompt = self._by_pod(f"sum by (pod) (vllm:prompt_tokens_total{{{sel}}})")
        finished = self._by_pod(f"sum by (pod) (vllm:request_success_total{{{sel}}})")
        cache: dict[str, Mapping[str, str]] = {
            r["metric"].get("pod", ""): r["metric"]
            for r in self._query(f"vllm:cache_config_info{{{sel}}}")
        }
        now = time.monotonic()
        out: dict[str, Sample] = {}
        for pod in pods:
            if pod not in waiting or pod not in running:
                out[pod] = Sample(None, now, "no vllm:num_requests_* series in Prometheus")
                continue
            raw = {"num_requests_waiting": waiting[pod], "num_requests_running": running[pod]}
            bad = next((k for k, v in raw.items() if not math.isfinite(v) or v < 0), None)
            if bad is not None:
                out[pod] = Sample(None, now, f"vllm:{bad} is {raw[bad]}")
                continue
            labels = cache.get(pod, {})
            stats = EngineStats(
                num_running=round(running[pod]),
                num_waiting=round(waiting[pod]),
                kv_usage=usage.get(pod, 0.0),
                num_gpu_blocks=_positive_int(labels.get("num_gpu_blocks")),
                block_size=_positive_int(labels.get("block_size")),
            )
            taken = now - max(0.0, age.get(pod, 0.0))
            problem = sample_problem(stats)
            if problem:
                out[pod] = Sample(None, taken, problem)
                continue
            mean = typical_prompt_tokens(prompt.get(pod, 0.0), finished.get(pod, 0.0))
            out[pod] = Sample(stats, taken, None, mean)
        return out


def _positive_int(value: str | None) -> int | None:
    try:
        number = int(value) if value is not None else None
    except ValueError:
        return None
    return number if number and number > 0 else None
