"""LARRY's waiting queue as arrays: the head of the admission order in microseconds per step.

`halffull.policy.larry.order` defines the order over a list; rebuilding that list and sorting it
at every engine step cost about 1.3 us per waiting request (1.35 ms at 1,024), on the engine's
critical path. Here each request's keys (arrival, blocks it needs, preempted) are computed once,
when it enters the queue, and kept in numpy arrays indexed by a slot. A step then scores the
live slots with a few vector operations and selects only the first `k` of the order with a
partial selection: the engine admits at most its free sequence slots in one step, so positions
after `k` cannot matter to that step.

`IndexedDeque` is a deque that keeps a `WaitingIndex` in step with its contents through its own
mutating methods. vLLM's waiting queue and the simulator's both use it, so the engine plugin and
the simulator run this same code.

Ties: earlier arrival, then earlier entry into the queue (`append` counts up from the back,
`appendleft` down from the front, so entry order is queue order for a queue only appended to and
prepended to).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Generic, SupportsIndex, TypeVar

import numpy as np
import numpy.typing as npt

from halffull.policy.larry import LarryPolicy, check_parameters

T = TypeVar("T")

Keys = tuple[float, int, bool]
"""What the index keeps per request: arrival time, KV blocks it needs, preempted."""

IntArray = npt.NDArray[np.int64]

REFRESH_PER_STEP = 32
"""Queued requests whose keys are recomputed per step where they change while waiting (the
uncached blocks, with prefix caching): each is then at most `ceil(waiting / 32)` steps old.
`bench/larry_staleness.py` measures what that costs the admission order."""


class WaitingIndex(Generic[T]):
    """Per-request keys of the requests in a waiting queue, in slot-indexed arrays."""

    def __init__(self, keys: Callable[[T], Keys], capacity: int = 64) -> None:
        self._keys = keys
        self._slot: dict[T, int] = {}
        self._free: list[int] = []
        self._hi = 0
        self._front = 0
        self._back = 0
        self._cursor = 0
        self.arrival = np.zeros(capacity)
        self.blocks = np.zeros(capacity, dtype=np.int64)
        self.preempted = np.zeros(capacity, dtype=bool)
        self.seq = np.zeros(capacity, dtype=np.int64)
        self.live = np.zeros(capacity, dtype=bool)
        self.objs = np.empty(capacity, dtype=object)

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, obj: object) -> bool:
        return obj in self._slot

    def _grow(self) -> None:
        size = 2 * self.live.size
        for name in ("arrival", "blocks", "preempted", "seq", "live", "objs"):
            old = getattr(self, name)
            new = np.zeros(size, dtype=old.dtype) if name != "objs" else np.empty(size, object)
            new[: old.size] = old
            setattr(self, name, new)

    def add(self, obj: T, *, front: bool = False) -> None:
        """Register `obj` as entering the queue (at its front or back); a no-op if present."""
        if obj in self._slot:
            return
        if self._free:
            slot = self._free.pop()
        else:
            if self._hi == self.live.size:
                self._grow()
            slot = self._hi
            self._hi += 1
        self._slot[obj] = slot
        if front:
            self._front -= 1
            self.seq[slot] = self._front
        else:
            self._back += 1
            self.seq[slot] = self._back
        self.objs[slot] = obj
        self.live[slot] = True
        self._set_keys(slot, obj)

    def _set_keys(self, slot: int, obj: T) -> None:
        arrival, blocks, preempted = self._keys(obj)
        self.arrival[slot] = arrival
        self.blocks[slot] = blocks
        self.preempted[slot] = preempted

    def discard(self, obj: T) -> None:
        """Register `obj` as gone from the queue; a no-op if absent."""
        slot = self._slot.pop(obj, None)
        if slot is None:
            return
        self.live[slot] = False
        self.objs[slot] = None
        self._free.append(slot)

    def clear(self) -> None:
        self._slot.clear()
        self._free = list(range(self._hi - 1, -1, -1))
        self.live[: self._hi] = False
        self.objs[: self._hi] = None

    def refresh(self, limit: int) -> int:
        """Recompute the keys of up to `limit` queued requests, round-robin over the slots.

        Keys that change while a request waits (its uncached blocks, as the prefix cache fills
        and evicts) are then at most `ceil(len / limit)` calls old. Returns how many were done."""
        done = 0
        hi = self._hi
        for _ in range(min(hi, max(limit, 0) * 4)):
            if done >= limit or hi == 0:
                break
            slot = self._cursor % hi
            self._cursor = slot + 1
            if self.live[slot]:
                self._set_keys(slot, self.objs[slot])
                done += 1
        return done

    def min_blocks(self) -> int:
        """The fewest blocks any queued request needs (0 when the queue is empty)."""
        if not self._slot:
            return 0
        hi = self._hi
        return int(self.blocks[:hi][self.live[:hi]].min())

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
        """The first `k` requests of LARRY's admission order (`halffull.policy.larry.order`)."""
        check_parameters(policy, alpha, max_wait)
        hi = self._hi
        live = np.flatnonzero(self.live[:hi])
        queue_len = live.size
        k = min(k, queue_len)
        if k <= 0:
            return []
        pre_mask = self.preempted[live]
        head = live[pre_mask]
        if head.size:
            head = head[np.argsort(self.seq[head], kind="stable")][:k]
        parts = [head]
        need = k - head.size
        rest = live[~pre_mask]
        if need > 0 and rest.size:
            arrival = self.arrival[rest]
            if max_wait > 0.0 or policy == "fcfs":
                # under fcfs every request counts as overdue: arrival order throughout
                late = (now - arrival > max_wait) | (policy == "fcfs")
                overdue = rest[late]
                if overdue.size:
                    taken = self._first(self.arrival[overdue], overdue, need)
                    parts.append(taken)
                    need -= taken.size
                    rest = rest[~late]
                    arrival = arrival[~late]
            if need > 0 and rest.size:
                wait = np.maximum(now - arrival, 0.0)
                memory = queue_len * (self.blocks[rest] / num_blocks)
                score = (
                    alpha * wait + memory if policy == "larry-literal" else alpha * wait - memory
                )
                parts.append(self._first(-score, rest, need))
        chosen = np.concatenate(parts) if len(parts) > 1 else parts[0]
        out: list[T] = self.objs[chosen].tolist()
        return out

    def _first(self, key: npt.NDArray[np.float64], slots: IntArray, m: int) -> IntArray:
        """The `m` slots with the smallest (key, arrival, entry), in that order."""
        if slots.size > m:
            cut = np.partition(key, m - 1)[m - 1]
            keep = key <= cut  # every tie at the cut stays in, for the tie-break below
            slots, key = slots[keep], key[keep]
        ranked = np.lexsort((self.seq[slots], self.arrival[slots], key))
        result: IntArray = slots[ranked[:m]]
        return result

    def others(self, chosen: Iterable[T]) -> list[T]:
        """Every queued request not in `chosen`, in slot order."""
        hi = self._hi
        mask = self.live[:hi].copy()
        slot = self._slot
        for obj in chosen:
            mask[slot[obj]] = False
        out: list[T] = self.objs[:hi][mask].tolist()
        return out

    def fcfs(self) -> list[T]:
        """Every queued request in vLLM's own order: preempted first by entry, then by arrival."""
        hi = self._hi
        live = np.flatnonzero(self.live[:hi])
        pre_mask = self.preempted[live]
        head, rest = live[pre_mask], live[~pre_mask]
        head = head[np.argsort(self.seq[head], kind="stable")]
        rest = rest[np.lexsort((self.seq[rest], self.arrival[rest]))]
        out: list[T] = self.objs[np.concatenate([head, rest])].tolist()
        return out


