"""The child writes of one pass, sent together: one round trip to the API server, not eight.

A new LLMService needs eight writes. One after the other, its first pass takes eight round
trips, and on a busy server each is tens to hundreds of milliseconds. The writes are
independent (creates and server-side applies, no object refers to another's version), so they
go out at once.

Pods mount the ConfigMaps, yet the Deployments need not wait for them: a Deployment's pods exist
only after the controller-manager made its ReplicaSet and the pods and the scheduler placed
them, several API round trips after the Deployment's own write, by when the ConfigMaps sent in
the same batch have long been stored. Should one still be missing (its write failed), the kubelet
retries the mount until the next pass has written it, and `Degraded` says why meanwhile. An
earlier version sent the Deployments in a second wave; on a loaded API server that second round
trip was a third of a new LLMService's pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

WRITE_THREADS = 16
"""Applies in flight at once over all reconciles (the API client's pool is sized for them)."""

Obj = dict[str, Any]


class ChildWriter:
    """Applies children concurrently, in a bounded pool of its own."""

    def __init__(self, apply: Callable[[Obj], Obj], threads: int = WRITE_THREADS) -> None:
        self._apply = apply
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="apply")

    def apply_all(
        self,
        objs: Sequence[Obj],
        done: Callable[[Obj, Obj], None],
        write: Callable[[Obj], Obj] | None = None,
    ) -> None:
        """Write `objs` (with `write`, else the writer's apply); `done(desired, written)` for
        each write that went through, in the order given. A failure is raised after every
        write has returned (the writes that went through are recorded first)."""
        send = write or self._apply
        if len(objs) == 1:  # nothing to overlap: no hand-over to another thread
            done(objs[0], send(objs[0]))
            return
        sent: list[tuple[Obj, Future[Obj]]] = [(o, self._pool.submit(send, o)) for o in objs]
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
