"""From a request to the endpoints to try, in order: the router's decision loop, written once.

The `halffull router` HTTP layer and the simulator (`halffull.sim.cluster`, on its simulated
clock) drive the same `Dispatcher`, so "the simulator runs the production router" holds for the
whole loop, not only the scoring functions:

1. `set_endpoints`: the endpoint table (from the configuration file, flags and DNS discovery in
   the router; one per modelled replica in the simulator). An endpoint that stays keeps its
   object, so its accounting and stats survive a reload.
2. Polled stats arrive on each `Endpoint` (`poll_started` / `poll_succeeded` / `poll_failed`).
3. `attempts(request, now)`: feeds the running mean prompt length, takes the `candidates` (the
   endpoints that are up), builds each one's `ReplicaState` (`states`: last poll plus the
   dispatch accounting; stats older than `STALE_POLLS` poll intervals fall back to the accounting
   alone), asks the policy for a ranking and returns the first `max_attempts` as `Attempt`s.
4. The caller sends to the first attempt (`Attempt.dispatch` adds the prompt's tokens to that
   endpoint and returns a `Ticket`; the ticket removes them at the first token, at the end or on
   failure) and, when the connection is refused, reports it (`unreachable`) and tries the next.

Where later changes plug in: which endpoints may take new requests at all (drained or terminating
pods, shedding under overload) is `candidates`; what a policy sees of an endpoint for one request
(a prefix index's cached blocks per endpoint; operator weights as the stale-stats fallback) is
`states`; how many prompt tokens an endpoint must prefill for the request (fewer when it holds a
prefix) is `Attempt.prefill_tokens`; whether a failed attempt may be retried is the caller's
decision, from what it knows of the failure. This module does no I/O and reads no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from halffull.policy.endpoints import Endpoint, Ticket
from halffull.policy.routing import ReplicaState, RouteRequest, RoutingPolicy
from halffull.policy.sal import DEFAULT_MAX_TOKENS_PER_BATCH

STALE_POLLS = 3
"""Stats older than this many poll intervals are stale: the replica's state then comes from the
dispatch accounting alone (`routing.estimate_replica`)."""

FIRST_PROMPT_MEAN = 512.0
"""The mean prompt length assumed before the first request (only the metrics read it then)."""
PROMPT_MEAN_WEIGHT = 0.02
"""Weight of each new prompt in the running mean (about the last 50 requests)."""


class EndpointSpec(Protocol):
    """One endpoint as configured (`halffull.api.runtime_config.RouterEndpoint` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def weight(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Attempt:
    """One endpoint to try for a request, in ranking order."""

    endpoint: Endpoint
    state: ReplicaState
    """What the policy saw of the endpoint when it ranked it."""
    prefill_tokens: int
    """Prompt tokens the endpoint must prefill for this request: the whole prompt today."""

    def dispatch(self, stream: bool) -> Ticket:
        """The request is being sent here: count it until its ticket is closed."""
        return self.endpoint.dispatch(self.prefill_tokens, stream)


class Dispatcher:
    """The endpoint table, its dispatch accounting, the stale-stats rule and the policy."""

    def __init__(
        self,
        policy: RoutingPolicy,
        *,
        poll_interval_s: float,
        max_tokens_per_batch: int | None = None,
        max_attempts: int = 3,
        first_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.policy = policy
        self.set_limits(poll_interval_s, max_tokens_per_batch)
        self.max_attempts = max_attempts
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.endpoints: dict[str, Endpoint] = {}
        """The table, by URL (without a trailing slash), in configuration order."""
        self.mean_prompt_tokens = FIRST_PROMPT_MEAN
        self._prompts_seen = 0

    def set_limits(self, poll_interval_s: float, max_tokens_per_batch: int | None) -> None:
        """The poll interval (stats are stale after `STALE_POLLS` of them) and the engines'
        per-step token budget (None: vLLM's default)."""
        self.poll_interval_s = poll_interval_s
        self.max_tokens_per_batch = max_tokens_per_batch or DEFAULT_MAX_TOKENS_PER_BATCH

    # -- the table ---------------------------------------------------------------------------

    def set_endpoints(self, specs: Iterable[EndpointSpec]) -> list[Endpoint]:
        """Make the table exactly `specs` (the first of duplicate URLs wins); returns the
        endpoints that left it. They are marked `removed`: requests in flight on them keep their
        `Endpoint` and finish normally."""
        wanted: dict[str, EndpointSpec] = {}
        for spec in specs:
            wanted.setdefault(spec.url.rstrip("/"), spec)
        table: dict[str, Endpoint] = {}
        for url, spec in wanted.items():
            ep = self.endpoints.get(url) or Endpoint(name=spec.name, url=url)
            ep.name, ep.weight = spec.name, spec.weight
            table[url] = ep
        gone = [ep for url, ep in self.endpoints.items() if url not in table]
        for ep in gone:
            ep.removed = True
        self.endpoints = table
        return gone

    @property
    def stale_after_s(self) -> float:
        return STALE_POLLS * self.poll_interval_s

    # -- deciding ----------------------------------------------------------------------------

    def observe_prompt(self, tokens: int) -> None:
        """Feed the running mean prompt length (it prices other routers' waiting requests)."""
        self._prompts_seen += 1
        if self._prompts_seen == 1:
            self.mean_prompt_tokens = float(tokens)
        else:
            self.mean_prompt_tokens += PROMPT_MEAN_WEIGHT * (tokens - self.mean_prompt_tokens)

    def state_of(self, ep: Endpoint, now: float) -> ReplicaState:
        """The endpoint as a policy sees it at `now` (stale stats: accounting only)."""
        return ep.state(now, self.stale_after_s, self.max_tokens_per_batch, self.mean_prompt_tokens)

    def candidates(self) -> list[Endpoint]:
        """The endpoints that may take a new request: those that are up."""
        return [ep for ep in self.endpoints.values() if not ep.down]

    def states(
        self, request: RouteRequest, candidates: Sequence[Endpoint], now: float
    ) -> list[ReplicaState]:
        """What the policy sees of each candidate for this request."""
        return [self.state_of(ep, now) for ep in candidates]

    def attempts(self, request: RouteRequest, now: float) -> list[Attempt]:
        """The endpoints to try for `request`, best first, at most `max_attempts`; empty when
        none is up. Call it once per request: it also feeds the running mean prompt length."""
        self.observe_prompt(request.prompt_tokens)
        candidates = self.candidates()
        if not candidates:
            return []
        states = self.states(request, candidates, now)
        order = self.policy.rank(request, states)
        return [
            Attempt(candidates[i], states[i], request.prompt_tokens)
            for i in order[: self.max_attempts]
        ]

    # -- what happened -----------------------------------------------------------------------

    def unreachable(self, ep: Endpoint, now: float) -> None:
        """A connection to `ep` was refused or reset: no requests until a probe answers, after
        a backoff that doubles with each consecutive failure."""
        ep.mark_down(now, self.first_backoff_s, self.max_backoff_s)
