"""Static-batching baselines of the slice-level scheduling seed (SCLS, arXiv 2406.13511).

- Sequence-level scheduling (SLS): a batch is formed first-come-first-served from a central
  queue and runs until its longest request finishes; nothing joins it meanwhile. Output lengths
  are unknown, so each request reserves KV for its prompt plus the maximum generation length.
- Slice-level scheduling (SCLS): the same, but a batch runs for at most `slice_len` generated
  tokens; unfinished requests go back to the queue (at their arrival position), their KV
  dropped, and are prefilled again (prompt + generated so far) in a later slice. Each request
  reserves its current context plus one slice, so a batch's memory and time are bounded and
  estimable, and batches can be larger.
- Cross-instance offloading: the central queue hands the next batch to whichever instance
  becomes free first. With exact time estimates this is the seed's "send the batch to the
  instance with the least estimated load"; it is the pull form of it (docs/simulator.md).

A batch is prefilled in one step, which yields each request's next token; then one decode step
per token; requests that finish leave the batch (the step gets cheaper) but free no slot for
others until the batch ends. The iteration-level baseline (continuous batching) is the vLLM
model in `halffull.sim.engine`.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from halffull.sim.cluster import SimResult
from halffull.sim.engine import SimRequest
from halffull.sim.profiles import Profile, attended_pairs
from halffull.sim.workload import Job

SliceMode = Literal["sls", "scls"]


@dataclass(frozen=True, slots=True)
class SliceConfig:
    profile: Profile
    instances: int = 1
    mode: SliceMode = "scls"
    slice_len: int = 128
    max_gen: int = 1024
    """The generation-length limit every request is served under (SLS reserves it)."""


def _reserve(req: SimRequest, config: SliceConfig) -> int:
    if config.mode == "sls":
        return req.prompt + config.max_gen
    return req.prompt + req.generated + config.slice_len


def _run_batch(batch: list[SimRequest], start: float, config: SliceConfig) -> tuple[float, int]:
    """Serve one batch from `start`; returns its end time and its number of steps."""
    model = config.profile.model
    limit = config.max_gen if config.mode == "sls" else config.slice_len
    contexts = [r.prompt + r.generated for r in batch]
    total = sum(contexts)
    attended = sum(attended_pairs(0, c) for c in contexts)
    now = start + model.step(total, 0, total, attended, len(batch))
    steps = 1
    for r in batch:  # the prefill samples each request's next token
        r.generated += 1
        if r.first_token_at < 0:
            r.first_token_at = now
    # tokens each request still makes in this batch (after the prefill's one)
    left = np.array([min(r.output - r.generated, limit - 1) for r in batch], dtype=np.int64)
    ctx = float(sum(contexts) + len(batch))
    done_at = np.full(len(batch), now)
    produced = 0
    for until in np.unique(left[left > 0]):
        active = int((left > produced).sum())
        count = int(until - produced)
        reads = ctx + active * np.arange(1, count + 1, dtype=np.float64)
        durations = model.decode_steps(active, reads)
        ends = now + np.cumsum(durations)
        now = float(ends[-1])
        ctx = float(reads[-1])
        steps += count
        produced = int(until)
        done_at[left == until] = now
    for r, extra, t in zip(batch, left.tolist(), done_at.tolist(), strict=True):
        r.generated += extra
        if r.generated >= r.output:
            r.finished_at = t
    return now, steps


def simulate_slices(jobs: Sequence[Job], config: SliceConfig) -> SimResult:
    """Replay `jobs` through `config.instances` static-batching instances fed by one queue."""
    started = time.perf_counter()
    shape = config.profile.shape
    if config.slice_len < 1 or config.max_gen < 1:
        raise ValueError("slice_len and max_gen must be positive")
    requests = [
        SimRequest(i, j.arrival, j.prompt, min(j.output, config.max_gen))
        for i, j in enumerate(jobs)
    ]
    for r in requests:
        if _reserve(r, config) > shape.kv_tokens:
            raise ValueError(f"request {r.rid} alone needs more KV than an instance has")
    pool: list[tuple[float, int]] = []  # (arrival, rid): FCFS by original arrival
    returning: list[tuple[float, float, int]] = []  # (batch end, arrival, rid): back after a slice
    free_at = [0.0] * config.instances
    steps = [0] * config.instances
    busy = [0.0] * config.instances
    a = 0
    n = len(requests)
    remaining = n
    now = 0.0
    while remaining:
        k = min(range(config.instances), key=lambda i: free_at[i])
        now = max(free_at[k], now)
        while a < n and requests[a].arrival <= now:
            heapq.heappush(pool, (requests[a].arrival, a))
            a += 1
        while returning and returning[0][0] <= now:
            _, arrival, rid = heapq.heappop(returning)
            heapq.heappush(pool, (arrival, rid))
        if not pool:
            later = min(
                requests[a].arrival if a < n else np.inf,
                returning[0][0] if returning else np.inf,
            )
            now = float(later)
            free_at[k] = max(free_at[k], now)
            continue
        batch: list[SimRequest] = []
        reserved = 0
        while pool and len(batch) < shape.max_num_seqs:
            req = requests[pool[0][1]]
            need = _reserve(req, config)
            if reserved + need > shape.kv_tokens:
                break
            heapq.heappop(pool)
            batch.append(req)
            reserved += need
        end, count = _run_batch(batch, now, config)
        steps[k] += count
        busy[k] += end - now
        free_at[k] = end
        for req in batch:
            req.replica = k
            if req.generated >= req.output:
                remaining -= 1
            else:
                req.preemptions += 1  # counts slices served without finishing
                heapq.heappush(returning, (end, req.arrival, req.rid))
    makespan = max(r.finished_at for r in requests) - (requests[0].arrival if requests else 0.0)
    return SimResult.of_requests(
        requests,
        steps=steps,
        busy_s=busy,
        makespan_s=makespan,
        wall_s=time.perf_counter() - started,
    )
