"""Why a reconcile failed, said so that a user can act on it, and when to try again.

Pure: the runner asks `classify` what an exception means and `retry_delay` how long to wait;
the reconciler puts the reason into the `Degraded` condition and an Event.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

BASE_DELAY_S = 0.5
MAX_DELAY_S = 120.0


class ApiCallError(RuntimeError):
    """A refused Kubernetes call, with what was attempted: the verb and the kind."""

    def __init__(
        self,
        verb: str,
        kind: str,
        status: int,
        message: str,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{verb} {kind}: HTTP {status}: {message}")
        self.verb, self.kind, self.status = verb, kind, status
        self.message, self.retry_after = message, retry_after


@dataclass(frozen=True)
class Failure:
    reason: str  # CamelCase, for the Degraded condition and the Event
    message: str
    retry: bool = True
    retry_after: float | None = None


def classify(exc: BaseException) -> Failure:
    if isinstance(exc, ApiCallError):
        what = f"{exc.verb} {exc.kind}"
        if exc.status == 403 and "being terminated" in exc.message:
            # The namespace is going away with everything in it: nothing to restore.
            return Failure("NamespaceTerminating", exc.message, retry=False)
        if exc.status == 403:
            return Failure("Forbidden", f"the operator may not {what}: {exc.message}")
        if exc.status == 429:
            return Failure("ApiServerBusy", f"{what}: {exc.message}", retry_after=exc.retry_after)
        if exc.status >= 500:
            return Failure("ApiServerError", f"{what}: HTTP {exc.status}: {exc.message}",
                           retry_after=exc.retry_after)  # fmt: skip
        return Failure("ApiCallFailed", f"{what}: HTTP {exc.status}: {exc.message}")
    if isinstance(exc, OSError) or type(exc).__module__.startswith("urllib3"):
        return Failure("ApiServerUnreachable", f"{type(exc).__name__}: {exc}")
    return Failure("ReconcileError", f"{type(exc).__name__}: {exc}")


def retry_delay(
    attempt: int,
    retry_after: float | None = None,
    base: float = BASE_DELAY_S,
    cap: float = MAX_DELAY_S,
    rand: Callable[[], float] = random.random,
) -> float:
    """Exponential backoff with jitter: attempt n waits between half and all of
    base * 2^(n-1), at most `cap`, and never less than the server's Retry-After."""
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    delay = ceiling / 2 + rand() * ceiling / 2
    return float(max(delay, min(cap, retry_after or 0.0)))
