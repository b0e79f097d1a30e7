"""The dispatcher the router and the simulator share: table, attempts, accounting, stale rule."""

from __future__ import annotations

import pytest

from halffull.api.runtime_config import RouterEndpoint
from halffull.policy.dispatch import STALE_POLLS, Dispatcher
from halffull.policy.registry import make_policy
from halffull.policy.routing import EngineStats, RouteRequest

IDLE = EngineStats(num_running=0, num_waiting=0, kv_usage=0.0, num_gpu_blocks=100, block_size=16)


def spec(i: int, weight: float = 1.0) -> RouterEndpoint:
    return RouterEndpoint(name=f"e{i}", url=f"http://10.0.0.{i}:8000", weight=weight)


def dispatcher(n: int, policy: str = "sal", **kw: float) -> Dispatcher:
    d = Dispatcher(make_policy(policy), poll_interval_s=0.1, **kw)  # type: ignore[arg-type]
    d.set_endpoints(spec(i) for i in range(n))
    return d


def test_table_keeps_objects_across_updates_and_marks_leavers() -> None:
    d = dispatcher(2)
    first = d.endpoints["http://10.0.0.0:8000"]
    ticket = first.dispatch(100, stream=True)
    gone = d.set_endpoints([spec(0, weight=0.5), spec(2), spec(2)])
    assert [ep.name for ep in gone] == ["e1"] and gone[0].removed
    assert list(d.endpoints) == ["http://10.0.0.0:8000", "http://10.0.0.2:8000"]
    assert d.endpoints["http://10.0.0.0:8000"] is first
    assert first.weight == 0.5 and first.inflight_requests == 1
    ticket.close()
    assert first.inflight_requests == 0


def test_attempts_rank_the_up_endpoints_and_stop_at_max_attempts() -> None:
    d = dispatcher(5, "least-requests", max_attempts=3)
    eps = list(d.endpoints.values())
    eps[0].dispatch(10, stream=True)
    d.unreachable(eps[1], now=0.0)
    attempts = d.attempts(RouteRequest(prompt_tokens=10), now=0.0)
    assert len(attempts) == 3
    names = [a.endpoint.name for a in attempts]
    assert "e1" not in names  # down
    assert "e0" not in names  # busiest of the four up ones, ranked last, cut off
    assert eps[1].down and eps[1].next_probe_at == pytest.approx(0.5)
    d.unreachable(eps[1], now=1.0)
    assert eps[1].next_probe_at == pytest.approx(2.0)  # the backoff doubles


def test_nothing_up_means_no_attempts() -> None:
    d = dispatcher(1)
    d.unreachable(next(iter(d.endpoints.values())), now=0.0)
    assert d.attempts(RouteRequest(prompt_tokens=1), now=0.0) == []


def test_dispatch_accounting_follows_the_ticket() -> None:
    d = dispatcher(2)
    attempt = d.attempts(RouteRequest(prompt_tokens=300), now=0.0)[0]
    assert attempt.prefill_tokens == 300
    ticket = attempt.dispatch(stream=True)
    ep = attempt.endpoint
    assert (ep.prefill_tokens, ep.inflight_requests) == (300, 1)
    ticket.first_token()
    assert (ep.prefill_tokens, ep.inflight_requests) == (0, 1)
    ticket.close()
    ticket.close()  # every exit path may close
    assert (ep.prefill_tokens, ep.inflight_requests) == (0, 0)


def test_a_burst_between_polls_spreads_through_the_accounting() -> None:
    d = dispatcher(4)
    for ep in d.endpoints.values():
        ep.poll_succeeded(IDLE, ep.poll_started(), now=0.0)
    chosen = []
    for _ in range(8):
        attempt = d.attempts(RouteRequest(prompt_tokens=300), now=0.01)[0]
        attempt.dispatch(stream=True)
        chosen.append(attempt.endpoint.name)
    assert sorted(chosen) == ["e0", "e0", "e1", "e1", "e2", "e2", "e3", "e3"]


def test_stats_go_stale_after_stale_polls_intervals() -> None:
    d = dispatcher(1)
    ep = next(iter(d.endpoints.values()))
    ep.poll_succeeded(IDLE, ep.poll_started(), now=0.0)
    assert d.state_of(ep, STALE_POLLS * 0.1).fresh
    assert not d.state_of(ep, STALE_POLLS * 0.1 + 1e-6).fresh
    d.set_limits(1.0, None)
    assert d.state_of(ep, STALE_POLLS * 0.5).fresh
    assert d.max_tokens_per_batch == 2048


def test_running_mean_prompt_is_fed_once_per_request() -> None:
    d = dispatcher(2)
    assert d.mean_prompt_tokens == 512.0  # before any request
    d.attempts(RouteRequest(prompt_tokens=1000), now=0.0)
    assert d.mean_prompt_tokens == 1000.0
    d.attempts(RouteRequest(prompt_tokens=0), now=0.0)
    assert d.mean_prompt_tokens == pytest.approx(980.0)


def test_max_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        Dispatcher(make_policy("sal"), poll_interval_s=0.1, max_attempts=0)
