"""One engine replica as the router tracks it: polled stats, health, and dispatch accounting.

The router and the simulator keep these in a `halffull.policy.dispatch.Dispatcher`'s table.

Accounting (design.md, "dispatch accounting"): a request's prompt tokens are added to its replica
at dispatch (`Endpoint.dispatch` returns a `Ticket`) and leave the replica's prefill queue when
the first token comes back (`Ticket.first_token`), on failure or on client cancel
(`Ticket.close`). For a non-streamed request the router never sees the first token; its tokens
leave the prefill queue when a poll that started after its dispatch has completed, since from then
on the engine's own numbers (waiting count, KV usage) include it. `Ticket.close` always ends the
request's in-flight count; closing twice is harmless, so every exit path may call it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from halffull.policy.routing import EngineStats, OwnLoad, ReplicaState, estimate_replica

_seq = itertools.count(1)


@dataclass(slots=True)
class Ticket:
    endpoint: Endpoint
    tokens: int
    stream: bool
    seq: int
    in_prefill: bool = True
    open: bool = True

    def first_token(self) -> None:
        if self.in_prefill:
            self.in_prefill = False
            self.endpoint._leave_prefill(self)

    def close(self) -> None:
        if not self.open:
            return
        self.first_token()
        self.open = False
        self.endpoint._leave_flight(self)


@dataclass(slots=True)
class Endpoint:
    name: str
    url: str
    weight: float = 1.0
    stats: EngineStats | None = None
    stats_at: float | None = None
    """Loop time when the last successful poll completed."""
    last_capacity_tokens: int | None = None
    poll_failures: int = 0
    consecutive_failures: int = 0
    down: bool = False
    """A connection to it was refused or reset: it gets no requests until a probe (a poll of its
    /metrics) reaches it again."""
    next_probe_at: float = 0.0
    backoff_s: float = 0.0
    inflight_requests: int = 0
    inflight_tokens: int = 0
    _prefill: dict[int, Ticket] = field(default_factory=dict)
    prefill_tokens: int = 0
    since_poll_requests: int = 0
    since_poll_tokens: int = 0
    _poll_started_seq: int = 0
    """Tickets with a higher sequence number were dispatched after the current stats' poll."""
    removed: bool = False

    def dispatch(self, tokens: int, stream: bool) -> Ticket:
        ticket = Ticket(self, tokens, stream, next(_seq))
        self.inflight_requests += 1
        self.inflight_tokens += tokens
        self._prefill[ticket.seq] = ticket
        self.prefill_tokens += tokens
        self.since_poll_requests += 1
        self.since_poll_tokens += tokens
        return ticket

    def _leave_prefill(self, ticket: Ticket) -> None:
        if self._prefill.pop(ticket.seq, None) is not None:
            self.prefill_tokens -= ticket.tokens
            if ticket.seq > self._poll_started_seq:
                self.since_poll_requests -= 1
                self.since_poll_tokens -= ticket.tokens

    def _leave_flight(self, ticket: Ticket) -> None:
        self.inflight_requests -= 1
        self.inflight_tokens -= ticket.tokens

    @property
    def prefill_requests(self) -> int:
        return len(self._prefill)

    def poll_started(self) -> int:
        """Mark the start of a poll; returns the sequence number to pass to `poll_succeeded`."""
        return next(_seq)

    def poll_succeeded(self, stats: EngineStats, started_seq: int, now: float) -> None:
        self.stats = stats
        self.stats_at = now
        self._poll_started_seq = started_seq
        if stats.kv_capacity_tokens:
            self.last_capacity_tokens = stats.kv_capacity_tokens
        self.reachable()
        for ticket in [t for t in self._prefill.values() if not t.stream and t.seq < started_seq]:
            ticket.first_token()
        since = [t for t in self._prefill.values() if t.seq > started_seq]
        self.since_poll_requests = len(since)
        self.since_poll_tokens = sum(t.tokens for t in since)

    def poll_failed(self) -> None:
        self.poll_failures += 1

    def reachable(self) -> None:
        """An HTTP answer came back: the endpoint is up again and its backoff starts over."""
        self.down = False
        self.consecutive_failures = 0
        self.backoff_s = 0.0

    def mark_down(self, now: float, first_backoff_s: float, max_backoff_s: float) -> None:
        """Connection refused or reset: no requests until a probe at `next_probe_at` succeeds;
        the backoff doubles with each consecutive failure and resets when it answers again."""
        self.down = True
        self.consecutive_failures += 1
        self.backoff_s = min(max_backoff_s, max(first_backoff_s, self.backoff_s * 2))
        self.next_probe_at = now + self.backoff_s

    def own_load(self) -> OwnLoad:
        return OwnLoad(
            inflight_requests=self.inflight_requests,
            inflight_tokens=self.inflight_tokens,
            prefill_requests=len(self._prefill),
            prefill_tokens=self.prefill_tokens,
            since_poll_requests=self.since_poll_requests,
            since_poll_tokens=self.since_poll_tokens,
        )

    def stats_age(self, now: float) -> float | None:
        return None if self.stats_at is None else now - self.stats_at

    def state(
        self, now: float, stale_after_s: float, max_tokens_per_batch: int, mean_prompt: float
    ) -> ReplicaState:
        age = self.stats_age(now)
        fresh = age is not None and age <= stale_after_s
        return estimate_replica(
            name=self.name,
            weight=self.weight,
            stats=self.stats,
            fresh=fresh,
            own=self.own_load(),
            max_tokens_per_batch=max_tokens_per_batch,
            mean_prompt_tokens=mean_prompt,
            last_capacity_tokens=self.last_capacity_tokens,
        )
