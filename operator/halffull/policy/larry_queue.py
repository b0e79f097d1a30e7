"""LARRY's waiting queue as arrays: the head of the admission order in microseconds per step.

`halffull.policy.larry.order` defines the order over a list; rebuilding that list and sorting it
at every engine step cost about 1.3 us per waiting request (1.35 ms at 1,024), on the engine's
critical path. Here each request's keys (arrival, blocks it needs, preempted) are computed once,
when it enters the queue, and kept in numpy arrays indexed by a slot. A step scores the slots
with a few vector operations into preallocated buffers and selects only the first `k` of the
order with a partial selection: the engine admits at most its free sequence slots in one step,
so positions after `k` cannot matter to that step.

The blocks a request needs change while it waits when the engine has a prefix cache: those
counts follow the cache's events (`halffull.policy.larry_prefix`), re-keying only the requests a
stored or evicted block concerns (`WaitingIndex.settle`).

The queue itself is `halffull.policy.larry_fifo.WaitingQueue` (vLLM's FIFO, O(1) removal, a
head a step points at this selection); vLLM's waiting queue and the simulator's both use it, so
the plugin and the simulator run this code.

Ties: earlier arrival, then earlier entry into the queue (`append` counts up from the back,
`appendleft` down from the front, so entry order is queue order).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from halffull.policy.larry import LarryPolicy, check_parameters
from halffull.policy.larry_prefix import PrefixWatch

T = TypeVar("T", bound=Hashable)

Keys = tuple[float, int, bool]
"""What the index keeps per request: arrival time, KV blocks it needs (before any prefix-cache
hit, which the index's `PrefixWatch` subtracts), preempted."""

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_DEAD_BLOCKS = np.iinfo(np.int64).max
"""`blocks` of a free slot: never the minimum."""

SMALL_QUEUE = 64
"""Up to this many waiting requests a step selects in Python: a numpy call costs microseconds
whatever its size, more than a short loop."""

GUESS_RANKS = 4
"""The partial selection's guess of a cut keeps about this many times `k` slots (see
`WaitingIndex._first_all`)."""


class WaitingIndex(Generic[T]):
    """Per-request keys of the requests in a waiting queue, in slot-indexed arrays.

    A free slot has arrival NaN, so every score computed from it is NaN, which numpy's
    partition puts last and every comparison rejects: a step needs no mask of live slots."""

    def __init__(
        self,
        keys: Callable[[T], Keys],
        capacity: int = 64,
        *,
        prefix: tuple[PrefixWatch[Any], Callable[[T], Sequence[Any]]] | None = None,
    ) -> None:
        self._keys = keys
        self.watch: PrefixWatch[Any] | None = None
        self._hashes: Callable[[T], Sequence[Any]] | None = None
        if prefix is not None:
            self.watch, self._hashes = prefix
        self._slot: dict[T, int] = {}
        self._seq: list[int] = []
        self._arrival: list[float] = []
        self._blocks: list[int] = []
        self.objs: list[T | None] = []
        """Per slot, in Python lists: what the final sort of a few slots reads."""
        self._frac_n = 0
        self._free: list[int] = []
        self._hi = 0
        self._front = 0
        self._back = 0
        self._preempted: set[int] = set()
        self._checked: tuple[str, float, float] | None = None
        self._latest = -np.inf
        """The latest arrival ever queued: while `now` is past it no wait needs clamping."""
        self._guess = [np.nan, np.nan]
        """Per tier (overdue, scored): see `_first_all`."""
        self._alloc(capacity)

    def _alloc(self, size: int) -> None:
        """(Re)allocate the arrays for `size` slots, keeping the first ones' contents."""
        old = self._hi if hasattr(self, "arrival") else 0
        arrival = np.full(size, np.nan)
        blocks = np.full(size, _DEAD_BLOCKS, dtype=np.int64)
        total = np.zeros(size, dtype=np.int64)
        seq = np.zeros(size, dtype=np.int64)
        frac = np.zeros(size)
        if old:
            arrival[:old], blocks[:old], total[:old] = self.arrival, self.blocks, self.total
            seq[:old], frac[:old] = self.seq, self.frac
        self.arrival: FloatArray = arrival
        self.blocks: IntArray = blocks
        self.total: IntArray = total
        self.seq: IntArray = seq
        self.frac: FloatArray = frac
        """blocks / `_frac_n`, maintained with `blocks` once a step asked for it"""
        # scratch for a step: no array is allocated per step at the size of the queue
        self._w: FloatArray = np.empty(size)
        self._m: FloatArray = np.empty(size)
        self._b: npt.NDArray[np.bool_] = np.empty(size, dtype=bool)

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, obj: object) -> bool:
        return obj in self._slot

    def seq_of(self, obj: T) -> int | None:
        """The entry number of `obj` if queued (a re-entry gets a new one), else None."""
        slot = self._slot.get(obj)
        return None if slot is None else self._seq[slot]

    def add(self, obj: T, *, front: bool = False) -> int:
        """Register `obj` as entering the queue (at its front or back); returns its entry
        number. ValueError if it is queued already."""
        if obj in self._slot:
            raise ValueError("request is queued already")
        if self._free:
            slot = self._free.pop()
        else:
            if self._hi == self.arrival.size:
                self._alloc(2 * self.arrival.size)
            slot = self._hi
            self._hi += 1
            self._seq.append(0)
            self._arrival.append(0.0)
            self._blocks.append(0)
            self.objs.append(None)
        if front:
            self._front -= 1
            seq = self._front
        else:
            self._back += 1
            seq = self._back
        self._slot[obj] = slot
        self._seq[slot] = seq
        self.seq[slot] = seq
        self.objs[slot] = obj
        arrival, blocks, preempted = self._keys(obj)
        self.arrival[slot] = arrival
        self._arrival[slot] = arrival
        self.total[slot] = blocks
        if arrival > self._latest:
            self._latest = arrival
        if self.watch is not None and self._hashes is not None:
            blocks -= self.watch.watch(slot, self._hashes(obj))
        self._set_blocks(slot, blocks)
        if preempted:
            self._preempted.add(slot)
        return seq

    def discard(self, obj: T) -> bool:
        """Register `obj` as gone from the queue; False if it was not queued."""
        slot = self._slot.pop(obj, None)
        if slot is None:
            return False
        self.arrival[slot] = np.nan
        self._set_blocks(slot, _DEAD_BLOCKS)
        self.objs[slot] = None
        self._preempted.discard(slot)
        if self.watch is not None:
            self.watch.unwatch(slot)
        self._free.append(slot)
        return True

    def clear(self) -> None:
        for obj in list(self._slot):
            self.discard(obj)

    def settle(self) -> int:
        """Apply the prefix cache's changes since the last call (see `PrefixWatch`): the
        requests they concern get their blocks re-keyed. Returns how many were."""
        if self.watch is None:
            return 0
        changed = self.watch.settle()
        total = self.total
        for slot, hit in changed:
            self._set_blocks(slot, int(total[slot]) - hit)
        return len(changed)

    def _set_blocks(self, slot: int, blocks: int) -> None:
        self.blocks[slot] = blocks
        self._blocks[slot] = blocks
        if self._frac_n:
            self.frac[slot] = blocks / self._frac_n

    def blocks_of(self, obj: T) -> int:
        """The blocks a queued request needs."""
        return int(self.blocks[self._slot[obj]])

    def min_blocks(self) -> int:
        """The fewest blocks any queued request needs (0 when the queue is empty)."""
        if not self._slot:
            return 0
        return int(self.blocks[: self._hi].min())

    def select(
        self,
        *,
        policy: LarryPolicy,
        now: float,
        num_blocks: int,
        alpha: float,
        max_wait: float,
        k: int,
    ) -> list[T]:
        """The first `k` requests of LARRY's admission order (`halffull.policy.larry.order`),
        computed with the same floating-point operations, so ties and near-ties agree."""
        if self._checked != (policy, alpha, max_wait):
            check_parameters(policy, alpha, max_wait)
            self._checked = (policy, alpha, max_wait)
        queue_len = len(self._slot)
        k = min(k, queue_len)
        if k <= 0:
            return []
        if queue_len <= SMALL_QUEUE:
            return self._select_small((policy, now, num_blocks, alpha, max_wait), k)
        hi = self._hi
        need = k
        chosen: list[int] = []
        # seconds waited; NaN for free slots, and for the tiers already taken below
        wait = np.subtract(now, self.arrival[:hi], out=self._w[:hi])
        if self._preempted:
            chosen = sorted(self._preempted, key=self._seq.__getitem__)[:need]
            need -= len(chosen)
            wait[list(self._preempted)] = np.nan
        if need > 0 and (policy == "fcfs" or (max_wait > 0.0 and np.fmax.reduce(wait) > max_wait)):
            # overdue first, by arrival; under fcfs every request counts as overdue
            late = self._b[:hi]
            if policy == "fcfs":
                np.equal(wait, wait, out=late)  # every live one (NaN != NaN)
            else:
                np.greater(wait, max_wait, out=late)
            key = self._m[:hi]
            key.fill(np.nan)
            np.copyto(key, self.arrival[:hi], where=late)
            if np.count_nonzero(late) >= need:
                chosen += self._first_all(key, need, 0)
                need = 0
            else:  # all of them, then the scored tier without them
                arrival, seq = self._arrival, self._seq
                chosen += sorted(np.flatnonzero(late).tolist(), key=lambda i: (arrival[i], seq[i]))
                need = k - len(chosen)
                np.copyto(wait, np.nan, where=late)
        if need > 0:
            if self._latest > now:  # wait(r) = max(now - arrival, 0)
                np.maximum(wait, 0.0, out=wait)
            np.multiply(wait, alpha, out=wait)  # alpha * wait(r)
            key = np.multiply(self._fractions(num_blocks), float(queue_len), out=self._m[:hi])
            if policy == "larry-literal":  # key = -score: the same float as the reference's
                np.add(wait, key, out=key)
                np.negative(key, out=key)
            else:
                np.subtract(key, wait, out=key)  # -(a - b) == b - a exactly
            chosen += self._first_all(key, need, 1)
        objs = self.objs
        return [objs[i] for i in chosen]  # type: ignore[misc]  # live slots hold requests

    def _select_small(
        self, params: tuple[LarryPolicy, float, int, float, float], k: int
    ) -> list[T]:
        """`select` for a short queue, in Python: the reference's arithmetic and tuple order.
        `params`: policy, now, num_blocks, alpha, max_wait."""
        policy, now, num_blocks, alpha, max_wait = params
        seq, arrival, blocks = self._seq, self._arrival, self._blocks
        queue_len, literal = len(self._slot), policy == "larry-literal"
        pre: list[int] = []
        late: list[tuple[float, int, int]] = []
        scored: list[tuple[float, float, int, int]] = []
        for slot in self._slot.values():
            if slot in self._preempted:
                pre.append(slot)
                continue
            a = arrival[slot]
            if policy == "fcfs" or (max_wait > 0.0 and now - a > max_wait):
                late.append((a, seq[slot], slot))
                continue
            wait = max(now - a, 0.0)
            memory = queue_len * (blocks[slot] / num_blocks)
            score = alpha * wait + memory if literal else alpha * wait - memory
            scored.append((-score, a, seq[slot], slot))
        pre.sort(key=seq.__getitem__)
        chosen = pre[:k]
        if len(chosen) < k:
            chosen += [t[-1] for t in heapq.nsmallest(k - len(chosen), late)]
        if len(chosen) < k:
            chosen += [t[-1] for t in heapq.nsmallest(k - len(chosen), scored)]
        objs = self.objs
        return [objs[i] for i in chosen]  # type: ignore[misc]  # live slots hold requests

    def _fractions(self, num_blocks: int) -> FloatArray:
        """mem(r) per slot: blocks / num_blocks (kept up to date for the last `num_blocks`)."""
        if num_blocks != self._frac_n:
            np.divide(self.blocks, num_blocks, out=self.frac)
            self._frac_n = num_blocks
        return self.frac[: self._hi]

    def _first_all(self, key: FloatArray, m: int, tier: int) -> list[int]:
        """The `m` slots with the smallest (key, arrival, entry), in that order; NaN keys are
        excluded (at least `m` others exist).

        Only a few slots can be among them, and a numpy call costs microseconds however small
        its array, so: one comparison finds the slots whose key is at most last step's guess
        of the cut; if at least `m` are, the `m` smallest of all are among them (every key at
        or below the `m`-th is at or below the guess), and those few are sorted in Python with
        the same tuple comparison as the reference order. The guess is the key of rank
        `GUESS_RANKS * m`, so that a step which admits `m` leaves enough below it for the next
        one; when it does not, one partition over every slot sets a new guess."""
        cand: IntArray | None = None
        guess = self._guess[tier]
        below = self._b[: key.size]
        if guess == guess:  # not NaN
            cand = np.flatnonzero(np.less_equal(key, guess, out=below))
            if cand.size < m:
                cand = None
        if cand is None:
            rank = min(GUESS_RANKS * m, key.size) - 1
            cut = key[np.argpartition(key, rank)[rank]]
            cand = np.flatnonzero(
                np.less_equal(key, cut, out=below) if cut == cut else np.equal(key, key, out=below)
            )
        slots: list[int] = cand.tolist()
        arrival, seq = self._arrival, self._seq
        ranked = sorted(
            zip(
                key[cand].tolist(),
                [arrival[i] for i in slots],
                [seq[i] for i in slots],
                slots,
                strict=True,
            )
        )
        rank = min(GUESS_RANKS * m, len(ranked)) - 1
        self._guess[tier] = ranked[rank][0] if len(ranked) > m else np.nan
        return [r[3] for r in ranked[:m]]
