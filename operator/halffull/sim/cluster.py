"""N modelled replicas behind the production router code, in one discrete-event loop.

The router side is the code the `halffull router` sidecar runs, not a copy: the routing policy
classes (`halffull.policy.routing.make_policy`) and the per-replica accounting
(`halffull.router.endpoints.Endpoint`: a request's prompt tokens are added to its replica at
dispatch and released at its first token; polled stats replace the estimate every
`poll_s`; stats older than 3 polls count as stale, as in the router). What the router reads at
a poll is what vLLM's /metrics would say at that instant: running and waiting requests, KV usage,
blocks and block size, preemptions. Requests are streamed, so TTFT = first token - arrival and
TGT (total generation time) = last token - arrival.

Events at the same instant run in this order: step ends, polls, arrivals (an arrival at the end
of a step joins the next step, as in vLLM).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from halffull.policy.prefix_index import DEFAULT_BLOCK_TOKENS, PrefixIndex
from halffull.policy.registry import make_policy
from halffull.policy.routing import EngineStats, RouteRequest, RoutingPolicy
from halffull.router.endpoints import Endpoint, Ticket
from halffull.sim.engine import AdmissionPolicy, Replica, SimRequest
from halffull.sim.kvcache import block_keys
from halffull.sim.profiles import Profile
from halffull.sim.workload import Job

STALE_POLLS = 3
"""As in the router: stats older than this many poll intervals are stale."""


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    profile: Profile
    replicas: int = 1
    admission: AdmissionPolicy = "fcfs"
    alpha: float = 1.0
    router: str = "round-robin"
    beta: float = 1.0
    poll_s: float = 0.1
    seed: int = 0
    fast: bool = True
    """Plan runs of identical decode steps at once (same results, much faster)."""
    prefix_source: Literal["router", "engine"] = "router"
    """Where a prefix-aware policy learns what each replica caches: "router", the router's
    approximate index of its own routing history (what production runs); "engine", the
    replicas' true caches (what vLLM's KV-cache events would tell a precise index)."""
    prefix_block_tokens: int = DEFAULT_BLOCK_TOKENS
    """The router index's block (a multiple of the engine's block size)."""


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

    @property
    def completed(self) -> int:
        return int(np.isfinite(self.tgt).sum())

    def hit_rate(self) -> float:
        """Share of all prompt tokens served from the replicas' prefix caches."""
        total = float(self.prompt.sum())
        return float(self.cached.sum()) / total if total > 0 else 0.0

    def throughput_tokens_s(self) -> float:
        return float(self.output.sum() / self.makespan_s) if self.makespan_s > 0 else 0.0


def _stats(rep: Replica, now: float) -> EngineStats:
    return EngineStats(
        num_running=rep.num_running,
        num_waiting=rep.num_waiting,
        kv_usage=rep.kv_usage_at(now),
        num_gpu_blocks=rep.shape.num_blocks,
        block_size=rep.shape.block_size,
        num_preemptions=float(rep.num_preemptions),
    )


def simulate(jobs: Sequence[Job], config: ClusterConfig) -> SimResult:
    """Replay `jobs` (sorted by arrival) through `config.replicas` replicas; runs until every
    request has finished."""
    started = time.perf_counter()
    shape, model = config.profile.shape, config.profile.model
    reps = [
        Replica(
            shape, model, policy=config.admission, alpha=config.alpha, index=i, fast=config.fast
        )
        for i in range(config.replicas)
    ]
    endpoints = [Endpoint(name=f"r{i}", url=f"sim://r{i}") for i in range(config.replicas)]
    policy: RoutingPolicy | None = None
    if config.replicas > 1:
        policy = make_policy(config.router, beta=config.beta, seed=config.seed)
    stale_after = STALE_POLLS * config.poll_s
    n = len(jobs)
    requests = [SimRequest(i, j.arrival, j.prompt, j.output) for i, j in enumerate(jobs)]
    index: PrefixIndex | None = None
    bs = shape.block_size
    ratio = config.prefix_block_tokens // bs
    if policy is not None and policy.uses_prefix:
        if config.prefix_block_tokens % bs:
            raise ValueError("prefix_block_tokens must be a multiple of the engine's block size")
        index = PrefixIndex(config.prefix_block_tokens)
        for ep in endpoints:
            index.set_capacity(ep.name, max(2, shape.num_blocks // ratio))
    tickets: list[Ticket | None] = [None] * n
    heap: list[tuple[float, int, int]] = []  # (end time, version, replica)
    versions = [0] * config.replicas
    mean_prompt = 0.0
    next_poll = 0.0 if policy is not None else float("inf")
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
            if policy is not None:
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
                ep.poll_succeeded(_stats(rep, now), ep.poll_started(), now)
            next_poll = now + config.poll_s
        else:
            now = t_arr
            req = requests[a]
            job = jobs[a]
            a += 1
            k = 0
            if job.prefix:
                req.keys = block_keys(job.prefix, job.hash_block, bs, job.prompt)
            if policy is not None:
                # the router's running mean of prompt sizes (Router._observe_prompt)
                mean_prompt = (
                    float(req.prompt) if a == 1 else mean_prompt + 0.02 * (req.prompt - mean_prompt)
                )
                states = [
                    ep.state(now, stale_after, shape.max_num_batched_tokens, mean_prompt)
                    for ep in endpoints
                ]
                cached = [0] * len(reps)
                hashes: list[int] = []
                if index is not None and req.keys:
                    if config.prefix_source == "engine":
                        limit = (req.prompt - 1) // bs
                        cached = [rep.pool.lookup(req.keys, limit) * bs for rep in reps]
                    else:
                        hashes = req.keys[ratio - 1 :: ratio]
                        matched = index.match(hashes, [ep.name for ep in endpoints])
                        cached = [m * config.prefix_block_tokens for m in matched]
                    states = [
                        replace(st, cached_tokens=c) for st, c in zip(states, cached, strict=True)
                    ]
                k = policy.rank(RouteRequest(req.prompt, req.output), states)[0]
                tickets[req.rid] = endpoints[k].dispatch(req.prompt - cached[k], stream=True)
                if hashes:
                    index.record(endpoints[k].name, hashes)  # type: ignore[union-attr]
            rep = reps[k]
            if rep.end_at is None:
                rep.add(req, now)
                schedule(k, rep.plan(now))
            else:
                cut = rep.add(req, now)
                if cut is not None:
                    schedule(k, cut)
    return SimResult(
        arrival=np.array([r.arrival for r in requests]),
        prompt=np.array([r.prompt for r in requests]),
        output=np.array([r.output for r in requests]),
        ttft=np.array([r.first_token_at - r.arrival for r in requests]),
        tgt=np.array([r.finished_at - r.arrival for r in requests]),
        preemptions=np.array([r.preemptions for r in requests]),
        replica=np.array([r.replica for r in requests]),
        cached=np.array([r.cached_tokens for r in requests]),
        steps=[r.steps for r in reps],
        busy_s=[r.busy_s for r in reps],
        max_used_blocks=[r.max_used_blocks for r in reps],
        max_step_tokens=[r.max_step_tokens for r in reps],
        makespan_s=now - (requests[0].arrival if requests else 0.0),
        wall_s=time.perf_counter() - started,
    )
