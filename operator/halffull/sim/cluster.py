"""N modelled replicas behind the production router code, in one discrete-event loop.

The router side is the code the `halffull router` sidecar runs, not a copy: its
`halffull.policy.dispatch.Dispatcher` (the endpoint table, the dispatch accounting: a request's
prompt tokens are added to its replica at dispatch and released at its first token; the running
mean prompt length; the stale-stats rule; the policy class from the registry), driven here on the
simulated clock, with polled stats every `poll_s`. What the router reads at a poll is what vLLM's
/metrics would say at that instant: running and waiting requests, KV usage, blocks and block
size, preemptions; with `gauges="plugin"` also the LARRY plugin's exact waiting prefill tokens
and free KV tokens, as the router reads them when the operator gives it the plugin's port. Both
go through the router's own `estimate_replica`, which uses the exact gauges when a poll has them
and estimates otherwise. Requests are streamed, so TTFT = first token - arrival and
TGT (total generation time) = last token - arrival.

Events at the same instant run in this order: step ends, polls, arrivals (an arrival at the end
of a step joins the next step, as in vLLM).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from halffull import defaults as D
from halffull.api.runtime_config import RouterEndpoint
from halffull.policy.dispatch import Dispatcher
from halffull.policy.endpoints import Ticket
from halffull.policy.prefix_index import DEFAULT_BLOCK_TOKENS
from halffull.policy.registry import make_policy
from halffull.policy.routing import EngineStats, RouteRequest
from halffull.sim.engine import AdmissionPolicy, Replica, SimRequest
from halffull.sim.kvcache import block_keys
from halffull.sim.profiles import Profile
from halffull.sim.workload import Job


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    profile: Profile
    replicas: int = 1
    admission: AdmissionPolicy = "fcfs"
    alpha: float = D.ALPHA
    max_wait: float = 0.0
    """LARRY's tail bound in seconds (0: none), `maxWaitSeconds` in the CRD. A model knob, not a
    shipped default: `halffull bench tune` and the benchmarks pass `D.MAX_WAIT_SECONDS` where
    they mean the shipped setting."""
    router: str = "round-robin"
    beta: float = D.BETA
    poll_s: float = D.POLL_INTERVAL_MS / 1000
    seed: int = 0
    fast: bool = True
    """Plan runs of identical decode steps at once (same results, much faster)."""
    prefix_source: Literal["router", "engine"] = "router"
    """Where a prefix-aware policy learns what each replica caches: "router", the router's
    approximate index of its own routing history (what production runs); "engine", the
    replicas' true caches (what vLLM's KV-cache events would tell a precise index)."""
    gauges: Literal["vllm", "plugin"] = "vllm"
    """What each poll reads: "vllm", vLLM's /metrics alone (the router then prices the engine's
    waiting requests it did not send, preempted ones included, at its mean prompt, and takes free
    KV from the usage fraction); "plugin", also the LARRY plugin's
    `halffull_engine_waiting_prefill_tokens` and `halffull_engine_free_kv_tokens` (the router's
    `engineMetricsPort`), read at the same instant."""


@dataclass(slots=True)
class SimResult:
    """Per-request outcomes (arrays in job order) and per-replica counters."""

    arrival: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    ttft: np.ndarray
    tgt: np.ndarray
    preemptions: np.ndarray
    replica: np.ndarray
    cached: np.ndarray
    """Prompt tokens found in the replica's prefix cache at first admission."""
    steps: list[int] = field(default_factory=list)
    busy_s: list[float] = field(default_factory=list)
    max_used_blocks: list[int] = field(default_factory=list)
    max_step_tokens: list[int] = field(default_factory=list)
    makespan_s: float = 0.0
    wall_s: float = 0.0

    @classmethod
    def of_requests(
        cls,
        requests: Sequence[SimRequest],
        *,
        steps: list[int],
        busy_s: list[float],
        makespan_s: float,
        wall_s: float,
        max_used_blocks: list[int] | None = None,
        max_step_tokens: list[int] | None = None,
    ) -> SimResult:
        """The per-request arrays read from finished `SimRequest`s, with the run's counters."""
        return cls(
            arrival=np.array([r.arrival for r in requests]),
            prompt=np.array([r.prompt for r in requests]),
            output=np.array([r.output for r in requests]),
            ttft=np.array([r.first_token_at - r.arrival for r in requests]),
            tgt=np.array([r.finished_at - r.arrival for r in requests]),
            preemptions=np.array([r.preemptions for r in requests]),
            replica=np.array([r.replica for r in requests]),
            cached=np.array([r.cached_tokens for r in requests]),
            steps=steps,
            busy_s=busy_s,
            max_used_blocks=max_used_blocks or [],
            max_step_tokens=max_step_tokens or [],
            makespan_s=makespan_s,
            wall_s=wall_s,
        )

    @property
    def completed(self) -> int:
        return int(np.isfinite(self.tgt).sum())

    def hit_rate(self) -> float:
        """Share of all prompt tokens served from the replicas' prefix caches."""
        total = float(self.prompt.sum())
        return float(self.cached.sum()) / total if total > 0 else 0.0

    def throughput_tokens_s(self) -> float:
        return float(self.output.sum() / self.makespan_s) if self.makespan_s > 0 else 0.0


