"""Runs reconciles off the event loop, one at a time per LLMService, coalescing bursts.

Events arrive in storms (a rollout changes a Deployment, its ReplicaSet and every pod). Each
trigger marks the object dirty; a worker per object reconciles until it is clean, so a storm of
N events costs one or two reconciles, never N, and never two at once for the same object.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)


class KeyedRunner:
    def __init__(self, work: Callable[[str, str], object], retry_delay: float = 5.0) -> None:
        self._work = work
        self._dirty: set[Key] = set()
        self._workers: dict[Key, asyncio.Task[None]] = {}
        self._retry_delay = retry_delay

    def trigger(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        self._dirty.add(key)
        if key not in self._workers:
            self._workers[key] = asyncio.create_task(self._drain(key), name=f"reconcile {key}")

    async def _drain(self, key: Key) -> None:
        try:
            while key in self._dirty:
                self._dirty.discard(key)
                try:
                    await asyncio.to_thread(self._work, *key)
                except Exception:
                    log.exception("reconcile of %s/%s failed; retrying", *key)
                    await asyncio.sleep(self._retry_delay)
                    self._dirty.add(key)
        finally:
            self._workers.pop(key, None)

    async def idle(self) -> None:
        """Wait until no reconcile is running or pending (for tests and benchmarks)."""
        while self._workers:
            await asyncio.gather(*self._workers.values(), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._workers.values()):
            task.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
