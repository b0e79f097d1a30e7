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
from dataclasses import dataclass, field

import numpy as np

from halffull.policy.routing import EngineStats, RouteRequest, RoutingPolicy, make_policy
from halffull.router.endpoints import Endpoint, Ticket
from halffull.sim.engine import AdmissionPolicy, Replica, SimRequest
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
    max_wait: float = 0.0
    """LARRY's tail bound in seconds (0: none), `maxWaitSeconds` in the CRD."""
    router: str = "round-robin"
    beta: float = 1.0
    poll_s: float = 0.1
    seed: int = 0
    fast: bool = True
    """Plan runs of identical decode steps at once (same results, much faster)."""


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
    steps: list[int] = field(default_factory=list)
    busy_s: list[float] = field(default_factory=list)
    max_used_blocks: list[int] = field(default_factory=list)
    max_step_tokens: list[int] = field(default_factory=list)
    makespan_s: float = 0.0
    wall_s: float = 0.0

    @property
    def completed(self) -> int:
        return int(np.isfinite(self.tgt).sum())

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
    endpoints = [Endpoint(name=f"r{i}", url=f"sim://r{i}") for i in range(config.replicas)]
    policy: RoutingPolicy | None = None
    if config.replicas > 1:
        policy = make_policy(config.router, beta=config.beta, seed=config.seed)
    stale_after = STALE_POLLS * config.poll_s
    n = len(jobs)
    requests = [SimRequest(i, j.arrival, j.prompt, j.output) for i, j in enumerate(jobs)]
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
            a += 1
            k = 0
            if policy is not None:
                # the router's running mean of prompt sizes (Router._observe_prompt)
                mean_prompt = (
                    float(req.prompt) if a == 1 else mean_prompt + 0.02 * (req.prompt - mean_prompt)
                )
                states = [
                    ep.state(now, stale_after, shape.max_num_batched_tokens, mean_prompt)
                    for ep in endpoints
                ]
                k = policy.rank(RouteRequest(req.prompt, req.output), states)[0]
                tickets[req.rid] = endpoints[k].dispatch(req.prompt, stream=True)
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
        steps=[r.steps for r in reps],
        busy_s=[r.busy_s for r in reps],
        max_used_blocks=[r.max_used_blocks for r in reps],
        max_step_tokens=[r.max_step_tokens for r in reps],
        makespan_s=now - (requests[0].arrival if requests else 0.0),
        wall_s=time.perf_counter() - started,
    )
