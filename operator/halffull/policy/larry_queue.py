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

`WaitingQueue` is the queue itself: vLLM's FIFO semantics (append, appendleft, popleft, remove),
with removal from anywhere in O(1), and a head that a step points at LARRY's selection
(`set_head`): `peek`/`popleft` serve it first, then the FIFO. Nothing is rebuilt per step. vLLM's
waiting queue and the simulator's both use it, so the plugin and the simulator run this code.

Ties: earlier arrival, then earlier entry into the queue (`append` counts up from the back,
`appendleft` down from the front, so entry order is queue order).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
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
        self._free: list[int] = []
        self._hi = 0
        self._front = 0
        self._back = 0
        self._preempted: set[int] = set()
        self._checked: tuple[str, float, float] | None = None
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
        objs = np.empty(size, dtype=object)
        if old:
            arrival[:old], blocks[:old], total[:old] = self.arrival, self.blocks, self.total
            seq[:old], objs[:old] = self.seq, self.objs
        self.arrival: FloatArray = arrival
        self.blocks: IntArray = blocks
        self.total: IntArray = total
        self.seq: IntArray = seq
        self.objs: npt.NDArray[np.object_] = objs
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
        self.total[slot] = blocks
        if self.watch is not None and self._hashes is not None:
            blocks -= self.watch.watch(slot, self._hashes(obj))
        self.blocks[slot] = blocks
        if preempted:
            self._preempted.add(slot)
        return seq

    def discard(self, obj: T) -> bool:
        """Register `obj` as gone from the queue; False if it was not queued."""
        slot = self._slot.pop(obj, None)
        if slot is None:
            return False
        self.arrival[slot] = np.nan
        self.blocks[slot] = _DEAD_BLOCKS
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
        blocks, total = self.blocks, self.total
        for slot, hit in changed:
            blocks[slot] = total[slot] - hit
        return len(changed)

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
        hi = self._hi
        objs = self.objs
        need = k
        parts: list[IntArray] = []
        # seconds waited; NaN for free slots, and for the tiers already taken below
        wait = np.subtract(now, self.arrival[:hi], out=self._w[:hi])
        if self._preempted:
            pre = np.fromiter(self._preempted, dtype=np.int64, count=len(self._preempted))
            pre = pre[np.argsort(self.seq[pre], kind="stable")][:need]
            parts.append(pre)
            need -= pre.size
            if need == 0:
                out: list[T] = objs[pre].tolist()
                return out
            wait[list(self._preempted)] = np.nan
        if policy == "fcfs" or (max_wait > 0.0 and np.fmax.reduce(wait) > max_wait):
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
                parts.append(self._first_all(key, need, 0))
                need = 0
            else:  # all of them, then the scored tier without them
                taken = np.flatnonzero(late)
                parts.append(taken[np.lexsort((self.seq[taken], self.arrival[taken]))])
                need -= taken.size
                np.copyto(wait, np.nan, where=late)
        if need > 0:
            np.maximum(wait, 0.0, out=wait)
            np.multiply(wait, alpha, out=wait)  # alpha * wait(r)
            key = np.divide(self.blocks[:hi], num_blocks, out=self._m[:hi])
            np.multiply(key, float(queue_len), out=key)  # queue_len * mem(r)
            if policy == "larry-literal":
                np.add(wait, key, out=key)
                np.negative(key, out=key)  # -score
            else:
                np.subtract(key, wait, out=key)  # -score, the same float as -(a - b)
            parts.append(self._first_all(key, need, 1))
        chosen = np.concatenate(parts) if len(parts) > 1 else parts[0]
        result: list[T] = objs[chosen].tolist()
        return result

    def _first_all(self, key: FloatArray, m: int, tier: int) -> IntArray:
        """The `m` slots with the smallest (key, arrival, entry), in that order; NaN keys are
        excluded (at least `m` others exist).

        A partition over every slot costs most of a step, so it first tries the slots whose key
        is at most last step's guess: if at least `m` are, the `m` smallest of all are among
        them (every key at or below the `m`-th is below the guess), and only those few are
        partitioned. The guess is the key of rank `GUESS_RANKS * m`, so a step that admits `m`
        still leaves enough below it for the next one; when it does not, one full partition
        sets a new guess."""
        below = self._b[: key.size]
        cand: IntArray | None = None
        guess = self._guess[tier]
        if guess == guess:  # not NaN
            np.less_equal(key, guess, out=below)
            if np.count_nonzero(below) >= m:
                cand = np.flatnonzero(below)
        if cand is None:
            cand = np.arange(key.size)
        sub = key[cand]
        if sub.size > m:
            rank = min(GUESS_RANKS * m, sub.size) - 1
            part = np.argpartition(sub, [m - 1, rank] if rank > m - 1 else m - 1)
            cut = sub[part[m - 1]]
            self._guess[tier] = float(sub[part[rank]])
            ties = np.less_equal(sub, cut, out=self._b[: sub.size])
            slots = cand[part[:m]] if np.count_nonzero(ties) == m else cand[np.flatnonzero(ties)]
        else:
            slots = cand[sub == sub]
            self._guess[tier] = np.nan
        ranked = np.lexsort((self.seq[slots], self.arrival[slots], key[slots]))
        result: IntArray = slots[ranked[:m]]
        return result


