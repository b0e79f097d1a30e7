"""The child writes of one pass, sent together where their order does not matter.

A new LLMService needs eight applies. One after the other, its first pass takes eight round
trips to the API server, and on a busy server each is tens of milliseconds. The applies are
independent (server-side apply, no object refers to another's version), except that pods mount
the ConfigMaps: so everything but the Deployments goes first, all at once, then the
Deployments. Two round trips instead of eight.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

LAST_KINDS = frozenset({"Deployment"})
"""Kinds written after all others (their pods read the others)."""
WRITE_THREADS = 16
"""Applies in flight at once over all reconciles (the API client's pool is sized for them)."""

Obj = dict[str, Any]


def waves(objs: Sequence[Obj]) -> list[list[Obj]]:
    """`objs` in the groups to write one after the other, each group's order kept."""
    first = [o for o in objs if o["kind"] not in LAST_KINDS]
    last = [o for o in objs if o["kind"] in LAST_KINDS]
    return [w for w in (first, last) if w]


class ChildWriter:
    """Applies children concurrently, wave by wave, in a bounded pool of its own."""

    def __init__(self, apply: Callable[[Obj], Obj], threads: int = WRITE_THREADS) -> None:
        self._apply = apply
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="apply")

    def apply_all(self, objs: Sequence[Obj], done: Callable[[Obj, Obj], None]) -> None:
        """Apply `objs`; `done(desired, written)` for each write that went through, in the
        order given within a wave. A failure ends the pass after its wave has returned (the
        writes that went through are recorded) and is raised; later waves are not sent."""
        for wave in waves(objs):
            if len(wave) == 1:  # nothing to overlap: no hand-over to another thread
                done(wave[0], self._apply(wave[0]))
                continue
            sent: list[tuple[Obj, Future[Obj]]] = [
                (o, self._pool.submit(self._apply, o)) for o in wave
            ]
            failure: BaseException | None = None
            for obj, fut in sent:
                try:
                    written = fut.result()
                except Exception as exc:
                    failure = failure or exc
                    continue
                done(obj, written)
            if failure is not None:
                raise failure

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
