"""The first-byte and stream-idle timeouts of one proxied request, on one timer.

One `call_at` handle per request, moved only twice (at the first body byte and when it fires
early); each chunk just stamps the time. When the engine stays quiet past the bound, the
request's task is cancelled and `expired` says why, so the handler can turn the cancellation
into a 504 (or an in-band error event once the stream has started).
"""

from __future__ import annotations

import asyncio

from halffull.router.failures import Failure, timed_out


class Watchdog:
    def __init__(self, first_byte_s: float, idle_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.first_byte_s = first_byte_s
        self.idle_s = idle_s
        self.last: float | None = None
        self.expired: Failure | None = None
        self._handle = self.loop.call_at(self.loop.time() + first_byte_s, self._check)

    def activity(self) -> None:
        """A body chunk arrived."""
        now = self.loop.time()
        if self.last is None:  # from here on, the idle bound
            self._handle.cancel()
            self._handle = self.loop.call_at(now + self.idle_s, self._check)
        self.last = now

    def stop(self) -> None:
        self._handle.cancel()

    def claimed(self) -> Failure | None:
        """After a CancelledError: the timeout, when it was ours (the cancellation is then
        taken back); None when someone else cancelled (the client went away)."""
        if self.expired is None:
            return None
        self.task.uncancel()
        return self.expired

    def _check(self) -> None:
        if self.last is None:
            self.expired = timed_out(True, self.first_byte_s)
        else:
            deadline = self.last + self.idle_s
            if self.loop.time() < deadline:
                self._handle = self.loop.call_at(deadline, self._check)
                return
            self.expired = timed_out(False, self.idle_s)
        self.task.cancel()