class WaitingQueue(Generic[T]):
    """A FIFO of waiting requests kept in step with a `WaitingIndex` (`larry`).

    The FIFO is vLLM's deque semantics by entry: `append` at the back, `appendleft` at the
    front, `popleft` from the front. A removed request leaves its entry behind, skipped when
    reached and dropped in bulk when they pile up, so removal from the middle is O(1), as
    LARRY's admissions are. For one step, `set_head` puts a selection ahead of the FIFO;
    `clear_head` ends it (a step that does not select leaves the FIFO order)."""

    def __init__(self, larry: WaitingIndex[T]) -> None:
        self.larry = larry
        self._q: deque[tuple[int, T]] = deque()
        self._head: list[T] = []
        self._stale = 0

    def __len__(self) -> int:
        return len(self.larry)

    def __bool__(self) -> bool:
        return len(self.larry) > 0

    def __contains__(self, obj: object) -> bool:
        return obj in self.larry

    def __iter__(self) -> Iterator[T]:
        """The requests in FIFO order. Safe to call from another thread: it iterates over a
        copy (taken in one C call) of the entries."""
        seq_of = self.larry.seq_of
        return (obj for seq, obj in list(self._q) if seq_of(obj) == seq)

    def append(self, obj: T) -> None:
        self._q.append((self.larry.add(obj), obj))

    def appendleft(self, obj: T) -> None:
        self._q.appendleft((self.larry.add(obj, front=True), obj))

    def extend(self, objs: Iterable[T]) -> None:
        for obj in objs:
            self.append(obj)

    def extendleft(self, objs: Iterable[T]) -> None:
        for obj in objs:
            self.appendleft(obj)

    def peek(self) -> T:
        """The request `popleft` would return. IndexError if empty."""
        head, larry = self._head, self.larry
        while head:
            if head[0] in larry:
                return head[0]
            head.pop(0)
        q, seq_of = self._q, larry.seq_of
        while q:
            seq, obj = q[0]
            if seq_of(obj) == seq:
                return obj
            q.popleft()
            self._stale -= 1
        raise IndexError("peek from an empty queue")

    def popleft(self) -> T:
        obj = self.peek()
        if self._head and self._head[0] is obj:
            self._head.pop(0)
            self._stale += 1
        else:
            self._q.popleft()
        self.larry.discard(obj)
        self._compact()
        return obj

    def remove(self, obj: T) -> None:
        """Remove `obj` wherever it is. ValueError if it is not queued."""
        if not self.discard(obj):
            raise ValueError("request is not in the queue")

    def discard(self, obj: T) -> bool:
        """Remove `obj` if queued; returns whether it was."""
        if not self.larry.discard(obj):
            return False
        self._stale += 1
        self._compact()
        return True

    def clear(self) -> None:
        self.larry.clear()
        self._q = deque()
        self._head = []
        self._stale = 0

    def set_head(self, objs: list[T]) -> None:
        """Serve `objs` (queued requests) first, in this order, until `clear_head`."""
        self._head = list(objs)

    def clear_head(self) -> None:
        self._head = []

    def starts_with(self, objs: Sequence[T]) -> bool:
        """Whether the FIFO's first requests are `objs`, in this order."""
        seq_of, i = self.larry.seq_of, 0
        for seq, obj in self._q:
            if i == len(objs):
                break
            if seq_of(obj) != seq:
                continue
            if obj is not objs[i]:
                return False
            i += 1
        return i == len(objs)

    def _compact(self) -> None:
        if self._stale > len(self.larry) + 64:
            seq_of = self.larry.seq_of
            # a new deque, swapped in whole: another thread may be copying the old one
            self._q = deque(e for e in self._q if seq_of(e[1]) == e[0])
            self._stale = 0
