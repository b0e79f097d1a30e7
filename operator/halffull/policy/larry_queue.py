"""LARRY's waiting queue, indexed so that a step finds the head of the admission order without a
pass over the queue.

`halffull.policy.larry.order` defines the order over a list; rebuilding that list and sorting it
at every engine step cost about 1.3 us per waiting request (1.35 ms at 1,024), on the engine's
critical path, and scoring every request with array operations still cost a dozen numpy calls
per step. The engine admits at most its free sequence slots `k` in one step, so only the first
`k` of the order matter, and the order has a structure that gives them without scoring everyone:

- Preempted requests come first, by entry. They are few; they are kept apart.
- Overdue requests (waited longer than `max_wait`) come next, by arrival. Whether a request is
  overdue (`now - arrival > max_wait`) is monotone in its arrival, so they are a prefix of all
  other requests sorted by arrival: the first `k` of that sorted list give this tier (and under
  "fcfs", which orders everyone by arrival, the whole answer).
- Everyone else is ordered by `score = alpha * wait - queue_len * mem` (or `+` for
  "larry-literal"). Within one group of requests that need the same number of blocks, `mem` is
  the same, so the score can only fall as the arrival grows (`wait = max(now - arrival, 0)`; every
  floating-point step used here is monotone, so this holds for the computed floats too), and ties
  go to the earlier arrival, then the earlier entry. So each group, kept sorted by (arrival,
  entry), is already in LARRY's order, and the first `k` overall are a merge of the groups'
  fronts. A step visits the groups from the smallest block count ("larry"; the largest for
  "larry-literal") and stops when even a request that waited as long as the oldest one could not
  beat the `k`-th best found so far: the memory term then rules out every group after it.

The sorted lists change on entry (bisection, then an insertion: a memmove), on removal (from its
group at once; from the list by arrival lazily: the entry goes stale, is skipped when reached and
dropped in bulk, since a memmove of that list per admission is what a step would pay most) and
when a request's blocks change. Those change while it waits when the engine has a prefix cache: the
counts follow the cache's events (`halffull.policy.larry_prefix`), and only the requests a
stored or evicted block concerns move to another group (`WaitingIndex.settle`).

A step's cost is then about `k` plus the groups it visits, not the queue's length, and no
numpy call is made (each costs microseconds whatever its size).

The queue itself is `halffull.policy.larry_fifo.WaitingQueue` (vLLM's FIFO, O(1) removal, a
head a step points at this selection); vLLM's waiting queue and the simulator's both use it, so
the plugin and the simulator run this code.

Ties: earlier arrival, then earlier entry into the queue (`append` counts up from the back,
`appendleft` down from the front, so entry order is queue order).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

from halffull.policy.larry import LarryPolicy, check_parameters
from halffull.policy.larry_prefix import PrefixWatch

T = TypeVar("T", bound=Hashable)

Keys = tuple[float, int, bool]
"""What the index keeps per request: arrival time, KV blocks it needs (before any prefix-cache
hit, which the index's `PrefixWatch` subtracts), preempted."""

Entry = tuple[float, int, int]
"""(arrival, entry number, slot) of a request that is not preempted: sorted lists hold these.
The entry number is unique, so the slot never takes part in a comparison."""


def _remove(entries: list[Entry], entry: Entry) -> None:
    """Remove `entry` (present) from the sorted list `entries`."""
    del entries[bisect_left(entries, entry)]


class WaitingIndex(Generic[T]):
    """Per-request keys of the requests in a waiting queue, and the sorted lists a step's
    selection reads: by arrival, and by arrival within each block count (module docstring)."""

    def __init__(
        self,
        keys: Callable[[T], Keys],
        *,
        prefix: tuple[PrefixWatch[Any], Callable[[T], Sequence[Any]]] | None = None,
    ) -> None:
        self._keys = keys
        self.watch: PrefixWatch[Any] | None = None
        self._hashes: Callable[[T], Sequence[Any]] | None = None
        if prefix is not None:
            self.watch, self._hashes = prefix
        self._slot: dict[T, int] = {}
        # per slot; a free slot has entry number 0 (never given) and no object
        self._seq: list[int] = []
        self._blocks: list[int] = []
        self._total: list[int] = []
        self._entry: list[Entry | None] = []
        self.objs: list[T | None] = []
        self._free: list[int] = []
        self._front = 0
        self._back = 0
        self._preempted: set[int] = set()
        self._by_arrival: list[Entry] = []
        """Every request that is not preempted, by (arrival, entry), and stale entries (those
        that are not their slot's `_entry` any more): none before `_lo`, `_stale` after it."""
        self._lo = 0
        self._stale = 0
        self._groups: dict[int, list[Entry]] = {}
        """Block count -> its requests that are not preempted, by (arrival, entry)."""
        self._sizes: list[int] = []
        """The block counts that have a group, ascending."""
        self._checked: tuple[str, float, float] | None = None

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
            slot = len(self.objs)
            self._seq.append(0)
            self._blocks.append(0)
            self._total.append(0)
            self._entry.append(None)
            self.objs.append(None)
        if front:
            self._front -= 1
            seq = self._front
        else:
            self._back += 1
            seq = self._back
        arrival, blocks, preempted = self._keys(obj)
        self._slot[obj] = slot
        self._seq[slot] = seq
        self.objs[slot] = obj
        self._total[slot] = blocks
        if self.watch is not None and self._hashes is not None:
            blocks -= self.watch.watch(slot, self._hashes(obj))
        self._blocks[slot] = blocks
        if preempted:
            self._preempted.add(slot)
        else:
            entry = (arrival, seq, slot)
            self._entry[slot] = entry
            insort(self._by_arrival, entry, lo=self._lo)  # what is before _lo is stale
            self._group_add(blocks, entry)
        return seq

    def discard(self, obj: T) -> bool:
        """Register `obj` as gone from the queue; False if it was not queued."""
        slot = self._slot.pop(obj, None)
        if slot is None:
            return False
        entry = self._entry[slot]
        if entry is None:
            self._preempted.discard(slot)
        else:
            self._group_remove(self._blocks[slot], entry)
            self._entry[slot] = None  # its entry in _by_arrival is stale now
            self._stale += 1
            if self._stale > len(self._slot) + 64:
                entries = self._entry
                self._by_arrival = [e for e in self._by_arrival[self._lo :] if entries[e[2]] is e]
                self._lo = self._stale = 0
        self._seq[slot] = 0
        self.objs[slot] = None
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
        watch = self.watch
        if watch is None or not watch.dirty:
            return 0
        changed = watch.settle()
        total = self._total
        for slot, hit in changed:
            self.set_blocks(slot, total[slot] - hit)
        return len(changed)

    def set_blocks(self, slot: int, blocks: int) -> None:
        """The request in `slot` now needs `blocks` blocks: it moves to that group."""
        old = self._blocks[slot]
        if blocks == old:
            return
        self._blocks[slot] = blocks
        entry = self._entry[slot]
        if entry is not None:
            self._group_remove(old, entry)
            self._group_add(blocks, entry)

    def slot_of(self, obj: T) -> int:
        """The slot of a queued request (KeyError if it is not queued)."""
        return self._slot[obj]

    def blocks_of(self, obj: T) -> int:
        """The blocks a queued request needs."""
        return self._blocks[self._slot[obj]]

    def min_blocks(self) -> int:
        """The fewest blocks any queued request needs (0 when the queue is empty)."""
        if not self._preempted:
            return self._sizes[0] if self._sizes else 0
        blocks = self._blocks
        least = min((blocks[s] for s in self._preempted), default=None)
        if self._sizes and (least is None or self._sizes[0] < least):
            return self._sizes[0]
        assert least is not None
        return least

    def _group_add(self, blocks: int, entry: Entry) -> None:
        group = self._groups.get(blocks)
        if group is None:
            self._groups[blocks] = [entry]
            insort(self._sizes, blocks)
        else:
            insort(group, entry)

    def _group_remove(self, blocks: int, entry: Entry) -> None:
        group = self._groups[blocks]
        _remove(group, entry)
        if not group:
            del self._groups[blocks]
            del self._sizes[bisect_left(self._sizes, blocks)]

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
        objs = self.objs
        chosen: list[int] = []
        if self._preempted:  # first, by entry
            chosen = sorted(self._preempted, key=self._seq.__getitem__)[:k]
        need = k - len(chosen)
        if need <= 0:
            return [objs[i] for i in chosen]  # type: ignore[misc]  # live slots hold requests
        # the others by arrival: under "fcfs" all of them, else the overdue ones (a prefix)
        entries, by_arrival = self._entry, self._by_arrival
        i, end = self._lo, len(by_arrival)
        while i < end and entries[by_arrival[i][2]] is not by_arrival[i]:
            i += 1  # stale at the front: dropped from the walk for good
        self._stale -= i - self._lo
        self._lo = i
        fcfs, bounded = policy == "fcfs", max_wait > 0.0
        oldest = None
        while i < end:
            e = by_arrival[i]
            i += 1
            if entries[e[2]] is not e:
                continue
            if fcfs or (bounded and now - e[0] > max_wait):
                chosen.append(e[2])
                need -= 1
                if need == 0:
                    break
            else:
                oldest = e[0]  # the earliest arrival of the scored tier
                break
        if oldest is not None:
            chosen += self._best(
                need, oldest, (policy, now, num_blocks, alpha, max_wait), queue_len
            )
        return [objs[i] for i in chosen]  # type: ignore[misc]

    def _best(
        self,
        m: int,
        oldest: float,
        params: tuple[LarryPolicy, float, int, float, float],
        queue_len: int,
    ) -> list[int]:
        """The `m` slots of the scored tier with the smallest (-score, arrival, entry), in
        that order. `oldest`: the earliest arrival in that tier, which bounds every wait.
        `params`: policy, now, num_blocks, alpha, max_wait (overdue requests are skipped: they
        were all taken before)."""
        policy, now, num_blocks, alpha, max_wait = params
        literal = policy == "larry-literal"
        # no request of the tier waited longer than the oldest: alpha * wait <= top (the same
        # rounded operations, each monotone, as the score's)
        top = alpha * max(now - oldest, 0.0)
        groups = self._groups
        best: list[tuple[float, float, int, int]] = []
        for blocks in reversed(self._sizes) if literal else self._sizes:
            memory = queue_len * (blocks / num_blocks)
            if len(best) == m:
                # the best key this group (or any after it: the memory term only gets worse)
                # could have, for a request that waited as long as the oldest
                bound = -(top + memory) if literal else -(top - memory)
                if bound > best[-1][0]:
                    break
            for arrival, seq, slot in groups[blocks]:
                if max_wait > 0.0 and now - arrival > max_wait:
                    continue  # overdue (a prefix of the group): taken already
                wait = max(now - arrival, 0.0)
                score = alpha * wait + memory if literal else alpha * wait - memory
                cand = (-score, arrival, seq, slot)
                if len(best) < m:
                    insort(best, cand)
                elif cand < best[-1]:
                    insort(best, cand)
                    best.pop()
                else:
                    break  # the rest of the group comes after it in the order
        return [c[3] for c in best]

    def check(self) -> None:
        """Assert the sorted lists agree with the per-slot keys (for tests)."""
        live = [s for s in self._slot.values() if s not in self._preempted]
        assert sorted(self._by_arrival[self._lo :]) == self._by_arrival[self._lo :]
        current = [e for e in self._by_arrival if self._entry[e[2]] is e]
        assert current == [e for e in self._by_arrival[self._lo :] if self._entry[e[2]] is e]
        assert sorted(e[2] for e in current) == sorted(live)
        assert len(self._by_arrival) - self._lo - len(current) == self._stale
        assert self._sizes == sorted(self._groups) and all(self._groups.values())
        grouped = 0
        for blocks, group in self._groups.items():
            assert group == sorted(group)
            for entry in group:
                assert self._entry[entry[2]] == entry and self._blocks[entry[2]] == blocks
            grouped += len(group)
        assert grouped == len(live)