def _stats(rep: Replica, now: float, plugin: bool) -> EngineStats:
    """One poll of `rep` at `now`: vLLM's /metrics, and the plugin's gauges when `plugin`."""
    return EngineStats(
        num_running=rep.num_running,
        num_waiting=rep.num_waiting,
        kv_usage=rep.kv_usage_at(now),
        num_gpu_blocks=rep.shape.num_blocks,
        block_size=rep.shape.block_size,
        num_preemptions=float(rep.num_preemptions),
        waiting_prefill_tokens=float(rep.waiting_prefill_tokens) if plugin else None,
        free_kv_tokens=float(rep.free_kv_tokens_at(now)) if plugin else None,
    )


def simulate(jobs: Sequence[Job], config: ClusterConfig) -> SimResult:
    """Replay `jobs` (sorted by arrival) through `config.replicas` replicas; runs until every
    request has finished."""
    started = time.perf_counter()
    shape, model = config.profile.shape, config.profile.model
    reps = [
        Replica(
            shape,
            model,
            policy=config.admission,
            alpha=config.alpha,
            max_wait=config.max_wait,
            index=i,
            fast=config.fast,
        )
        for i in range(config.replicas)
    ]
    router: Dispatcher | None = None  # one replica needs no router
    if config.replicas > 1:
        router = Dispatcher(
            make_policy(config.router, beta=config.beta, seed=config.seed),
            poll_interval_s=config.poll_s,
            max_tokens_per_batch=shape.max_num_batched_tokens,
        )
        router.set_endpoints(
            RouterEndpoint(name=f"r{i}", url=f"http://r{i}") for i in range(config.replicas)
        )
    endpoints = list(router.endpoints.values()) if router is not None else []
    bs = shape.block_size
    ratio = DEFAULT_BLOCK_TOKENS // bs
    replica_of = {ep.url: k for k, ep in enumerate(endpoints)}
    n = len(jobs)
    requests = [SimRequest(i, j.arrival, j.prompt, j.output) for i, j in enumerate(jobs)]
    tickets: list[Ticket | None] = [None] * n
    heap: list[tuple[float, int, int]] = []  # (end time, version, replica)
    versions = [0] * config.replicas
    next_poll = 0.0 if router is not None else float("inf")
    plugin = config.gauges == "plugin"
    a = 0  # next arrival
    remaining = n
    now = 0.0

    def schedule(k: int, end: float | None) -> None:
        versions[k] += 1
        if end is not None:
            heapq.heappush(heap, (end, versions[k], k))

    while remaining:
        t_step = heap[0][0] if heap else float("inf")
        t_arr = requests[a].arrival if a < n else float("inf")
        if t_step <= next_poll and t_step <= t_arr:
            now, version, k = heapq.heappop(heap)
            if version != versions[k]:
                continue
            rep = reps[k]
            result = rep.complete()
            if router is not None:
                for req in result.first_tokens:
                    ticket = tickets[req.rid]
                    assert ticket is not None
                    ticket.first_token()
                for req in result.finished:
                    ticket = tickets[req.rid]
                    assert ticket is not None
                    ticket.close()
                    tickets[req.rid] = None
            remaining -= len(result.finished)
            schedule(k, rep.plan(now))
        elif next_poll <= t_arr:
            now = next_poll
            for ep, rep in zip(endpoints, reps, strict=True):
                ep.poll_succeeded(_stats(rep, now, plugin), ep.poll_started(), now)
            next_poll = now + config.poll_s
        else:
            now = t_arr
            req = requests[a]
            job = jobs[a]
            a += 1
            k = 0
            hashes: tuple[int, ...] = ()
            cached: list[int] | None = None
            if job.prefix:
                req.keys = block_keys(job.prefix, job.hash_block, bs, job.prompt)
                # the router's 256-token blocks: every ratio-th chained engine key
                hashes = tuple(req.keys[ratio - 1 :: ratio])
                if config.prefix_source == "engine":
                    limit = (req.prompt - 1) // bs
                    cached = [rep.pool.lookup(req.keys, limit) * bs for rep in reps]
            if router is not None:
                route = RouteRequest(req.prompt, req.output, hashes)
                first = router.attempts(route, now, cached)[0]
                k = replica_of[first.endpoint.url]
                tickets[req.rid] = first.dispatch(stream=True)
            rep = reps[k]
            if rep.end_at is None:
                rep.add(req, now)
                schedule(k, rep.plan(now))
            else:
                cut = rep.add(req, now)
                if cut is not None:
                    schedule(k, cut)
    return SimResult.of_requests(
        requests,
        steps=[r.steps for r in reps],
        busy_s=[r.busy_s for r in reps],
        max_used_blocks=[r.max_used_blocks for r in reps],
        max_step_tokens=[r.max_step_tokens for r in reps],
        makespan_s=now - (requests[0].arrival if requests else 0.0),
        wall_s=time.perf_counter() - started,
    )
