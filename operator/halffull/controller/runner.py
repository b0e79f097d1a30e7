"""Runs reconciles off the event loop, one at a time per LLMService, coalescing bursts.

Events arrive in storms (a rollout changes a Deployment, its ReplicaSet and every pod). Each
trigger marks the object dirty; a worker per object reconciles until it is clean, so a storm of
N events costs one or two reconciles, never N, and never two at once for the same object.

New LLMServices go first: when more objects are dirty than there are threads, one never
reconciled before (its children still to create) takes the next free thread ahead of the
re-passes of served ones (a status to refresh after their children's events), which in a burst
of creates outnumber the new ones many times over. Among equals, first come first served.

A failed pass is retried with exponential backoff and jitter (`failures.retry_delay`); triggers
that arrive meanwhile wait for the retry rather than hammering a failing API server. Reconciles
run in their own thread pool, so blocking metrics queries elsewhere cannot starve them.

Only an active runner (the leader's) reconciles; an inactive one remembers what is dirty.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from halffull.controller.failures import Failure, classify, retry_delay

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
RECONCILE_THREADS = 8
"""Reconciles of different LLMServices that run at once."""


class Slots:
    """At most `size` holders at once; waiters are let in by (priority, arrival), lowest first."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    async def acquire(self, priority: int) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._arrivals), turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # let in, then cancelled: pass the slot on
            raise

    def release(self) -> None:
        while self._waiting:
            _, _, turn = heapq.heappop(self._waiting)
            if not turn.done():
                turn.set_result(None)
                return
        self._free += 1


class KeyedRunner:
    def __init__(
        self,
        work: Callable[[str, str], object],
        on_failure: Callable[[str, str, Failure], None] | None = None,
        delay: Callable[[int, float | None], float] = retry_delay,
        workers: int = RECONCILE_THREADS,
        active: bool = True,
    ) -> None:
        self._work = work
        self._on_failure = on_failure
        self._delay = delay
        self._dirty: set[Key] = set()
        self._workers: dict[Key, asyncio.Task[None]] = {}
        self.failures: dict[Key, int] = {}
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="reconcile")
        self._slots = Slots(workers)
        self._passed: set[Key] = set()  # reconciled once at least (not new)
        self.active = active

    def trigger(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        self._dirty.add(key)
        if self.active and key not in self._workers:
            self._workers[key] = asyncio.create_task(self._drain(key), name=f"reconcile {key}")

    def activate(self) -> None:
        """Start reconciling (this replica became the leader): everything dirty, at once."""
        self.active = True
        for key in sorted(self._dirty):
            self.trigger(*key)

    def deactivate(self) -> None:
        """Stop starting reconciles (leadership lost). A pass already in a thread finishes."""
        self.active = False

    async def _drain(self, key: Key) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.active and key in self._dirty:
                await self._slots.acquire(0 if key not in self._passed else 1)
                self._dirty.discard(key)
                try:
                    try:
                        await loop.run_in_executor(self._pool, self._work, *key)
                    finally:
                        self._slots.release()
                except Exception as exc:
                    await self._failed(key, exc)
                else:
                    self._passed.add(key)
                    self.failures.pop(key, None)
        finally:
            self._workers.pop(key, None)

    async def _failed(self, key: Key, exc: Exception) -> None:
        failure = classify(exc)
        if not failure.retry:
            log.info("reconcile of %s/%s stopped: %s", *key, failure.message)
            self.failures.pop(key, None)
            return
        attempt = self.failures[key] = self.failures.get(key, 0) + 1
        delay = self._delay(attempt, failure.retry_after)
        log.warning("reconcile of %s/%s failed (attempt %d, retry in %.1f s): %s: %s",
                    *key, attempt, delay, failure.reason, failure.message)  # fmt: skip
        if self._on_failure is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._on_failure, *key, failure
                )
            except Exception as report_exc:  # the API may be what is failing
                log.debug("could not report the failure of %s/%s: %r", *key, report_exc)
        self._dirty.add(key)
        await asyncio.sleep(delay)

    def forget(self, namespace: str, name: str) -> None:
        """The object is gone: should one of its name come back, it is new again."""
        self._passed.discard((namespace, name))

    async def idle(self) -> None:
        """Wait until no reconcile is running or pending (for tests and benchmarks)."""
        while self._workers:
            await asyncio.gather(*self._workers.values(), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._workers.values()):
            task.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
