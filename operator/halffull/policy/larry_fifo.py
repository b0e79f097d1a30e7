"""LARRY's waiting queue: vLLM's FIFO, with O(1) removal and a head a step can point at.

vLLM admits from its waiting queue in FIFO order (`FCFSRequestQueue`, a deque). LARRY admits the
head of its own order instead (`halffull.policy.larry_queue.WaitingIndex.select`). Reordering the
deque to put that head first would cost a pass over the queue at every step, and removing an
admitted request from the middle of a deque is another. `WaitingQueue` keeps the FIFO as a deque
of entries that go stale when their request leaves (skipped when reached, dropped in bulk when
they pile up), and serves a step's selection first (`set_head`) without moving anything. vLLM's
waiting queue (through `halffull.engine.scheduler.LarryRequestQueue`) and the simulator's both
use it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Iterator
from typing import Generic, TypeVar

from halffull.policy.larry_queue import WaitingIndex

T = TypeVar("T", bound=Hashable)


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
        first = self.fifo_first()
        if first is None:
            raise IndexError("peek from an empty queue")
        return first

    def popleft(self) -> T:
        obj = self.peek()
        q = self._q
        if self._head and self._head[0] is obj:
            self._head.pop(0)
            if q[0][1] is obj and q[0][0] == self.larry.seq_of(obj):  # also the FIFO's first
                q.popleft()
            else:
                self._stale += 1
        else:
            q.popleft()
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

    def fifo_first(self) -> T | None:
        """The FIFO's first request (what vLLM would admit first), or None if empty."""
        q, seq_of = self._q, self.larry.seq_of
        while q:
            seq, obj = q[0]
            if seq_of(obj) == seq:
                return obj
            q.popleft()  # stale entries at the front go now
            self._stale -= 1
        return None

    def _compact(self) -> None:
        if self._stale > len(self.larry) + 64:
            seq_of = self.larry.seq_of
            # a new deque, swapped in whole: another thread may be copying the old one
            self._q = deque(e for e in self._q if seq_of(e[1]) == e[0])
            self._stale = 0
