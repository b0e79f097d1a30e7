"""LARRY: the order in which one engine admits its waiting requests.

At every scheduling step each waiting request r gets

    score(r) = alpha * wait(r) - queue_len * mem(r)          (policy "larry")
    score(r) = alpha * wait(r) + queue_len * mem(r)          (policy "larry-literal")

and the engine admits in decreasing score. `wait` is seconds since arrival, `queue_len` the
number of requests waiting in the engine, and `mem` the KV blocks r's prompt occupies as a
fraction of the engine's KV capacity. Under a short queue the waiting time dominates and the
order is first-come-first-served; as the queue grows the memory term takes over, so that (in the
default reading) small prompts, which fit into the little memory left, go first. The seed prints
the memory term with a plus sign; that literal reading is kept as the ablation "larry-literal"
so that the benchmark can show which one yields the reported gains.

Preempted requests are not scored: the engine already paid for part of their work and vLLM puts
them back at the head of its queue, so they keep that place, in the order they were given.

A tail bound `max_wait` (seconds; 0 means none) caps what the median costs the tail: a request
that has waited longer than it is overdue, and overdue requests go next after the preempted ones,
in arrival order, ahead of everything LARRY scores. Without it a large prompt can wait behind a
stream of small ones until its waiting time catches up with `queue_len * mem / alpha`.

Ties in score are broken by arrival time and then by position in the input, so the order is a
pure function of the inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

LarryPolicy = Literal["larry", "larry-literal", "fcfs"]
"""The admission policies. Same spelling as the engine's parameter file."""

POLICIES: tuple[LarryPolicy, ...] = ("larry", "larry-literal", "fcfs")


@dataclass(frozen=True, slots=True)
class KVCapacity:
    """The engine's paged KV cache: tokens per block and number of blocks."""

    block_size: int
    num_blocks: int

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.num_blocks < 1:
            raise ValueError(f"KV capacity needs positive sizes, got {self}")


@dataclass(frozen=True, slots=True)
class WaitingRequest:
    """What LARRY knows about one waiting request.

    `kv_tokens` is the number of tokens whose KV entries the request needs when admitted: its
    prompt, plus any output it already generated when it was preempted and must be recomputed.
    """

    kv_tokens: int
    arrival_time: float
    preempted: bool = False


def check_parameters(policy: str, alpha: float, max_wait: float) -> None:
    """Raise ValueError naming the parameter when one is out of range."""
    if policy not in POLICIES:
        raise ValueError(f"unknown LARRY policy {policy!r}")
    if not (alpha >= 0.0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be finite and >= 0, got {alpha!r}")
    if not (max_wait >= 0.0 and math.isfinite(max_wait)):
        raise ValueError(f"max_wait must be finite and >= 0 (0: no bound), got {max_wait!r}")


def kv_fraction(kv_tokens: int, capacity: KVCapacity) -> float:
    """KV blocks needed for `kv_tokens` tokens, as a fraction of the engine's blocks."""
    blocks = -(-max(kv_tokens, 0) // capacity.block_size)
    return blocks / capacity.num_blocks


def score(
    request: WaitingRequest,
    *,
    now: float,
    queue_len: int,
    capacity: KVCapacity,
    alpha: float,
    literal: bool = False,
) -> float:
    """The LARRY score of one request; higher is admitted earlier."""
    wait = max(now - request.arrival_time, 0.0)
    memory = queue_len * kv_fraction(request.kv_tokens, capacity)
    return alpha * wait + memory if literal else alpha * wait - memory


def order(
    requests: Sequence[WaitingRequest],
    *,
    policy: LarryPolicy,
    now: float,
    capacity: KVCapacity,
    alpha: float,
    max_wait: float = 0.0,
) -> list[int]:
    """The admission order of `requests` as a permutation of their indices.

    Preempted requests come first, in their given order. Then, when `max_wait` > 0, the requests
    that waited longer than `max_wait` seconds, by arrival. The others follow by decreasing score
    (by arrival under "fcfs"), ties going to the earlier arrival and then the earlier index.
    `queue_len` in the score is `len(requests)`: the caller passes the whole waiting queue.

    This is the reference definition; the engine and the simulator select only the head of this
    order over arrays (`halffull.policy.larry_queue`), and tests check that both agree.
    """
    check_parameters(policy, alpha, max_wait)
    head = [i for i, r in enumerate(requests) if r.preempted]
    rest = [i for i, r in enumerate(requests) if not r.preempted]
    if max_wait > 0.0:
        overdue = [i for i in rest if now - requests[i].arrival_time > max_wait]
        overdue.sort(key=lambda i: (requests[i].arrival_time, i))
        head += overdue
        rest = [i for i in rest if now - requests[i].arrival_time <= max_wait]
    if policy == "fcfs":
        rest.sort(key=lambda i: (requests[i].arrival_time, i))
        return head + rest
    queue_len = len(requests)
    literal = policy == "larry-literal"
    scores = {
        i: score(
            requests[i],
            now=now,
            queue_len=queue_len,
            capacity=capacity,
            alpha=alpha,
            literal=literal,
        )
        for i in rest
    }
    rest.sort(key=lambda i: (-scores[i], requests[i].arrival_time, i))
    return head + rest