class IndexedDeque(deque[T]):
    """A deque whose mutating methods keep `larry` (its index) equal to its contents.

    Building one from an iterable does not register the items (they are expected to be in the
    index already: the plugin rebuilds the queue in a new order over the same requests)."""

    larry: WaitingIndex[T]

    def __init__(self, items: Iterable[T] = (), *, larry: WaitingIndex[T]) -> None:
        super().__init__(items)
        self.larry = larry

    def __reduce__(self) -> Any:  # copies carry the index along
        return (type(self), (list(self),), {"larry": self.larry})

    def append(self, x: T) -> None:
        super().append(x)
        self.larry.add(x)

    def appendleft(self, x: T) -> None:
        super().appendleft(x)
        self.larry.add(x, front=True)

    def extend(self, xs: Iterable[T]) -> None:
        for x in xs:
            self.append(x)

    def extendleft(self, xs: Iterable[T]) -> None:
        for x in xs:
            self.appendleft(x)

    def insert(self, i: int, x: T) -> None:
        super().insert(i, x)
        self.larry.add(x, front=i == 0)

    def pop(self) -> T:  # type: ignore[override]
        x = super().pop()
        self.larry.discard(x)
        return x

    def popleft(self) -> T:
        x = super().popleft()
        self.larry.discard(x)
        return x

    def remove(self, x: T) -> None:
        super().remove(x)
        self.larry.discard(x)

    def clear(self) -> None:
        super().clear()
        self.larry.clear()

    def __delitem__(self, i: SupportsIndex) -> None:  # type: ignore[override]
        x = self[i]
        super().__delitem__(i)
        self.larry.discard(x)

    def __setitem__(self, i: SupportsIndex, x: T) -> None:  # type: ignore[override]
        old = self[i]
        super().__setitem__(i, x)
        self.larry.discard(old)
        self.larry.add(x)

    def __iadd__(self, xs: Iterable[T]) -> IndexedDeque[T]:
        self.extend(xs)
        return self
